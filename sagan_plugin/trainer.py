"""Mimicry's Trainer, extended: data parallelism, bf16, EMA, crash-safe exact resume.

The host's loop is kept as it is (n_dis, learning-rate decay, TensorBoard summaries, sample
grids every vis_steps, checkpoints every save_steps, resume from the latest). What is added
hooks into the places the loop calls out to:

- `_fetch_data`: batches come from an EpochSampler; the trainer counts them (data position).
- the scheduler, which the loop calls once per step after the G update: the per-step checks,
  every rank agreeing (a NaN or inf loss stops the run; after SIGTERM or Ctrl-C the next
  `_fetch_data` saves the step just logged and stops: stopping.py) and the EMA update.
- `_save_model_checkpoints` / `_restore_models_and_step`: atomic files with optimizer, EMA,
  every rank's RNG state and the data position (see checkpoint.py); rank 0 writes.
- the logger: rank 0 only; sample grids from the EMA generator when there is one, in eval mode
  (what `sample` and `eval` will draw), without touching the training random stream; what an
  earlier attempt logged after the step resumed from is hidden from TensorBoard, and the
  grids it drew after that step are deleted.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.attention import sdpa_kernel
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from sagan_plugin import checkpoint
from sagan_plugin.checkpoint import (
    check_model_info,
    checkpoint_path,
    checkpoint_steps,
    state_dict_mismatch,
)
from sagan_plugin.distributed import EpochSampler, World, gather_to_main, info, max_over_ranks
from sagan_plugin.ema import EMA
from sagan_plugin.errors import UsageError, first_line
from sagan_plugin.files import write_json
from sagan_plugin.host import Logger, LRScheduler, MetricLog, Trainer
from sagan_plugin.precision import SDPA_BACKENDS
from sagan_plugin.registry import eval_mode
from sagan_plugin.stopping import Interrupted, StopRequests

StepContext = Callable[[], contextlib.AbstractContextManager]  # what a step runs under
# Grids and FID draw G in eval mode, without gradients, at their own batch: under
# train.compile each would compile G again (seconds on a tiny CPU model, more for a large one,
# and a step towards dynamo's recompile limit) for a few forwards. They run eagerly instead.
SAMPLE_EAGERLY = functools.partial(torch.compiler.set_stance, "force_eager")
ANY_ATTENTION_KERNEL = list(SDPA_BACKENDS.values())


@contextlib.contextmanager
def aside_from_training(device: torch.device) -> Iterator[None]:
    """What samples inside the loop (grids, FID) runs under, so that the run trains the same
    with it or without it: its own random stream (the Inception net's first build draws from
    it too), float32, eager, and any attention kernel (a train.sdpa_backend chosen for bf16,
    flash, takes no float32 on CUDA)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.autocast(device.type, enabled=False), \
            SAMPLE_EAGERLY(), sdpa_kernel(ANY_ATTENTION_KERNEL):
        yield


def _lay_out_like_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Give each of optimizer's state tensors its parameter's memory layout: a checkpoint
    keeps the layout it was saved in, and fused Adam pairs parameters and moments element by
    element in memory, so a resume that switches train.channels_last would give a weight
    another weight's moments."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (torch.is_tensor(value) and value.shape == param.shape
                        and value.stride() != param.stride()):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


class NonFiniteLoss(UsageError):
    """Training diverged: a loss became NaN or infinite."""


