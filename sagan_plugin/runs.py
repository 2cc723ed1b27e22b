"""Run folders: what a training run leaves on disk, and loading a generator back from it.

    <run_dir>/config.yaml                               the resolved configuration
    <run_dir>/checkpoints/net{G,D}/net{G,D}_<step>_steps.pth   Mimicry's checkpoint format
    <run_dir>/data/                                     TensorBoard logs
    <run_dir>/images/                                   sample grids
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sagan_plugin.config import build_models
from sagan_plugin.errors import UsageError
from sagan_plugin.nets.layers import refresh_spectral_norm

CONFIG_FILE = "config.yaml"
EMA_POWER_ITERATIONS = 30
_STEP = re.compile(r"_(\d+)_steps\.pth$")


@dataclass
class LoadedGenerator:
    netG: nn.Module  # in eval mode
    config: DictConfig
    step: int
    ema: bool  # whether the weights are the EMA of G's


def checkpoint_dir(run_dir: str | Path, net: str = "netG") -> Path:
    return Path(run_dir) / "checkpoints" / net


def checkpoint_path(run_dir: str | Path, step: int, net: str = "netG") -> Path:
    return checkpoint_dir(run_dir, net) / f"{net}_{step}_steps.pth"


def checkpoint_steps(run_dir: str | Path, net: str = "netG") -> list[int]:
    """The training steps that have a checkpoint of net, ascending."""
    folder = checkpoint_dir(run_dir, net)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _STEP.search(p.name)))


def load_run_config(run_dir: str | Path) -> DictConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a run folder: {path} is missing")
    return OmegaConf.load(path)


def resolve_checkpoint(path: str | Path, step: int | None = None) -> tuple[Path, Path]:
    """(run folder, netG checkpoint) for a run folder (latest or given step) or a checkpoint."""
    path = Path(path)
    if path.is_file():
        return path.parent.parent.parent, path
    if not path.is_dir():
        raise UsageError(f"{path} does not exist: expected a run folder or a netG checkpoint")
    steps = checkpoint_steps(path)
    if not steps:
        raise UsageError(f"run folder {path} has no checkpoint under {checkpoint_dir(path)}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise UsageError(f"run folder {path} has no checkpoint at step {step}; it has "
                         f"{', '.join(map(str, steps))}")
    return path, checkpoint_path(path, step)


def read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file fails in many ways
        raise UsageError(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}") from None


def load_generator(path: str | Path, step: int | None = None, prefer_ema: bool = True,
                   device: str | torch.device = "cpu") -> LoadedGenerator:
    """Rebuild a run's generator through the registry and load its weights (EMA if present)."""
    run_dir, ckpt_file = resolve_checkpoint(path, step)
    config = load_run_config(run_dir)
    netG, _ = build_models(config)
    ckpt = read_checkpoint(ckpt_file)
    use_ema = prefer_ema and ckpt.get("ema_state_dict") is not None
    state = ckpt["ema_state_dict"] if use_ema else ckpt["model_state_dict"]
    try:
        netG.load_state_dict(state)
    except RuntimeError as error:
        raise UsageError(f"checkpoint {ckpt_file} does not fit the model in "
                         f"{run_dir / CONFIG_FILE}: {str(error).splitlines()[0]}") from None
    if use_ema:  # the EMA weights normalised by their own sigma, converged once more
        refresh_spectral_norm(netG, EMA_POWER_ITERATIONS)
    return LoadedGenerator(netG.to(device).eval(), config, int(ckpt["global_step"]), use_ema)
