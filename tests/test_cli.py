"""The command line: help, and bad input refused in one line, exit 2, nothing written."""

from pathlib import Path

import pytest
from conftest import run_cli


def test_help_lists_models_and_data_sets() -> None:
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for name in ("sagan", "sngan", "cgan_pd", "mimicry_sagan", "fashion_mnist", "procedural",
                 "imagenet_128"):
        assert name in result.stdout


def test_bad_input_through_the_installed_command_is_one_line_exit_2(tmp_path: Path) -> None:
    """The entry point itself (tests/test_bad_input.py has the table, in-process)."""
    run_dir = tmp_path / "run"
    result = run_cli("train", f"run_dir={run_dir}", "train.lr_g=-1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: train.lr_g must be a positive number, got -1.0"]
    assert not run_dir.exists()


def test_help_lists_each_commands_keys_from_its_schema() -> None:
    from sagan_plugin.cli import COMMANDS

    for command in COMMANDS:
        result = run_cli(command, "--help")
        assert result.returncode == 0, result.stderr
        assert "keys (key=default  what it is):" in result.stdout
    train = run_cli("train", "model=sngan", "--help").stdout
    assert "model.* of family sngan" in train and "model.bn_decay" not in train
    assert "  train.lr_g=0.0002" in train  # sngan's preset, not the schema's default
    assert "train.beta1=0.0" in train and "(in [0, 1))" in train
    assert "studies (study=NAME): " in run_cli("compare", "--help").stdout
    sample = run_cli("sample", "--help").stdout
    assert "  seed=0" in sample and "an integer in [0, 2^63 - 1]" in sample


def test_missing_fashion_mnist_says_where_to_get_it(tmp_path: Path, monkeypatch) -> None:
    from omegaconf import OmegaConf

    from sagan_plugin import data
    from sagan_plugin.errors import UsageError

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    cfg = OmegaConf.create({"name": "fashion_mnist", "root": str(tmp_path), "resolution": 32,
                            "num_classes": 10, "split": "train", "fit": "pad"})
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
        data.build_dataset(cfg)
