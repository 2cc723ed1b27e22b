"""`sagan-plugin train`: compose the configuration, build everything, run the host's loop.

Every check that can fail on user input runs before the run folder is touched.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sagan_plugin.checkpoint import NETS, checkpoint_steps
from sagan_plugin.config import build_models, compose, compose_saved, resolve_device
from sagan_plugin.data import build_dataloader, build_dataset
from sagan_plugin.distributed import (
    EpochSampler,
    World,
    broadcast_from_main,
    destroy_process_group,
    device_for_rank,
    info,
    init_process_group,
    per_rank_batch,
    world_from_env,
    wrap,
)
from sagan_plugin.ema import EMA
from sagan_plugin.errors import UsageError
from sagan_plugin.files import check_writable, write_atomically
from sagan_plugin.nets.layers import set_bn_group
from sagan_plugin.overrides import SELECTORS, check_tokens
from sagan_plugin.precision import check_options, prepare_for_training, step_context
from sagan_plugin.runs import (
    CONFIG_FILE,
    MODEL_INFO_KEYS,
    RunLock,
    is_mimicry_run,
    mimicry_settings,
    read_run_config,
)
from sagan_plugin.stopping import StopRequests

if TYPE_CHECKING:
    from sagan_plugin.trainer import SAGANTrainer

# Keys that may change when a run is resumed: length, cadence (of logs, grids, checkpoints and
# FID logging), machine, kernels. README "Using it" lists them.
RESUMABLE_KEYS = {"train.steps", "train.log_steps", "train.vis_steps", "train.save_steps",
                  "train.fid_every", "train.fid_n", "train.device", "data.num_workers",
                  "data.root", "run_dir",
                  "train.precision", "train.channels_last", "train.compile",
                  "train.sdpa_backend", "train.sync_bn", "train.deterministic"}


def main(argv: list[str]) -> None:
    run(continued(argv) or compose(argv))


def continued(argv: list[str]) -> DictConfig | None:
    """`train run_dir=DIR key=value ...` without model= or data=, for a run folder that has a
    config.yaml: that configuration with the overrides on top (train.steps=N extends the run);
    None otherwise, and the command line is composed from the presets as usual."""
    check_tokens(argv)
    given = dict(token.partition("=")[::2] for token in argv)
    if "run_dir" not in given or any(key in given for key in SELECTORS):
        return None
    saved_file = Path(given["run_dir"]) / CONFIG_FILE
    if not saved_file.is_file():
        return None
    cfg = compose_saved(read_run_config(saved_file), str(saved_file), argv)
    info(f"continuing {given['run_dir']} with its {CONFIG_FILE}"
         + (f" and {' '.join(t for t in argv if not t.startswith('run_dir='))}"
            if len(argv) > 1 else ""))
    return cfg


def _flat(cfg: DictConfig) -> dict[str, object]:
    return {key: value for key, value in _items(OmegaConf.to_container(cfg), "")}


def _items(node: object, prefix: str):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _items(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), node


def check_resume(run_dir: Path, cfg: DictConfig) -> None:
    """A run folder is resumed only with the configuration it was started with."""
    saved_file = run_dir / CONFIG_FILE
    if not saved_file.is_file():
        if is_mimicry_run(run_dir):  # continued with this command's model=, data=, ...
            _check_mimicry_settings(run_dir, cfg)
            info(f"{run_dir} is a run of Mimicry's own Trainer: continuing it as "
                 f"model={cfg.model.name} data={cfg.data.name}; its checkpoints must fit")
        elif run_dir.is_dir() and (run_dir / "checkpoints").exists():
            raise UsageError(f"{run_dir} holds checkpoints but no {CONFIG_FILE} (nor Mimicry's "
                             "params.json); choose another run_dir")
        return
    raw = read_run_config(saved_file)
    compose_saved(raw, str(saved_file))  # a damaged or impossible configuration is refused
    saved, new = dict(_items(raw, "")), _flat(cfg)
    # Keys the saved file lacks came with a later version of this package: not a change.
    _refuse_changes(run_dir, {k: (saved[k], new.get(k)) for k in saved
                              if k not in RESUMABLE_KEYS},
                    f"{run_dir} was started with another configuration")


def _check_mimicry_settings(run_dir: Path, cfg: DictConfig) -> None:
    """Mimicry's Trainer refuses to continue with other hyperparameters than its params.json
    recorded; so does its continuation here (which then writes a config.yaml)."""
    _refuse_changes(run_dir, {key: (value, OmegaConf.select(cfg, key))
                              for key, value in mimicry_settings(run_dir).items()},
                    f"{run_dir} was trained by Mimicry's Trainer with other settings, in its "
                    "params.json")


def _refuse_changes(run_dir: Path, pairs: dict[str, tuple[object, object]], lead: str) -> None:
    """Refuse the keys whose (saved, new) values differ, unless nothing has been trained yet
    (no checkpoint file at all: a lone netD left by a kill resumes with the same settings only)."""
    changed = sorted(key for key, (saved, new) in pairs.items() if saved != new)
    if not changed:
        return
    details = ", ".join(f"{k}: {pairs[k][0]!r} -> {pairs[k][1]!r}" for k in changed)
    if not any(checkpoint_steps(run_dir, net) for net in NETS):  # nothing trained yet
        info(f"{run_dir} has no checkpoint yet: it starts again with the new "
             f"configuration ({details})")
        return
    raise UsageError(f"{lead} ({details}); use another run_dir or the same settings")


def _claim_run_dir(held: contextlib.ExitStack, run_dir: Path, cfg: DictConfig) -> None:
    """Lock the run folder for the rest of the run, then write its configuration. Called once
    the checkpoint resumed from fits, so that a refused run leaves no trace, not even a lock."""
    held.enter_context(RunLock(run_dir))
    try:
        write_atomically(run_dir / CONFIG_FILE, lambda f: f.write(OmegaConf.to_yaml(cfg).encode()))
    except OSError as error:
        raise UsageError(f"cannot write to run folder {run_dir}: {error.strerror}") from None


def _on_main(world: World, action: Callable[[], object]) -> None:
    """Run `action` on rank 0 only; a UsageError it raises is raised on every rank."""
    error = None
    if world.is_main:
        try:
            action()
        except UsageError as failure:
            error = str(failure)
    error = broadcast_from_main(error, world)
    if error:
        raise UsageError(error)


def run(cfg: DictConfig) -> SAGANTrainer:
    """Train as cfg says; returns the trainer (its run folder holds everything written).

    Under torchrun every rank calls this; rank 0 writes the run folder.
    """
    world = world_from_env()
    train = cfg.train
    run_dir = Path(cfg.run_dir)
    local_batch = per_rank_batch(train.batch_size, world)
    check_writable(run_dir, "run folder")
    check_resume(run_dir, cfg)
    device = device_for_rank(resolve_device(train.device, "train.device"), world)
    if train.sync_bn and not (device.type == "cuda" and world.distributed):
        raise UsageError("train.sync_bn needs GPUs under torchrun (torch's SyncBatchNorm "
                         "runs on GPUs only); leave it false")
    if train.deterministic:  # before any CUDA work, check_options' probe of a kernel included:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reads it at start
    check_options(train.precision, train.sdpa_backend, device)
    # The run's kernel choices last as long as it does: a process may train another run next
    # (a study's worker, a Python caller), which must not inherit them.
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark)
    try:
        if train.deterministic:
            _make_deterministic()
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: the fastest convolutions
        init_process_group(world, device)
        try:
            return _train(cfg, world, device, local_batch)
        finally:
            destroy_process_group()
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]


def check_bn_group(group: int | None, sync_bn: bool, local_batch: int) -> None:
    """Groups of batch-norm images that each process's batch splits into evenly."""
    if not group:
        return
    if sync_bn:
        raise UsageError(f"train.bn_group={group} and train.sync_bn ask for other batch-norm "
                         "statistics (over groups of a process's batch, over every process's): "
                         "set train.bn_group=null or train.sync_bn=false")
    if local_batch > group and local_batch % group:
        raise UsageError(f"train.bn_group={group} must divide the batch each process trains "
                         f"on, {local_batch}, or be at least it")


