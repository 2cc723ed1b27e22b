"""Crash-safe checkpoints: a real SIGKILL and an exact resume, corrupt files, a full disk, NaN."""

import errno
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sagan_plugin import checkpoint
from sagan_plugin.checkpoint import checkpoint_path, checkpoint_steps
from sagan_plugin.config import compose
from sagan_plugin.errors import UsageError
from sagan_plugin.train import run


def _train_command(run_dir: Path) -> list[str]:
    # Several epochs (16 images, 4 a batch, 2 D steps a step), an EMA, exact kernels.
    return [sys.executable, "-m", "sagan_plugin", "train", "model=sagan", "data=procedural",
            f"run_dir={run_dir}", "model.ngf=8", "model.ndf=8", "train.batch_size=4",
            "data.size=16", "data.num_workers=0", "train.n_dis=2", "train.steps=12",
            "train.save_steps=2", "train.ema_decay=0.9", "train.ema_start=3",
            "train.deterministic=true"]


def _final_state(run_dir: Path, step: int) -> dict:
    return {net: torch.load(checkpoint_path(run_dir, step, net), weights_only=True)
            for net in ("netG", "netD")}


def _assert_identical(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_train_command(straight), check=True, capture_output=True, env=env,
                   timeout=600)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(killed), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while not checkpoint_path(killed, 4).is_file() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # let it go on into the next steps
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert 4 <= max(checkpoint_steps(killed)) < 12  # it died mid-run, after a checkpoint

    done = subprocess.run(_train_command(killed), capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Starting training from global step 0" not in done.stdout
    _assert_identical(_final_state(killed, 12), _final_state(straight, 12))


@pytest.fixture
def tiny(tiny_overrides: list[str]) -> list[str]:
    return tiny_overrides + ["train.save_steps=2"]


def test_truncated_latest_checkpoint_falls_back_to_the_previous(tiny: list[str], capsys,
                                                                monkeypatch) -> None:
    cfg = compose(tiny + ["train.steps=4"])
    run(cfg)
    latest = checkpoint_path(cfg.run_dir, 4)
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    monkeypatch.setenv("RANK", "1")  # torchrun's other ranks fall back alike, without a word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoint.load_latest(Path(cfg.run_dir))[0] == 2
    monkeypatch.setenv("RANK", "0")
    capsys.readouterr()
    with pytest.warns(UserWarning, match="skipping the checkpoint of step 4"):
        run(compose(tiny + ["train.steps=6"]))
    assert "Starting training from global step 2" in capsys.readouterr().out
    assert checkpoint.load_latest(Path(cfg.run_dir))[0] == 6


def test_full_disk_or_read_only_while_saving_keeps_the_previous_checkpoint(
        tiny: list[str], monkeypatch) -> None:
    cfg = compose(tiny + ["train.steps=2"])
    run(cfg)
    run_dir = Path(cfg.run_dir)
    before = _final_state(run_dir, 2)

    # A full disk, a folder gone read-only (tests run as root, whom chmod would not stop), and
    # a file-size limit, which torch.save reports as a RuntimeError raised during the OSError.
    for code in (errno.ENOSPC, errno.EROFS, errno.EFBIG):
        def failing_write(obj, f, code=code) -> None:
            f.write(b"PK\x03\x04 partial")
            try:
                raise OSError(code, os.strerror(code))
            except OSError:
                if code == errno.EFBIG:
                    raise RuntimeError("[enforce fail] unexpected pos")  # noqa: B904 - as torch
                raise

        monkeypatch.setattr(checkpoint.torch, "save", failing_write)
        with pytest.raises(UsageError) as failure:
            run(compose(tiny + ["train.steps=4"]))
        message = str(failure.value)
        assert "\n" not in message
        assert "cannot save the checkpoint of step 4" in message
        assert f"{os.strerror(code)}; the checkpoint of step 2 is kept" in message
        monkeypatch.undo()
        assert checkpoint.complete_steps(run_dir) == [2]
        assert not list(run_dir.glob("checkpoints/*/.*"))  # no temporary file left behind
        _assert_identical(_final_state(run_dir, 2), before)


def test_a_full_disk_while_drawing_a_sample_grid_is_one_line_and_leaves_no_half_grid(
        tiny: list[str], monkeypatch) -> None:
    import torch_mimicry.training.logger as host_logger

    def failing_save(images, path, **kwargs) -> None:
        Path(path).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(host_logger.vutils, "save_image", failing_save)
    cfg = compose(tiny + ["train.steps=4", "train.vis_steps=3"])
    with pytest.raises(UsageError) as failure:
        run(cfg)
    message = str(failure.value)
    assert "\n" not in message and message.startswith("cannot write the sample grids of step 3")
    assert message.endswith("No space left on device; training stopped, the last checkpoint is "
                            "step 2")
    assert not list((Path(cfg.run_dir) / "images").glob("*step_3.png"))


def test_a_failed_rewrite_of_a_saved_step_keeps_it(tiny: list[str], monkeypatch) -> None:
    """Training a finished run again rewrites its last checkpoint: failing, it must not lose it."""
    cfg = compose(tiny + ["train.steps=2"])
    run(cfg)
    run_dir = Path(cfg.run_dir)
    before = _final_state(run_dir, 2)

    def failing_write(obj, f) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", failing_write)
    with pytest.raises(UsageError, match="the checkpoint of step 2 is kept"):
        run(compose(tiny + ["train.steps=2"]))
    monkeypatch.undo()
    assert checkpoint.complete_steps(run_dir) == [2]
    _assert_identical(_final_state(run_dir, 2), before)


class _PoisonedAfter(torch.utils.data.Dataset):
    """The data set, with NaN images from the n-th image read on."""

    def __init__(self, dataset, n: int) -> None:
        self.dataset, self.n, self.reads = dataset, n, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        self.reads += 1
        return (image * float("nan") if self.reads > self.n else image), label


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
        tiny: list[str], monkeypatch) -> None:
    from sagan_plugin import train
    from sagan_plugin.trainer import NonFiniteLoss

    build = train.build_dataset
    monkeypatch.setattr(train, "build_dataset", lambda data: _PoisonedAfter(build(data), 12))
    cfg = compose(tiny + ["train.steps=6"])
    with pytest.raises(NonFiniteLoss, match=r"a loss is not finite at step 4 \(errD=nan"
                                            r".*the last good checkpoint is step 2"):
        run(cfg)
    assert checkpoint_steps(cfg.run_dir) == [2]


