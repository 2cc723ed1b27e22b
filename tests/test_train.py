"""Real training steps through the host's Trainer, checkpoints, and resuming."""

import math
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf

from sagan_plugin.checkpoint import checkpoint_path, checkpoint_steps, read_checkpoint
from sagan_plugin.config import compose
from sagan_plugin.runs import load_generator
from sagan_plugin.stopping import Interrupted
from sagan_plugin.train import run


class _CtrlCAfter:
    """A data loader during whose batch n a Ctrl-C (SIGINT) reaches the process, `times`
    times."""

    def __init__(self, loader, n: int, times: int = 1) -> None:
        self.loader, self.n, self.times = loader, n, times
        self.batch_size, self.worker_init_fn = loader.batch_size, None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.n:
                for _ in range(self.times):
                    os.kill(os.getpid(), signal.SIGINT)
            yield batch


def _next_second() -> None:
    """Wait for the clock's next second. TensorBoard reads a folder's event files in the order
    of their names, which begin with the second they were made in (then pid and a counter, not
    zero-padded): attempts in one process within one second could be read out of order, which
    a real restart, a new process seconds later, never is."""
    time.sleep(1 - time.time() % 1 + 0.01)


def test_ten_steps_checkpoint_and_resume(tiny_overrides: list[str], monkeypatch,
                                         capsys) -> None:
    from sagan_plugin import train

    overrides = tiny_overrides + ["train.steps=10", "train.save_steps=5", "train.log_steps=1"]
    cfg = compose(overrides)
    run_dir = Path(cfg.run_dir)

    # First run: Ctrl-C arrives while step 7 fetches its batch; step 7 ends, is saved, and
    # the run stops with exit code 130.
    build = train.build_dataloader
    monkeypatch.setattr(train, "build_dataloader",
                        lambda *a, **k: _CtrlCAfter(build(*a, **k), 6))
    with pytest.raises(Interrupted, match="stopped by SIGINT after step 7") as stopped:
        run(cfg)
    assert stopped.value.exit_code == 130
    assert checkpoint_steps(run_dir) == [5, 7]
    monkeypatch.setattr(train, "build_dataloader", build)

    # Second run, same configuration: resumes at step 7 and finishes the remaining 3 steps.
    capsys.readouterr()
    _next_second()
    trainer = run(compose(overrides))
    assert "Starting training from global step 7" in capsys.readouterr().out
    assert checkpoint_steps(run_dir) == [5, 7, 10]
    assert read_checkpoint(run_dir / "checkpoints/netD/netD_10_steps.pth")["global_step"] == 10

    # Losses of every step were finite (TensorBoard scalars, log_steps=1).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for metric in ("errD", "errG"):
        events = EventAccumulator(str(run_dir / "data" / metric))
        events.Reload()
        values = [e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
        assert len(values) == 10 and all(math.isfinite(v) for v in values), metric
    assert trainer.last_grid() is not None

    # An attempt that logged past the checkpoint it resumes from: steps 8-10 are logged again,
    # and TensorBoard's Python loader (the study report's) shows each step once, the new value.
    # Grids the earlier attempt drew after step 7 go (as with another vis_steps, here one at
    # step 9 that this attempt does not draw); those up to step 7 stay.
    for net in ("netG", "netD"):
        checkpoint_path(run_dir, 10, net).unlink()
    images = run_dir / "images"
    for step in (6, 9):
        for kind in ("fake", "fixed_fake"):
            (images / f"{kind}_samples_step_{step}.png").write_bytes(b"an earlier attempt's")
    _next_second()
    run(compose(overrides))
    assert sorted(p.name for p in images.glob("*.png")) == [
        f"{kind}_samples_step_{step}.png" for kind in ("fake", "fixed_fake") for step in (10, 6)]
    for metric in ("errD", "errG"):
        events = EventAccumulator(str(run_dir / "data" / metric))
        events.Reload()
        steps = [e.step for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
        assert steps == list(range(1, 11)), metric

    loaded = load_generator(run_dir)
    assert loaded.step == 10 and not loaded.ema and not loaded.netG.training
    with torch.no_grad():
        images = loaded.netG(torch.randn(2, 128), torch.tensor([0, 1]))
    assert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1


def test_a_second_ctrl_c_stops_at_once_saving_nothing(tiny_overrides: list[str], monkeypatch,
                                                      capsys) -> None:
    from sagan_plugin import train

    cfg = compose(tiny_overrides + ["train.steps=10", "train.save_steps=5"])
    build = train.build_dataloader
    monkeypatch.setattr(train, "build_dataloader",
                        lambda *a, **k: _CtrlCAfter(build(*a, **k), 6, times=2))
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert checkpoint_steps(cfg.run_dir) == [5]  # step 7 was half done: not saved
    out = capsys.readouterr().out
    assert "not saved after all: the second Ctrl-C came mid-step" in out
    monkeypatch.setattr(train, "build_dataloader", build)
    run(compose(tiny_overrides + ["train.steps=10", "train.save_steps=5"]))
    assert "restored the checkpoint of step 5" in capsys.readouterr().out


def test_resume_with_another_configuration_names_the_keys(tiny_overrides: list[str]) -> None:
    from sagan_plugin.errors import UsageError

    run(compose(tiny_overrides + ["train.steps=1"]))
    with pytest.raises(UsageError, match=r"model.ngf: 8 -> 16"):
        run(compose(tiny_overrides + ["train.steps=2", "model.ngf=16"]))
    run(compose(tiny_overrides + ["train.steps=2"]))  # a longer run is a resume, not a clash
    # How it runs may change (here the cadence of logs, checkpoints and FID), not what it trains.
    run(compose(tiny_overrides + ["train.steps=3", "train.log_steps=7", "train.save_steps=3",
                                  "train.fid_every=50", "train.fid_n=100"]))
    with pytest.raises(UsageError, match=r"train.lr_g: 0.0001 -> 0.0002"):
        run(compose(tiny_overrides + ["train.steps=4", "train.lr_g=2e-4"]))


def test_run_dir_alone_continues_a_run_with_its_saved_configuration(
        tiny_overrides: list[str], tmp_path: Path, capsys) -> None:
    """`train run_dir=DIR train.steps=N` extends a run without its first command line; with
    model= or data=, or for a folder without config.yaml, the presets are composed as ever."""
    from sagan_plugin import cli
    from sagan_plugin.errors import UsageError
    from sagan_plugin.train import continued

    run_dir = tmp_path / "run"
    run(compose(tiny_overrides + ["train.steps=1", "train.lr_d=3e-4"]))
    assert cli.main(["train", f"run_dir={run_dir}", "train.steps=2"]) == 0
    assert checkpoint_steps(run_dir) == [1, 2]
    assert f"INFO: continuing {run_dir} with its config.yaml and train.steps=2" in \
        capsys.readouterr().out
    assert OmegaConf.to_container(continued([f"run_dir={run_dir}", "train.steps=5"])) == \
        OmegaConf.to_container(compose(tiny_overrides + ["train.steps=5", "train.lr_d=3e-4"]))
    assert continued(["model=sagan", f"run_dir={run_dir}"]) is None
    assert continued([f"run_dir={tmp_path / 'new'}"]) is None
    assert continued(["train.steps=3"]) is None
    assert cli.main(["train", f"run_dir={run_dir}", "train.steps=3", "model.ngf=16"]) == 2
    assert "(model.ngf: 8 -> 16)" in capsys.readouterr().err
    with pytest.raises(UsageError, match=r"^model.name is not an override: model=sngan"):
        continued([f"run_dir={run_dir}", "model.name=sngan"])
    assert checkpoint_steps(run_dir) == [1, 2]


def test_each_epoch_reads_every_image_in_a_new_order(tiny_overrides: list[str],
                                                      monkeypatch) -> None:
    """Past an epoch's end the loader starts the next epoch's shuffle, not the last one's."""
    from sagan_plugin.data import ProceduralShapes

    read = []
    get = ProceduralShapes.__getitem__
    monkeypatch.setattr(ProceduralShapes, "__getitem__",
                        lambda self, i: (read.append(i), get(self, i))[1])
    run(compose(tiny_overrides + ["data.size=8", "train.steps=6"]))  # 6 batches of 4: 3 epochs
    epochs = [read[k:k + 8] for k in range(0, 24, 8)]
    assert len(read) == 24 and all(sorted(epoch) == list(range(8)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]


def test_only_how_a_run_runs_may_change_on_resuming() -> None:
    """What may change on resuming is cadence, machine and kernels, as README "Using it" says;
    a key that changes what is trained (n_dis, betas, EMA decay, ...) added here would let a
    resumed run silently train another model."""
    from sagan_plugin.train import RESUMABLE_KEYS

    assert RESUMABLE_KEYS == {
        "train.steps", "train.log_steps", "train.vis_steps", "train.save_steps",
        "train.fid_every", "train.fid_n", "train.device", "train.precision",
        "train.channels_last", "train.compile", "train.sdpa_backend", "train.sync_bn",
        "train.deterministic", "data.num_workers", "data.root", "run_dir"}
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    paragraph = readme[readme.index("What changes only how the"):]
    paragraph = paragraph[:paragraph.index("Any other change")]
    assert {key.split(".")[-1] for key in RESUMABLE_KEYS} - {"steps", "run_dir"} <= \
        {name.split(".")[-1] for name in re.findall(r"`([\w.]+)`", paragraph)}


def test_resuming_uses_the_configured_optimiser(tiny_overrides: list[str]) -> None:
    """lr_g, lr_d, beta1, beta2 and fused_adam reach Adam, for G and D each, also in a resumed
    run."""
    settings = ["train.lr_g=3e-4", "train.lr_d=5e-4", "train.beta1=0.5", "train.beta2=0.8",
                "train.fused_adam=true"]
    seen = []
    for steps in (1, 2):  # a run, then its resumption
        cfg = compose(tiny_overrides + settings + [f"train.steps={steps}"])
        trainer = run(cfg)
        seen.append([tuple(opt.param_groups[0][key] for key in ("lr", "betas", "fused"))
                     for opt in (trainer.optG, trainer.optD)])
    assert seen == [[(3e-4, (0.5, 0.8), True), (5e-4, (0.5, 0.8), True)]] * 2


def test_linear_decay_sets_each_steps_learning_rates_and_n_dis_d_steps(
        tiny_overrides: list[str]) -> None:
    """Step k (1-based) of N updates D n_dis times, then G once, at lr0 * (1 - (k - 1) / N):
    the decay after step k - 1 reaches the updates of step k, not those of k - 1 or k + 1."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append((opt, opt.param_groups[0]["lr"])))
    try:
        trainer = run(compose(tiny_overrides + ["train.steps=3", "train.n_dis=2",
                                                "train.lr_decay=linear"]))
    finally:
        handle.remove()
    names = {id(trainer.optD): "D", id(trainer.optG): "G"}
    expected = [(net, lr * (1 - k / 3)) for k in range(3)
                for net, lr in (("D", 4e-4), ("D", 4e-4), ("G", 1e-4))]
    got = [(names[id(opt)], lr) for opt, lr in seen]
    assert [net for net, _ in got] == [net for net, _ in expected]
    assert [lr for _, lr in got] == pytest.approx([lr for _, lr in expected], rel=1e-9)


def test_a_run_that_failed_before_its_first_checkpoint_starts_again_with_new_settings(
        tiny_overrides: list[str], monkeypatch, capsys) -> None:
    # As after a first step that ran out of GPU memory: lowering the batch must not be refused.
    from sagan_plugin.nets.sagan_base import SAGANDiscriminator

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

    with monkeypatch.context() as patch:
        patch.setattr(SAGANDiscriminator, "train_step", out_of_memory)
        with pytest.raises(torch.OutOfMemoryError):
            run(compose(tiny_overrides + ["train.steps=2", "train.batch_size=8"]))
    cfg = compose(tiny_overrides + ["train.steps=2"])
    assert (Path(cfg.run_dir) / "config.yaml").is_file() and not checkpoint_steps(cfg.run_dir)
    run(cfg)
    assert "has no checkpoint yet: it starts again with the new configuration " \
           "(train.batch_size: 8 -> 4)" in capsys.readouterr().out
    assert checkpoint_steps(cfg.run_dir) == [2]
    assert OmegaConf.load(Path(cfg.run_dir) / "config.yaml").train.batch_size == 4


def test_host_baseline_trains_the_same_way(tmp_path: Path) -> None:
    run_dir = tmp_path / "sngan"
    run(compose(["model=sngan", "data=procedural", f"run_dir={run_dir}", "model.ngf=16",
                 "model.ndf=16", "train.batch_size=4", "train.n_dis=2", "train.steps=2",
                 "data.size=32", "data.num_workers=0"]))
    assert checkpoint_steps(run_dir) == [2]


def test_workers_out_of_shared_memory_is_one_line_saying_what_to_do(
        tiny_overrides: list[str]) -> None:
    # A file-size limit fails the workers' shared-memory files as a full /dev/shm would
    # (Docker's 64 MB): one batch of 4 images is 49 kB.
    overrides = [o for o in tiny_overrides if not o.startswith("data.num_workers")]
    result = run_cli("train", *overrides, "data.num_workers=1", "train.steps=2",
                     max_file_bytes=20_000)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the DataLoader's workers ran out of shared memory (/dev/shm): give them more "
        "(docker run --shm-size=8g) or set data.num_workers=0; training stopped, no checkpoint")


def test_grids_and_fid_of_a_compiled_generator_do_not_compile_it_again(tmp_path: Path) -> None:
    """train.compile: G is compiled for training; the sample grid (eval mode, no gradients,
    64 images) and the FID callback run it eagerly instead of compiling it again."""
    import types

    from sagan_plugin.host import MetricLog
    from sagan_plugin.nets import GENERATORS
    from sagan_plugin.registry import eval_mode
    from sagan_plugin.trainer import ProgressLogger, SAGANTrainer

    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    netG = GENERATORS[32](num_classes=10, ngf=8)
    netG.compile(backend=counting_backend)
    netG(torch.randn(4, netG.nz), torch.zeros(4, dtype=torch.int64)).mean().backward()
    compiled = len(graphs)
    assert compiled >= 1

    logger = ProgressLogger(log_dir=str(tmp_path), num_steps=1, dataset_size=1,
                            device=torch.device("cpu"))
    logger.vis_images(netG, global_step=1)
    assert (tmp_path / "images" / "fixed_fake_samples_step_1.png").is_file()
    assert len(graphs) == compiled

    def fid(net, step):  # as metrics.scoring.fid_callback draws its images
        with eval_mode(net), torch.no_grad():
            return {"fid": net(torch.randn(50, net.nz), torch.zeros(50, dtype=torch.int64)
                               ).mean().item()}

    trainer = types.SimpleNamespace(stop=None, device=torch.device("cpu"), ema=None, netG=netG,
                                    fid=fid, logger=logger, log_dir=str(tmp_path))
    log_data = MetricLog()
    log_data.add_metric("errD", 1.0, group="loss")
    SAGANTrainer._after_step(trainer, log_data, 1)
    assert len(graphs) == compiled
    torch._dynamo.reset()


def test_run_dir_alone_continues_without_a_dangling_and(tiny_overrides: list[str],
                                                        tmp_path: Path, capsys) -> None:
    """With no key besides run_dir= the INFO line ends at the file it continues from."""
    from sagan_plugin.train import continued

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    OmegaConf.save(compose(tiny_overrides), run_dir / "config.yaml")
    assert continued([f"run_dir={run_dir}"]) is not None
    assert capsys.readouterr().out == f"INFO: continuing {run_dir} with its config.yaml\n"


def test_a_folder_with_checkpoints_but_no_configuration_is_refused_untouched(
        tiny_overrides: list[str], tmp_path: Path) -> None:
    """Without config.yaml (nor Mimicry's params.json) nothing says what its checkpoints
    trained: training there would write over them."""
    from sagan_plugin.errors import UsageError

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "netG").mkdir(parents=True)
    before = sorted(run_dir.rglob("*"))
    with pytest.raises(UsageError) as error:
        run(compose(tiny_overrides + ["train.steps=1"]))
    assert str(error.value) == (f"{run_dir} holds checkpoints but no config.yaml (nor Mimicry's "
                                "params.json); choose another run_dir")
    assert sorted(run_dir.rglob("*")) == before


def test_a_new_run_dir_is_made_with_its_missing_parents(tiny_overrides: list[str],
                                                        tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "a" / "b"
    overrides = [o for o in tiny_overrides if not o.startswith("run_dir=")]
    run(compose(overrides + [f"run_dir={run_dir}", "train.steps=1"]))
    assert checkpoint_steps(run_dir) == [1]


def test_a_run_folder_that_cannot_take_the_configuration_is_named(tiny_overrides: list[str],
                                                                  monkeypatch) -> None:
    import errno

    from sagan_plugin import train
    from sagan_plugin.errors import UsageError

    def full_disk(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train, "write_atomically", full_disk)
    cfg = compose(tiny_overrides + ["train.steps=1"])
    with pytest.raises(UsageError) as error:
        run(cfg)
    assert str(error.value) == f"cannot write to run folder {cfg.run_dir}: No space left on device"
    assert not checkpoint_steps(cfg.run_dir)
    assert not (Path(cfg.run_dir) / "config.yaml").exists()


def test_train_deterministic_turns_on_torchs_deterministic_algorithms(
        tiny_overrides: list[str], monkeypatch) -> None:
    """Deterministic kernels on any device, and the cuBLAS workspace that they need, set
    before the first kernel runs (check_options probes one): cuBLAS reads it as it starts."""
    from sagan_plugin import train
    from sagan_plugin.errors import UsageError

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")  # as it was again after the test
    probed_with = []
    check_options = train.check_options
    monkeypatch.setattr(train, "check_options", lambda *args: (
        probed_with.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG")), check_options(*args)))
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        # A run refused for a kernel this device lacks leaves the process as it was.
        with pytest.raises(UsageError, match="train.sdpa_backend=cudnn cannot run"):
            run(compose(tiny_overrides + ["train.deterministic=true", "train.sdpa_backend=cudnn"]))
        assert not torch.are_deterministic_algorithms_enabled()
        probed_with.clear()
        during = []
        train_ = train._train
        monkeypatch.setattr(train, "_train", lambda *args: (during.append(
            (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)),
            train_(*args))[1])
        torch.backends.cudnn.benchmark = True
        run(compose(tiny_overrides + ["train.steps=1", "train.deterministic=true"]))
        assert during == [(True, False)]
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert probed_with == [":4096:8"]
        # ... for the run only: a next run in this process (a study's worker) starts as before
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(before)


def test_the_last_sample_grid_is_named(tiny_overrides: list[str], capsys) -> None:
    """The run's end prints where its newest fixed-noise grid is, for the user to open."""
    cfg = compose(tiny_overrides + ["train.steps=1"])
    run(cfg)
    grid = Path(cfg.run_dir) / "images" / "fixed_fake_samples_step_1.png"
    assert grid.is_file() and f"samples: {grid}\n" in capsys.readouterr().out