def _make_deterministic() -> None:
    torch.use_deterministic_algorithms(True)  # with CUBLAS_WORKSPACE_CONFIG, set in run()
    torch.backends.cudnn.benchmark = False


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _train(cfg: DictConfig, world: World, device: torch.device,
           local_batch: int) -> SAGANTrainer:
    from sagan_plugin.nets import SAGANDiscriminator, SAGANGenerator
    from sagan_plugin.trainer import SAGANTrainer

    train = cfg.train
    _seed_everything(train.seed)  # the same initial weights on every rank
    dataset = build_dataset(cfg.data)
    sampler = EpochSampler(dataset, local_batch, world, seed=train.seed)
    dataloader = build_dataloader(dataset, local_batch, cfg.data.num_workers, sampler=sampler)
    # Worker seeds come from here rather than from the global stream, which must hold only what
    # a checkpoint restores (a new iterator at each resume would otherwise shift it).
    dataloader.generator = torch.Generator().manual_seed(train.seed + world.rank)
    stop = StopRequests()
    if dataloader.worker_init_fn is None:
        dataloader.worker_init_fn = stop.worker_init
    check_bn_group(train.bn_group, train.sync_bn, local_batch)  # after the data set's size
    netG, netD = build_models(cfg)
    if world.distributed and not (isinstance(netG, SAGANGenerator)
                                  and isinstance(netD, SAGANDiscriminator)):
        raise UsageError(f"model {cfg.model.name} is one of the host's single-device nets; "
                         "torchrun training needs model=sagan")
    _seed_everything(train.seed + world.rank)  # each rank its own noise
    netG.to(device), netD.to(device)
    prepare_for_training(netG, netD, precision=train.precision, sdpa_backend=train.sdpa_backend,
                         channels_last=train.channels_last)
    if train.sync_bn:
        netG = torch.nn.SyncBatchNorm.convert_sync_batchnorm(netG)
    if train.bn_group and not set_bn_group(netG, train.bn_group):
        raise UsageError(f"train.bn_group: model {cfg.model.name} has none of this package's "
                         "batch norms (its own normalise the whole batch); set "
                         "train.bn_group=null")
    ema = EMA(netG, train.ema_decay, train.ema_start) if train.ema_decay else None
    fid = None
    if train.fid_every and world.is_main:
        from sagan_plugin.metrics.scoring import fid_callback

        fid = fid_callback(cfg.data, every=train.fid_every, n=train.fid_n, device=str(device),
                           what="train.fid_n")
    for net in (netG, netD):
        if train.compile:
            net.compile()
        wrap(net, device)
    betas = (train.beta1, train.beta2)
    optG = torch.optim.Adam(netG.parameters(), lr=train.lr_g, betas=betas,
                            fused=train.fused_adam)
    optD = torch.optim.Adam(netD.parameters(), lr=train.lr_d, betas=betas,
                            fused=train.fused_adam)
    try:  # here, not in the host's Trainer, whose exists-then-make races between ranks
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot write to run folder {cfg.run_dir}: {error.strerror}") from None
    with contextlib.ExitStack() as held:
        trainer = SAGANTrainer(
            netD=netD, netG=netG, optD=optD, optG=optG, dataloader=dataloader,
            num_steps=train.steps, log_dir=cfg.run_dir, n_dis=train.n_dis,
            lr_decay=train.lr_decay, device=device, print_steps=1,
            vis_steps=train.vis_steps, log_steps=train.log_steps, save_steps=train.save_steps,
            world=world, sampler=sampler, ema=ema, fid=fid, channels_last=train.channels_last,
            step_context=partial(step_context, device, train.precision, train.sdpa_backend),
            model_info={k: cfg.model[k] for k in MODEL_INFO_KEYS},
            stop=held.enter_context(stop),
            on_start=partial(_on_main, world, partial(_claim_run_dir, held, Path(cfg.run_dir),
                                                      cfg)),
        )
        trainer.train()
    if world.is_main:
        grid = trainer.last_grid()
        if grid is not None:
            print(f"samples: {grid}")
        print(f"TensorBoard logs: {Path(cfg.run_dir) / 'data'}  "
              f"(tensorboard --logdir {Path(cfg.run_dir) / 'data'})")
    return trainer