class ProgressLogger(Logger):
    """The host's logger on rank 0 only, printing a tqdm bar instead of log lines."""

    bar: tqdm | None = None
    enabled: bool = True
    sample_net: torch.nn.Module | None = None  # drawn instead of netG when set (the EMA)
    first_step: int = 1  # the first step this attempt logs: the one after its checkpoint

    def _build_writer(self, metric: str) -> SummaryWriter:
        # An earlier attempt may have logged past the checkpoint this one resumed from (or,
        # without one, started again from): purge_step has TensorBoard drop those steps
        # rather than draw two curves over them. Its Rust loader drops them by itself; the
        # Python one (EventAccumulator, the study report) needs the marker.
        return SummaryWriter(log_dir=os.path.join(self.log_dir, "data", metric),
                             flush_secs=self.flush_secs, purge_step=self.first_step)

    def print_log(self, global_step: int, log_data: MetricLog, time_taken: float) -> str:
        if not self.enabled:
            return ""
        if self.bar is None:
            self.bar = tqdm(total=self.num_steps, initial=global_step - 1, unit="step",
                            dynamic_ncols=True, mininterval=0.5)
        self.bar.update(global_step - self.bar.n)
        postfix = {name: f"{log_data[name]:.3g}" for name in sorted(log_data.keys())}
        self.bar.set_postfix(postfix, refresh=False)
        return str(self.bar)

    def write_summaries(self, log_data: MetricLog, global_step: int) -> None:
        if self.enabled:
            super().write_summaries(log_data, global_step)

    def vis_images(self, netG: torch.nn.Module, global_step: int, num_images: int = 64) -> None:
        if not self.enabled:
            return
        net = self.sample_net or netG
        try:
            with aside_from_training(self.device), eval_mode(net):
                super().vis_images(net, global_step, num_images)
        except OSError as error:  # a full disk: one line, and no half-written grid
            folder = Path(self.log_dir) / "images"
            for kind in ("fixed_fake", "fake"):
                (folder / f"{kind}_samples_step_{global_step}.png").unlink(missing_ok=True)
            raise UsageError(f"cannot write the sample grids of step {global_step} in {folder}: "
                             f"{error.strerror or error}; training stopped, "
                             f"{checkpoint.last_checkpoint_said(Path(self.log_dir))}") from None

    def write_scalar(self, name: str, value: float, global_step: int) -> None:
        if self.enabled:
            if name not in self.writers:
                self.writers[name] = self._build_writer(name.replace("/", "_"))
            self.writers[name].add_scalar(name, value, global_step=global_step)

    def close_writers(self) -> None:
        super().close_writers()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _AfterEachStep:
    """The host's scheduler, and then the trainer's per-step work (same call, same place)."""

    def __init__(self, scheduler: LRScheduler,
                 callback: Callable[[MetricLog, int], None]) -> None:
        self.scheduler, self.callback = scheduler, callback

    def step(self, log_data: MetricLog, global_step: int) -> MetricLog:
        log_data = self.scheduler.step(log_data=log_data, global_step=global_step)
        self.callback(log_data, global_step)
        return log_data


