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


BAD_INPUT = [
    (["model=nope"], "unknown model 'nope'; registered models: cgan_pd, dcgan"),
    (["data=nope"], "unknown data set 'nope'; known data sets: celeba_128"),
    (["train.stepz=3"], "unknown key 'train.stepz'"),
    (["train.steps=abc"], "bad value for train.steps"),
    (["model.ngf=wide"], "bad value for model.ngf"),
    (["train.steps"], "expected key=value"),
    (["data=stl10_48"], "model sagan does not support 48x48 images"),
    (["data=fashion_mnist", "model.num_classes=5"], "does not match data fashion_mnist"),
    (["model=sngan", "model.num_classes=10"], "model sngan is unconditional"),
    (["model=cgan_pd", "data=lsun_bedroom_128"], "class-conditional but data"),
    (["model.g_attention=7"], "G attention at 7x7 is not possible"),
    (["data=cifar10", "data.root=/nonexistent"], "expected /nonexistent/cifar10/"),
    (["data=imagenet_128", "data.root=/nonexistent"], "meta.bin"),
    (["data=fashion_mnist", "data.root=/nonexistent", "data.fit=resize",
      "data.resolution=24"], "model sagan does not support 24x24"),
    (["train.device=cuda"], "no usable GPU"),
    (["train.batch_size=0"], "train.batch_size must be at least 1"),
    (["train.ema_decay=1.5"], "train.ema_decay must be in (0, 1)"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path: Path, args: list[str],
                                                       message: str) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("train", f"run_dir={run_dir}", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert not run_dir.exists()


def test_missing_fashion_mnist_says_where_to_get_it(tmp_path: Path, monkeypatch) -> None:
    from omegaconf import OmegaConf

    from sagan_plugin import data
    from sagan_plugin.errors import UsageError

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    cfg = OmegaConf.create({"name": "fashion_mnist", "root": str(tmp_path), "resolution": 32,
                            "num_classes": 10, "split": "train", "fit": "pad"})
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
        data.build_dataset(cfg)
