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


def _help(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """What `sagan-plugin ARGV --help` prints, in process (the test above runs the entry
    point; a subprocess per command would cost a torch import each)."""
    from sagan_plugin import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_help_lists_each_commands_keys_from_its_schema(capsys) -> None:
    from sagan_plugin.cli import COMMANDS

    for command in COMMANDS:
        assert "keys (key=default  what it is):" in _help(capsys, command)
    train = _help(capsys, "train", "model=sngan")
    assert "model.* of family sngan" in train and "model.bn_decay" not in train
    assert "  train.lr_g=0.0002" in train  # sngan's preset, not the schema's default
    assert "train.beta1=0.0" in train and "(in [0, 1))" in train
    assert "studies (study=NAME): " in _help(capsys, "compare")
    sample = _help(capsys, "sample")
    assert "  seed=0" in sample and "an integer in [0, 2^63 - 1]" in sample


def test_help_shows_defaults_as_they_are_typed() -> None:
    """In process (the subprocess above is the entry point): true/false/null, not Python's."""
    from sagan_plugin.config import run_key_lines

    lines = [line.split()[0] for line in run_key_lines([])]
    assert {"train.fused_adam=true", "train.compile=false", "train.ema_decay=null",
            "run_dir=runs/sagan_procedural"} <= set(lines)


def test_ctrl_c_outside_training_is_one_line_exit_130(monkeypatch, capsys) -> None:
    from sagan_plugin import cli, sample

    monkeypatch.setattr(sample, "main", _raise(KeyboardInterrupt()))
    assert cli.main(["sample", "run=r"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_missing_fashion_mnist_says_where_to_get_it(tmp_path: Path, monkeypatch) -> None:
    from omegaconf import OmegaConf

    from sagan_plugin import data
    from sagan_plugin.errors import UsageError

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.chdir(tmp_path)  # no ./datasets here
    cfg = OmegaConf.create({"name": "fashion_mnist", "root": None, "resolution": 32,
                            "num_classes": 10, "split": "train", "fit": "pad"})
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
        data.build_dataset(cfg)


# torch's own wording (c10's CUDA caching allocator), figures and advice included.
CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
            "79.10 GiB of which 1.25 GiB is free. Including non-PyTorch memory, this process "
            "has 77.84 GiB memory in use. Of the allocated memory 76.10 GiB is allocated by "
            "PyTorch, and 1.02 GiB is reserved by PyTorch but unallocated. If reserved but "
            "unallocated memory is large try setting "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")


def _raise(error: BaseException):
    def fail(*args, **kwargs):
        raise error
    return fail


def test_out_of_gpu_memory_is_one_line_saying_what_to_lower(tiny_overrides, monkeypatch,
                                                            capsys) -> None:
    import torch

    from sagan_plugin import cli
    from sagan_plugin.nets.sagan_base import SAGANDiscriminator

    monkeypatch.setattr(SAGANDiscriminator, "train_step", _raise(torch.OutOfMemoryError(CUDA_OOM)))
    assert cli.main(["train", *tiny_overrides, "train.steps=2"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: out of GPU memory during train (asked for 2.00 GiB more, 1.25 GiB of GPU "
        "0's 79.10 GiB free): lower train.batch_size (the global batch: torchrun spreads it "
        "over GPUs) or set train.precision=bf16"]


def test_out_of_gpu_memory_without_figures_and_other_runtime_errors(tmp_path, monkeypatch,
                                                                     capsys) -> None:
    import torch
    from run_helpers import make_run

    from sagan_plugin import cli, viz

    run = make_run(tmp_path / "run")
    monkeypatch.setattr(viz, "class_grid", _raise(torch.OutOfMemoryError("out of memory")))
    assert cli.main(["viz", f"run={run}", f"out={tmp_path / 'viz'}"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: out of GPU memory during viz: free the GPU's memory (nvidia-smi lists its users)"]
    # Any other RuntimeError is a bug to report, with its traceback: not turned into a line.
    monkeypatch.setattr(viz, "class_grid", _raise(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["viz", f"run={run}", f"out={tmp_path / 'viz'}"])


@pytest.mark.parametrize("argv, said", [
    (["train", "--steps", "5"], "train takes key=value overrides, not options: give "
                                "train.steps=5 instead of '--steps 5'"),
    (["train", "model=sngan", "--model.ngf=32"], "give model.ngf=32 instead of '--model.ngf=32'"),
    (["sample", "run=r", "--n", "4"], "sample takes key=value overrides, not options: give n=4 "
                                      "instead of '--n 4'"),
    (["eval", "--colour"], "give KEY=VALUE (`sagan-plugin eval --help` lists the keys) instead "
                           "of '--colour'"),
    (["train", "ngf=8"], "unknown key 'ngf' in override (did you mean model.ngf?); keys of the "
                         "top level: model, data, train, run_dir"),
    (["trian", "model=sagan"], "invalid choice: 'trian' (choose from 'train', 'export', "),
    ([], "the following arguments are required: COMMAND (see sagan-plugin --help)"),
])
def test_what_a_mimicry_user_types_by_habit_says_what_to_give(argv, said, tmp_path, capsys,
                                                              monkeypatch) -> None:
    """Options (--steps 5) and keys without their section (ngf=8): the key=value to give."""
    from sagan_plugin.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and said in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["0x10", "1e3", "007", "true", "1_000", "2026-12-07"])
def test_a_string_key_keeps_the_text_given_where_yaml_would_read_a_number(text: str) -> None:
    from sagan_plugin.config import compose
    from sagan_plugin.overrides import parse_overrides
    from sagan_plugin.sample import SampleConfig

    cfg = compose([f"run_dir={text}", f"data.root={text}", "model.ngf=0x10"])
    assert (cfg.run_dir, cfg.data.root, cfg.model.ngf) == (text, text, 16)
    sample = parse_overrides(SampleConfig, [f"run={text}", f"out={text}"], "sample")
    assert (sample.run, sample.out) == (text, text)


def test_a_saved_run_s_data_key_keeps_the_text_given(tmp_path: Path) -> None:
    from run_helpers import make_run

    from sagan_plugin.runs import load_run_config

    run = make_run(tmp_path / "run")
    assert load_run_config(run, ["data.root=0x10"]).data.root == "0x10"