class SAGANTrainer(Trainer):
    """The host's Trainer with the additions listed in the module docstring.

    Extra keyword arguments: `world` (this process's rank), `sampler` (the EpochSampler the
    dataloader reads), `ema` (an EMA of netG or None), `step_context` (a context-manager
    factory the loop runs under: autocast, attention kernel), `channels_last`, and
    `model_info` (family, resolution, classes: stored in checkpoints and checked on resume),
    `fid` (a callback(netG, step) -> scores or None, from metrics.scoring.fid_callback; rank 0),
    `stop` (the StopRequests that SIGTERM and Ctrl-C set: the run saves and stops after the
    step in which any rank saw one), `on_start` (called on every rank once the checkpoint
    resumed from, if any, fits: the run folder is claimed and its own files written then,
    not before).
    """

    def __init__(self, *args, world: World | None = None, sampler: EpochSampler | None = None,
                 ema: EMA | None = None, step_context: StepContext = contextlib.nullcontext,
                 channels_last: bool = False, model_info: dict | None = None,
                 fid: Callable[[torch.nn.Module, int], dict | None] | None = None,
                 stop: StopRequests | None = None,
                 on_start: Callable[[], None] | None = None, **kwargs) -> None:
        self.on_start = on_start
        self.world, self.sampler, self.ema, self.fid = world or World(), sampler, ema, fid
        self.stop, self.stopped_at_once = stop, False
        self.stop_after: tuple[int, int] | None = None  # (signal, step) all ranks agreed on
        self.step_context, self.channels_last = step_context, channels_last
        self.model_info = model_info or {}
        self.data_position = {"epoch": 0, "batches": 0}
        super().__init__(*args, **kwargs)
        # The host records the dataloader's batch, which under torchrun is one rank's share:
        # params.json says train.batch_size, the global batch, instead.
        self.params["batch_size"] = self.dataloader.batch_size * self.world.world_size
        self.logger = ProgressLogger(log_dir=self.log_dir, num_steps=self.num_steps,
                                     dataset_size=len(self.dataloader), device=self.device,
                                     flush_secs=kwargs.get("flush_secs", 30))
        self.logger.enabled = self.world.is_main
        self.logger.sample_net = ema.model if ema is not None else None
        self.scheduler = _AfterEachStep(self.scheduler, self._after_step)

    def _log_params(self, params: dict) -> None:
        """Nothing yet: _restore_models_and_step writes self.params once the checkpoint fits,
        so that a refused resume leaves the folder as it was. (The host would also refuse a
        resume whose params.json changed, step count included; config.yaml is checked instead,
        train.check_resume, so that a run can be extended.)"""

    # ---- data ----------------------------------------------------------------------------

    def _fetch_data(self, iter_dataloader: Iterator[tuple[Tensor, Tensor]]
                    ) -> tuple[Iterator[tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]:
        if self.stop_after is not None:  # the first fetch of the next step: save, then stop
            signum, step = self.stop_after
            self._save_model_checkpoints(step)
            raise Interrupted(signum, step, str(Path(self.log_dir) / "checkpoints"))
        try:
            images, labels = self._next_batch(iter_dataloader)
        except StopIteration:
            self.data_position = {"epoch": self.data_position["epoch"] + 1, "batches": 0}
            if self.sampler is not None:
                self.sampler.start_at(self.data_position["epoch"], 0)
            iter_dataloader = iter(self.dataloader)
            images, labels = self._next_batch(iter_dataloader)
        self.data_position["batches"] += 1
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        images = images.to(self.device, non_blocking=True, memory_format=memory_format)
        return iter_dataloader, (images, labels.to(self.device, non_blocking=True))

    def _next_batch(self, batches: Iterator[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        try:
            return next(batches)
        except RuntimeError as error:
            # Workers hand batches over in /dev/shm, which containers keep small (Docker: 64 MB)
            # and torch reports filling up in several ways, all naming it or its torch_ files.
            if "shared memory" not in str(error) and "</torch_" not in str(error):
                raise
            raise UsageError("the DataLoader's workers ran out of shared memory (/dev/shm): "
                             "give them more (docker run --shm-size=8g) or set "
                             "data.num_workers=0; training stopped, "
                             f"{checkpoint.last_checkpoint_said(Path(self.log_dir))}") from None

    # ---- per step -------------------------------------------------------------------------

    def _after_step(self, log_data: MetricLog, global_step: int) -> None:
        bad = sorted(name for name in log_data.keys() if log_data.get_group_name(name) == "loss"
                     and not math.isfinite(log_data.metrics_dict[name]["value"]))
        signum = self.stop.signum if self.stop is not None else None
        bad_anywhere, signum = max_over_ranks([int(bool(bad)), signum or 0], self.device)
        if bad_anywhere:
            steps = checkpoint.complete_steps(Path(self.log_dir))
            kept = f"the last good checkpoint is step {steps[-1]}" if steps else "no checkpoint"
            where = f" ({', '.join(f'{n}={log_data[n]}' for n in bad)})" if bad else \
                " (on another rank)"
            raise NonFiniteLoss(f"a loss is not finite at step {global_step}{where}; training "
                                f"stopped, {kept} in {Path(self.log_dir) / 'checkpoints'} "
                                "(try a lower learning rate or train.precision=fp32)")
        if self.ema is not None:
            self.ema.update(self.netG, global_step)
        if self.fid is not None:
            with aside_from_training(self.device):
                scores = self.fid(self.ema.model if self.ema is not None else self.netG,
                                  global_step)
            for name, value in (scores or {}).items():
                self.logger.write_scalar(f"eval/{name}", value, global_step)
        if signum:  # every rank stops after this step, once the loop has logged it
            self.stop_after = (signum, global_step)

    def train(self) -> None:
        quiet = contextlib.redirect_stdout(io.StringIO()) if not self.world.is_main \
            else contextlib.nullcontext()
        with quiet, self.step_context():
            super().train()
        if self.stopped_at_once:  # the host swallows KeyboardInterrupt: pass it on
            raise KeyboardInterrupt
        steps = checkpoint_steps(self.log_dir)
        if self.world.is_main and steps and steps[-1] % self.vis_steps:
            # The host draws grids every vis_steps only: always leave one of the last step.
            self.logger.vis_images(netG=self.netG, global_step=steps[-1])
            self.logger.close_writers()

    # ---- checkpoints ----------------------------------------------------------------------

    def _save_model_checkpoints(self, global_step: int) -> None:
        if isinstance(sys.exc_info()[1], KeyboardInterrupt):
            # The host saves on Ctrl-C, but this one came mid-step (stopping.py: a second
            # Ctrl-C, or no handler installed): the state is half a step, and under torchrun
            # ranks stop at different points, where a collective save could hang.
            self.stopped_at_once = True
            info("... not saved after all: the second Ctrl-C came mid-step; a resume "
                 "continues from the last checkpoint")  # after the host's "Saving ..." line
            return
        rng_states = gather_to_main(checkpoint.rng_state(), self.world)
        if not self.world.is_main:
            return
        netG = {
            "model_state_dict": self.netG.state_dict(),
            "optimizer_state_dict": self.optG.state_dict(),
            "global_step": global_step,
            "model": self.model_info,
            "training_state": {"rng": rng_states, "data": dict(self.data_position),
                               "world_size": self.world.world_size},
        }
        if self.ema is not None:
            netG.update(ema_state_dict=self.ema.state_dict(),
                        ema={"decay": self.ema.decay, "start": self.ema.start})
        netD = {"model_state_dict": self.netD.state_dict(),
                "optimizer_state_dict": self.optD.state_dict(), "global_step": global_step}
        run_dir = Path(self.log_dir)
        try:
            checkpoint.save_pair(run_dir, global_step, {"netG": netG, "netD": netD})
        except OSError as error:  # a full disk, a file-size limit (see write_atomically)
            steps = checkpoint.complete_steps(run_dir)
            kept = f"the checkpoint of step {steps[-1]} is kept" if steps else "none was saved"
            raise UsageError(f"cannot save the checkpoint of step {global_step} in "
                             f"{run_dir / 'checkpoints'}: {error.strerror or error}; "
                             f"{kept}") from None

    def _restore_models_and_step(self) -> int:
        step = self._restore_latest()
        self.logger.first_step = step + 1
        if self.on_start is not None:
            self.on_start()
        if self.world.is_main:
            write_json(Path(self.log_dir) / "params.json", self.params)
            self._forget_grids_after(step)
        if step:
            # Said only once the run is this process's, so a refused one never reads as resumed.
            info(f"restored the checkpoint of step {step}")
        return step

    def _forget_grids_after(self, step: int) -> None:
        """Delete the sample grids an earlier attempt drew after `step`: this attempt trains
        another path from there, and a grid left from a vis_steps it no longer uses would
        pass for its own (TensorBoard's scalars are hidden by purge_step)."""
        for grid in (Path(self.log_dir) / "images").glob("*_samples_step_*.png"):
            drawn_at = grid.stem.rpartition("_step_")[2]
            if drawn_at.isdigit() and int(drawn_at) > step:
                grid.unlink(missing_ok=True)

    def _restore_latest(self) -> int:
        run_dir = Path(self.log_dir)
        found = checkpoint.load_latest(run_dir)  # the newest readable step, if any
        if found is None:
            return 0
        step, ckpts = found
        if step > self.num_steps:
            raise UsageError(f"run folder {self.log_dir} is at step {step}, past "
                             f"train.steps={self.num_steps}; a run is extended, not shortened: "
                             f"give train.steps >= {step}")
        check_model_info(ckpts["netG"], self.model_info, checkpoint_path(run_dir, step))
        for net, opt, ckpt in ((self.netG, self.optG, ckpts["netG"]),
                               (self.netD, self.optD, ckpts["netD"])):
            try:
                net.load_state_dict(ckpt["model_state_dict"])
            except RuntimeError as error:
                raise UsageError(f"the checkpoint of step {step} in {run_dir} does not fit "
                                 f"this model: {state_dict_mismatch(error)}") from None
            if ckpt["optimizer_state_dict"] is None:  # the host lets a checkpoint omit it
                info(f"the checkpoint of step {step} has no optimizer state; Adam "
                     "starts afresh")
            else:
                try:
                    opt.load_state_dict(ckpt["optimizer_state_dict"])
                except (KeyError, ValueError, TypeError) as error:  # {}, another optimizer's
                    which = "netG" if net is self.netG else "netD"
                    raise UsageError(f"the checkpoint of step {step} in {run_dir} holds no "
                                     f"usable optimizer state for {which}: "
                                     f"{type(error).__name__} {first_line(error)}") from None
                _lay_out_like_parameters(opt)
        self._restore_ema(ckpts["netG"], step)
        self._restore_training_state(ckpts["netG"].get("training_state"))
        # The learning rates of the schedule this run follows (a longer train.steps moves a
        # linear decay), not those the checkpoint's optimizers had: as after a step of it.
        self.scheduler.scheduler.step(MetricLog(), step)
        return step

    def _restore_ema(self, ckpt: dict, step: int) -> None:
        if self.ema is None:
            return
        if ckpt.get("ema_state_dict") is None:
            info(f"the checkpoint of step {step} has no EMA of G; it starts from G")
            self.ema.load_state_dict(self.netG.state_dict())
        else:
            self.ema.load_state_dict(ckpt["ema_state_dict"])

    def _restore_training_state(self, state: dict | None) -> None:
        if state is None:  # a checkpoint written by the host's own Trainer
            info("the checkpoint has no data position or random state; "
                 "both restart from the seed")
            return
        self.data_position = dict(state["data"])
        if self.sampler is not None:
            self.sampler.start_at(self.data_position["epoch"], self.data_position["batches"])
        if state["world_size"] == self.world.world_size:
            checkpoint.set_rng_state(state["rng"][self.world.rank])
        else:
            info(f"the checkpoint was written by {_processes(state['world_size'])}, "
                 f"this run has {self.world.world_size}: random streams restart from the seed")

    def last_grid(self) -> Path | None:
        """The newest fixed-noise sample grid the run wrote."""
        steps = checkpoint_steps(self.log_dir)
        grid = Path(self.log_dir) / "images" / f"fixed_fake_samples_step_{steps[-1]}.png" \
            if steps else None
        return grid if grid is not None and grid.is_file() else None


def _processes(count: int) -> str:
    return "1 process" if count == 1 else f"{count} processes"
