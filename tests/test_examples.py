"""The Mimicry user's route: examples/mimicry_trainer.py in a fresh interpreter (its first import
is `import torch_mimicry`), then the run folder that Mimicry's Trainer left, read and continued
by sagan-plugin's commands given its model and data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from PIL import Image

from sagan_plugin.checkpoint import checkpoint_path, checkpoint_steps
from sagan_plugin.cli import main as cli


@pytest.fixture(scope="module")
def mimicry_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """(the run folder of a 2-step Mimicry training, the tokens that describe it)."""
    root = tmp_path_factory.mktemp("example")
    images = root / "images"
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (images / label).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (40, 36), tuple(c + 5 * i for c in colour)).save(
                images / label / f"{i}.png")
    log_dir = root / "log"
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "mimicry_trainer.py"), "--data", "folder",
         "--root", str(images), "--steps", "2", "--batch-size", "4", "--width", "4",
         "--log-dir", str(log_dir), "--fid-n", "20"],
        capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return log_dir, ["model=sagan", "model.ngf=4", "model.ndf=4", "data=folder",
                     f"data.root={images}", "data.resolution=32"]


@pytest.mark.parametrize("argv, message", [
    (["--fid-n", "16"], "--fid-n 16: KID averages 10 subsets"),
    (["--steps", "0"], "--steps, --batch-size and --width must be at least 1"),
    (["--batch-size", "100"], "--batch-size 100: above 64, a multiple of 64"),
])
def test_the_example_refuses_bad_arguments_before_training(tmp_path: Path, argv: list[str],
                                                           message: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "mimicry_trainer.py"), "--root", str(tmp_path),
         "--log-dir", str(tmp_path / "log"), *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "log").exists()


def test_the_example_trains_with_mimicrys_trainer_and_scores_with_ours(
        mimicry_run: tuple[Path, list[str]]) -> None:
    log_dir, _ = mimicry_run
    assert (log_dir / "params.json").is_file() and not (log_dir / "config.yaml").exists()
    assert checkpoint_steps(log_dir) == [2]
    ckpt = torch.load(checkpoint_path(log_dir, 2), weights_only=True)
    assert "training_state" not in ckpt  # written by the host's Trainer, not ours
    for name in ("fid_0k_0k.json", "kid_0k.json"):  # mmc.metrics.evaluate's {step: [score]}
        scores = json.loads((log_dir / "eval" / name).read_text())
        assert list(scores) == ["2"] and len(scores["2"]) == 1 and scores["2"][0] > 0


def test_sample_export_and_viz_read_a_mimicry_run_given_its_model(
        mimicry_run: tuple[Path, list[str]], tmp_path: Path) -> None:
    log_dir, tokens = mimicry_run
    assert cli(["sample", f"run={log_dir}", *tokens, "n=4", f"out={tmp_path}/grid.png"]) == 0
    assert Image.open(tmp_path / "grid.png").size == (70, 70)  # 2x2 of 32 px, 2 px apart
    assert cli(["viz", f"run={log_dir}", *tokens, f"out={tmp_path}/viz", "per_class=2"]) == 0
    assert Image.open(tmp_path / "viz" / "grid.png").size[1] > 2 * 32  # a row per class
    assert cli(["export", f"run={log_dir}", *tokens, f"out={tmp_path}/g.pt"]) == 0
    assert json.loads((tmp_path / "g.pt.json").read_text())["step"] == 2


@pytest.mark.parametrize("change, message", [
    ([], "has no config.yaml (a run of Mimicry's own Trainer): give the model=NAME"),
    (["model=sagan", "model.ngf=8", "model.ndf=8", "data=folder"], "does not fit model=sagan"),
    (["model=sagan", "model.ngf=8", "model.ndf=8", "data=folder", "data.resolution=64"],
     "does not fit model=sagan at 64x64 with 2 classes: missing"),
    (["model=sngan", "data=folder"], "does not fit model=sngan"),
])
def test_a_mimicry_run_of_another_model_is_a_one_line_error(
        mimicry_run: tuple[Path, list[str]], change: list[str], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    log_dir, tokens = mimicry_run
    root = next(t for t in tokens if t.startswith("data.root="))
    argv = ["sample", f"run={log_dir}", *change, *([root] if change else []),
            f"out={tmp_path}/grid.png"]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    if change:  # the state dict's differences, summed up, and what to give instead
        assert len(err.replace(str(log_dir), "")) < 400, err
        assert "model.ngf= and model.ndf= it was trained with" in err, err
    assert not (tmp_path / "grid.png").exists()


def test_train_continues_a_mimicry_run(mimicry_run: tuple[Path, list[str]], tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    log_dir, tokens = mimicry_run
    run_dir = tmp_path / "continued"
    shutil.copytree(log_dir, run_dir)
    # Other hyperparameters than params.json recorded are refused, as Mimicry's Trainer would.
    params = (run_dir / "params.json").read_text()
    assert cli(["train", f"run_dir={run_dir}", *tokens, "train.steps=3", "train.batch_size=8",
                "train.lr_g=0.01", "data.num_workers=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {run_dir} was trained by Mimicry's Trainer with other settings, in "
                   "its params.json (train.batch_size: 4 -> 8, train.lr_g: 0.0001 -> 0.01); "
                   "use another run_dir or the same settings"), err
    assert (run_dir / "params.json").read_text() == params
    assert not (run_dir / "config.yaml").exists() and checkpoint_steps(run_dir) == [2]
    (run_dir / "params.json").write_text(params[:20])  # cut short
    assert cli(["train", f"run_dir={run_dir}", *tokens, "train.steps=3", "train.batch_size=4",
                "data.num_workers=0"]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read {run_dir / 'params.json'}: ")
    (run_dir / "params.json").write_text(params)

    assert cli(["train", f"run_dir={run_dir}", *tokens, "train.steps=3", "train.batch_size=4",
                "data.num_workers=0"]) == 0
    assert checkpoint_steps(run_dir) == [2, 3]
    assert (run_dir / "config.yaml").is_file()  # from now on a run folder of ours