def folder_contents(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder, train.lock included (a refused run never takes it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_checkpoint_of_another_model_is_refused_and_the_folder_left_as_it_was(
        tiny: list[str]) -> None:
    cfg = compose(tiny + ["train.steps=2"])
    run(cfg)
    path = checkpoint_path(cfg.run_dir, 2)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["resolution"] = 64
    torch.save(ckpt, path)
    before = folder_contents(Path(cfg.run_dir))
    with pytest.raises(UsageError, match=r"is a checkpoint of another model \(name='sagan', "
                                         r"resolution=64, num_classes=10\); expected "
                                         r"name='sagan', resolution=32"):
        run(compose(tiny + ["train.steps=4"]))
    assert folder_contents(Path(cfg.run_dir)) == before  # config.yaml still says steps=2


def test_a_run_of_mimicry_refused_for_another_model_stays_resumable(
        tiny: list[str], capsys: pytest.CaptureFixture) -> None:
    cfg = compose(tiny + ["train.steps=2"])
    run(cfg)
    run_dir = Path(cfg.run_dir)
    for ours in ("config.yaml", "train.lock"):  # what Mimicry's own Trainer leaves: params.json,
        (run_dir / ours).unlink()
    ckpt = torch.load(checkpoint_path(run_dir, 2), weights_only=True)  # checkpoints that do
    del ckpt["model"]  # not name their model
    torch.save(ckpt, checkpoint_path(run_dir, 2))
    before = folder_contents(run_dir)
    with pytest.raises(UsageError, match=r"does not fit this model"):  # trained as it was
        run(compose(tiny + ["model=sngan", "model.ngf=8", "model.ndf=8", "train.steps=4",
                            "train.lr_g=1e-4", "train.lr_d=4e-4", "train.n_dis=1",
                            "train.lr_decay=null"]))
    assert folder_contents(run_dir) == before
    assert "restored the checkpoint" not in capsys.readouterr().out  # refused, not resumed
    run(compose(tiny + ["train.steps=4"]))
    assert "restored the checkpoint of step 2" in capsys.readouterr().out
    assert checkpoint_steps(run_dir) == [2, 4]


def test_a_train_steps_below_the_runs_step_is_refused(tiny: list[str]) -> None:
    cfg = compose(tiny + ["train.steps=4", "train.save_steps=2"])
    run(cfg)
    before = folder_contents(Path(cfg.run_dir))
    with pytest.raises(UsageError, match=r"is at step 4, past train.steps=2; a run is "
                                         r"extended, not shortened: give train.steps >= 4"):
        run(compose(tiny + ["train.steps=2"]))
    assert folder_contents(Path(cfg.run_dir)) == before


def test_atomic_save_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "a" / "x.pth"
    checkpoint.atomic_save({"v": torch.arange(3)}, path)
    checkpoint.atomic_save({"v": torch.arange(4)}, path)
    assert torch.equal(torch.load(path)["v"], torch.arange(4))
    assert [p.name for p in path.parent.iterdir()] == ["x.pth"]


def test_atomic_save_fsyncs_the_file_then_its_folder(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint must survive a power cut: its data, then the rename, reach the disk."""
    synced = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = tmp_path / "a" / "x.pth"
    checkpoint.atomic_save({"v": torch.arange(3)}, path)
    assert len(synced) == 2, synced
    written, folder = synced
    # the temporary file beside x.pth, before it is renamed; then the folder, after the rename
    assert written.parent == path.parent and written.name.startswith(".x.pth."), written
    assert folder == path.parent


def _fake_checkpoint(run_dir: Path, step: int, net: str, global_step: int) -> None:
    path = checkpoint_path(run_dir, step, net)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": {"w": torch.full((2,), float(step))},
                "optimizer_state_dict": {}, "global_step": global_step}, path)


def test_a_step_whose_g_and_d_disagree_on_the_step_is_skipped(tmp_path: Path) -> None:
    """A netG and a netD of different steps (one of them rewritten) are no resumable pair."""
    for net in ("netG", "netD"):
        _fake_checkpoint(tmp_path, 2, net, 2)
    _fake_checkpoint(tmp_path, 4, "netG", 4)
    _fake_checkpoint(tmp_path, 4, "netD", 3)
    with pytest.warns(UserWarning, match="skipping the checkpoint of step 4: G and D disagree "
                                         "on the step"):
        step, pair = checkpoint.load_latest(tmp_path)
    assert step == 2
    assert {net: ckpt["global_step"] for net, ckpt in pair.items()} == {"netG": 2, "netD": 2}


def test_drawing_sample_grids_leaves_the_training_random_streams_alone(
        tiny: list[str], tmp_path: Path) -> None:
    """The grids' noise must come from a forked RNG: how often they are drawn (vis_steps)
    cannot change what a run trains to, nor what its checkpoint resumes with."""
    states = []
    for vis_steps in (1, 1000):
        cfg = compose(tiny + ["train.steps=2", f"train.vis_steps={vis_steps}",
                              f"run_dir={tmp_path / f'vis{vis_steps}'}"])
        run(cfg)
        states.append(_final_state(Path(cfg.run_dir), 2))
    _assert_identical(*states)


def test_a_temporary_file_left_by_a_killed_save_names_no_step(tmp_path: Path) -> None:
    """A SIGKILL during a save leaves its temporary file (.netG_4_steps.pth.XXXX.tmp) beside
    the checkpoints: it is no checkpoint of step 4, for resuming nor for sampling."""
    for net in ("netG", "netD"):
        _fake_checkpoint(tmp_path, 2, net, 2)
        folder = checkpoint_path(tmp_path, 2, net).parent
        (folder / f".{net}_4_steps.pth.k2j3h4.tmp").write_bytes(b"PK\x03\x04 partial")
    assert checkpoint_steps(tmp_path) == checkpoint.complete_steps(tmp_path) == [2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to skip
        assert checkpoint.load_latest(tmp_path)[0] == 2


def test_a_state_dict_mismatch_is_one_line_with_each_kinds_count_and_first_key() -> None:
    """A net of another size lists hundreds of keys: the message keeps a count of each kind."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = net.state_dict()
    del state["1.weight"], state["1.bias"]
    state |= {"extra": torch.zeros(1), "0.weight": torch.zeros(4, 2), "0.bias": torch.zeros(5)}
    with pytest.raises(RuntimeError) as error:
        net.load_state_dict(state)
    said = checkpoint.state_dict_mismatch(error.value)
    assert "\n" not in said
    assert said.startswith("missing 2 key(s): 1.weight, ...; unexpected 1 key(s): extra; size "
                           "mismatch for 0.weight: "), said
    assert said.endswith(" (2 in all)"), said


def test_a_step_whose_netg_fails_to_save_leaves_no_netd_behind(tmp_path: Path,
                                                                monkeypatch) -> None:
    """netD is written, then netG fails (a full disk): the lone netD file goes too, or the
    next start would find a step without its netG and refuse the run folder."""
    save = checkpoint.atomic_save

    def netg_fails(obj: object, path: Path) -> None:
        if path.name.startswith("netG"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_save", netg_fails)
    state = {"model_state_dict": {}, "optimizer_state_dict": {}, "global_step": 2}
    with pytest.raises(OSError):
        checkpoint.save_pair(tmp_path, 2, {"netD": state, "netG": state})
    assert not list(tmp_path.rglob("*.pth"))
    assert checkpoint.load_latest(tmp_path) is None  # a fresh start, not a refusal


def test_a_lone_netd_left_by_a_kill_during_the_first_save_is_trained_over(tiny: list[str],
                                                                          tmp_path: Path) -> None:
    """A SIGKILL between the first save's netD and netG renames leaves netD alone: the same
    command again starts afresh, with a warning, and ends as an uninterrupted run; another
    configuration is refused (the folder may be a run whose netG files were moved away). Lone
    netD files of two steps cannot come from one kill: that folder is refused too."""
    cfg = compose(tiny + ["train.steps=2", "train.deterministic=true"])
    run(cfg)
    whole = _final_state(Path(cfg.run_dir), 2)
    checkpoint_path(cfg.run_dir, 2, "netG").unlink()
    with pytest.raises(UsageError, match=r"was started with another configuration \(model.ndf"):
        run(compose(tiny + ["train.steps=2", "train.deterministic=true", "model.ndf=16"]))
    with pytest.warns(UserWarning, match="netD_2_steps.pth: the first checkpoint of a run "
                                         "stopped while saving it, without its netG"):
        run(cfg)
    _assert_identical(_final_state(Path(cfg.run_dir), 2), whole)

    for step in (2, 4):
        _fake_checkpoint(tmp_path / "two", step, "netD", step)
    with pytest.raises(checkpoint.CorruptCheckpoint, match="steps 2, 4 without both netG"):
        checkpoint.load_latest(tmp_path / "two")


def test_the_last_checkpoint_named_is_the_newest_complete_step(tmp_path: Path) -> None:
    """What a stopped run's message names as kept."""
    assert checkpoint.last_checkpoint_said(tmp_path) == "no checkpoint"
    for step in (2, 4):
        for net in ("netG", "netD"):
            _fake_checkpoint(tmp_path, step, net, step)
    _fake_checkpoint(tmp_path, 6, "netD", 6)  # a step cut short
    assert checkpoint.last_checkpoint_said(tmp_path) == "the last checkpoint is step 4"


def test_random_states_come_back_through_a_checkpoint_file(tmp_path: Path) -> None:
    """Each stream a data pipeline may draw from (torch, Python, NumPy, with NumPy's cached
    gaussian) goes on where it was, after a round trip through a file read as checkpoints
    are read."""
    np.random.standard_normal()  # leaves a cached gaussian
    path = tmp_path / "state.pth"
    torch.save({"rng": checkpoint.rng_state()}, path)

    def draw() -> tuple:
        return (torch.rand(3).tolist(), random.random(), np.random.rand(3).tolist(),
                np.random.standard_normal())

    expected = draw()
    checkpoint.set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert draw() == expected


class _CallsWhenUnpickled:
    def __reduce__(self) -> tuple:
        return os.getpid, ()


def test_a_checkpoint_that_would_run_code_when_loaded_is_refused(tmp_path: Path) -> None:
    """Checkpoints are read as tensors and plain values only: a file that calls a function
    while it is unpickled (here a harmless os.getpid) is refused, not run."""
    path = tmp_path / "netG_2_steps.pth"
    torch.save({"model_state_dict": {}, "optimizer_state_dict": {}, "global_step": 2,
                "extra": _CallsWhenUnpickled()}, path)
    with pytest.raises(checkpoint.CorruptCheckpoint, match="not tensors and plain values"):
        checkpoint.read_checkpoint(path)


def test_a_checkpoint_that_cannot_be_opened_says_why(tmp_path: Path) -> None:
    path = tmp_path / "netG_2_steps.pth"
    path.mkdir()
    with pytest.raises(checkpoint.CorruptCheckpoint,
                       match=f"^cannot read checkpoint {path}: Is a directory$"):
        checkpoint.read_checkpoint(path)
