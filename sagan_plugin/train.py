"""`sagan-plugin train`: compose the configuration, build everything, run the host's loop.

Every check that can fail on user input runs before the run folder is touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sagan_plugin.config import build_models, compose
from sagan_plugin.data import build_dataloader, build_dataset
from sagan_plugin.errors import UsageError
from sagan_plugin.runs import CONFIG_FILE

# Keys that may change when a run is resumed: length, cadence, machine.
RESUMABLE_KEYS = {"train.steps", "train.log_steps", "train.vis_steps", "train.save_steps",
                  "train.device", "data.num_workers", "data.root", "run_dir"}


def main(argv: list[str]) -> None:
    run(compose(argv))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"train.device={name!r} is not a device; use auto, cpu, cuda or "
                         "cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"train.device={name} but this machine has no usable GPU; use cpu")
    return device


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
        if run_dir.is_dir() and (run_dir / "checkpoints").exists():
            raise UsageError(f"{run_dir} holds checkpoints but no {CONFIG_FILE}; "
                             "choose another run_dir")
        return
    saved, new = _flat(OmegaConf.load(saved_file)), _flat(cfg)
    changed = sorted(k for k in saved.keys() | new.keys()
                     if k not in RESUMABLE_KEYS and saved.get(k) != new.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise UsageError(f"{run_dir} was started with another configuration ({details}); "
                         "use another run_dir or the same settings")


def _prepare_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".{CONFIG_FILE}.tmp"
        OmegaConf.save(cfg, tmp)
        os.replace(tmp, run_dir / CONFIG_FILE)
    except OSError as error:
        raise UsageError(f"cannot write to run folder {run_dir}: {error.strerror}") from None


def run(cfg: DictConfig):
    """Train as cfg says; returns the trainer (its run folder holds everything written)."""
    from sagan_plugin.trainer import SAGANTrainer

    run_dir = Path(cfg.run_dir)
    check_resume(run_dir, cfg)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    dataset = build_dataset(cfg.data)
    dataloader = build_dataloader(dataset, cfg.train.batch_size, cfg.data.num_workers)
    netG, netD = build_models(cfg)
    betas = (cfg.train.beta1, cfg.train.beta2)
    optG = torch.optim.Adam(netG.parameters(), lr=cfg.train.lr_g, betas=betas)
    optD = torch.optim.Adam(netD.parameters(), lr=cfg.train.lr_d, betas=betas)
    _prepare_run_dir(run_dir, cfg)

    trainer = SAGANTrainer(
        netD=netD, netG=netG, optD=optD, optG=optG, dataloader=dataloader,
        num_steps=cfg.train.steps, log_dir=str(run_dir), n_dis=cfg.train.n_dis,
        lr_decay=cfg.train.lr_decay, device=device, print_steps=1,
        vis_steps=cfg.train.vis_steps, log_steps=cfg.train.log_steps,
        save_steps=cfg.train.save_steps,
    )
    trainer.train()
    grid = trainer.last_grid()
    if grid is not None:
        print(f"samples: {grid}")
    print(f"TensorBoard logs: {run_dir / 'data'}  (tensorboard --logdir {run_dir / 'data'})")
    return trainer
