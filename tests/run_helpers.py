"""Run folders for the tests of the commands that read one: made by hand, not trained."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from omegaconf import OmegaConf

from sagan_plugin import export
from sagan_plugin.checkpoint import checkpoint_path
from sagan_plugin.config import build_models, compose
from sagan_plugin.nets.layers import ConditionalBatchNorm2d

STEP = 7


def make_run(run_dir: Path, num_classes: int | None = None) -> Path:
    """A run folder whose tiny 32 px SAGAN has weights a trained one could have.

    gamma != 0 so that attention matters, BN statistics away from (0, 1), u vectors moved by a
    training-mode pass, a gain and bias of its own for each class (so that a label sent to the
    wrong image shows), and EMA weights different from the raw ones.
    """
    overrides = ["model=sagan", "data=procedural", "model.ngf=8", f"run_dir={run_dir}"]
    if num_classes is not None:
        overrides.append(f"model.num_classes={num_classes}")
    cfg = compose(overrides)
    torch.manual_seed(0)
    netG, _ = build_models(cfg)
    netG.train()
    netG(torch.randn(4, netG.nz))
    with torch.no_grad():
        netG.attention.gamma.fill_(0.7)
        for name, buffer in netG.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buffer.normal_(0.0, 0.3)
        for module in netG.modules():
            if isinstance(module, ConditionalBatchNorm2d) and module.num_classes:
                module.gain.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
    raw = {k: v.clone() for k, v in netG.state_dict().items()}
    with torch.no_grad():
        for p in netG.parameters():
            p.mul_(0.9)
    run_dir.mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    ckpt = checkpoint_path(run_dir, STEP)
    ckpt.parent.mkdir(parents=True)
    torch.save({"model_state_dict": raw, "optimizer_state_dict": {}, "global_step": STEP,
                "ema_state_dict": netG.state_dict()}, ckpt)
    return run_dir


@functools.cache
def exported_run(base: Path, conditional: bool, formats: tuple[str, ...]) -> Path:
    """A run folder with exports in run/export/generator.{pt,pt2}; built once per process."""
    run = make_run(base / ("conditional" if conditional else "unconditional"),
                   None if conditional else 0)
    for fmt in formats:
        export.export_generator(run, fmt)
    return run


def overridden(base: list[str], args: list[str]) -> list[str]:
    """base's key=value tokens but those whose key args sets (the command line refuses a key
    given twice), then args."""
    keys = {a.partition("=")[0] for a in args}
    return [t for t in base if t.partition("=")[0] not in keys] + args
