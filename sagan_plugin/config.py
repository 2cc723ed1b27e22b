"""Run configuration: `model=` and `data=` pick presets, then `key=value` overrides apply.

    sagan-plugin train model=sagan data=fashion_mnist train.steps=2000 model.ngf=32

The schema is typed (OmegaConf structured configs in struct mode), so an unknown key or a
value of the wrong type is refused with the key's full name. The model section's fields come
from the chosen family's preset: a null default there means an optional integer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError
from torch import nn

from sagan_plugin.errors import UsageError
from sagan_plugin.presets import load_preset, preset_names
from sagan_plugin.registry import ModelFamily, get_model

DEFAULT_MODEL = "sagan"
DEFAULT_DATA = "procedural"
SELECTORS = ("model", "data")
DERIVED_MODEL_KEYS = ("name", "resolution", "num_classes")
CROPS = ("square", "mimicry")


@dataclass
class DataConfig:
    name: str = DEFAULT_DATA
    root: str | None = None  # null: ./datasets (fashion_mnist also looks in Debian's package)
    resolution: int = 32
    num_classes: int = 0  # 0: unlabelled
    split: str = "train"
    fit: str = "pad"  # small images (Fashion-MNIST's 28 px): pad or resize to the resolution
    size: int = 10000  # number of images of the procedural data set
    # ImageNet: square (the reference's: the largest centred square, resized) or mimicry
    # (Mimicry's loader: a centred 224x224 crop, resized; tighter on most photos).
    crop: str = "mimicry"
    num_workers: int | None = None  # null: up to 4, fewer on small machines


@dataclass
class TrainConfig:
    steps: int = 100_000
    batch_size: int | None = None  # null: the family's default for the resolution
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9
    n_dis: int = 1
    lr_decay: str | None = None  # null or linear
    seed: int = 0
    device: str = "auto"  # auto (cuda when present), cpu, cuda, cuda:N
    log_steps: int = 50
    vis_steps: int = 500
    save_steps: int = 5000
    # Speed (sagan_plugin/precision.py); none of these changes what is learnt beyond rounding.
    precision: str = "fp32"  # fp32 or bf16 (autocast; spectral norm and losses stay fp32)
    channels_last: bool = False
    compile: bool = False  # torch.compile the forward of G and D
    fused_adam: bool = True
    sdpa_backend: str = "auto"  # attention kernel: auto, flash, efficient, cudnn or math
    sync_bn: bool = False  # batch-norm statistics over the global batch (GPUs, torchrun)
    deterministic: bool = False  # deterministic kernels: a resumed run repeats bit for bit
    # BigGAN-style EMA of G's weights, saved as ema_state_dict and preferred for sampling.
    ema_decay: float | None = None  # null: no EMA; BigGAN uses 0.9999
    ema_start: int = 0  # steps before which the EMA is a plain copy of G
    # FID (offline, sagan_plugin/evaluate.py) of G (its EMA if any) every k steps, to TensorBoard.
    fid_every: int = 0  # 0: off (Inception on a CPU is slow)
    fid_n: int = 5000  # generated images per FID


def _model_schema(family: ModelFamily) -> type:
    """A dataclass for the model section: derived fields, then the family's own, typed."""
    fields: list[tuple[str, Any, Any]] = [
        ("name", str, field(default=family.name)),
        ("resolution", int | None, field(default=None)),  # always the data set's
        ("num_classes", int | None, field(default=None)),  # null: the data set's (0 if none)
    ]
    for key, value in family.defaults.get("model", {}).items():
        kind = int | None if value is None else type(value)
        fields.append((key, kind, field(default=value)))
    return dataclasses.make_dataclass(f"{family.name}_model", fields)


def compose(argv: list[str]) -> DictConfig:
    """The full, validated run configuration from `model=`, `data=` and `key=value` tokens."""
    chosen = {"model": DEFAULT_MODEL, "data": DEFAULT_DATA}
    overrides = []
    for token in argv:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise UsageError(f"expected key=value, got {token!r}")
        if key in SELECTORS:
            chosen[key] = value
        else:
            overrides.append(token)
    family = get_model(chosen["model"])
    if chosen["data"] not in preset_names("data"):
        raise UsageError(f"unknown data set {chosen['data']!r}; known data sets: "
                         f"{', '.join(preset_names('data'))}")

    cfg = OmegaConf.create({
        "model": OmegaConf.structured(_model_schema(family)),
        "data": OmegaConf.structured(DataConfig(name=chosen["data"])),
        "train": OmegaConf.structured(TrainConfig()),
        "run_dir": None,  # null: runs/<model>_<data>
    })
    _merge(cfg, {"model": family.defaults.get("model", {}),
                 "train": family.defaults.get("train", {})}, f"preset of model {family.name}")
    _merge(cfg, load_preset("data", chosen["data"]), f"preset of data {chosen['data']}")
    OmegaConf.set_struct(cfg, True)
    try:
        cli = OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as error:
        raise UsageError(f"cannot parse overrides {' '.join(overrides)!r}: {error.msg}") from None
    _merge(cfg, cli, "override")
    _derive(cfg, family)
    return cfg


def _merge(cfg: DictConfig, values: Any, source: str) -> None:
    try:
        cfg.merge_with(values)
    except ConfigKeyError as error:
        section = error.full_key.rpartition(".")[0]
        node = OmegaConf.select(cfg, section) if section else cfg
        known = ", ".join(str(k) for k in node) if isinstance(node, DictConfig) else ""
        raise UsageError(f"unknown key {error.full_key!r} in {source}"
                         + (f"; keys of {section}: {known}" if known else "")) from None
    except ValidationError as error:
        raise UsageError(f"bad value for {error.full_key} in {source}: "
                         f"{error.msg.splitlines()[0]}") from None


def _derive(cfg: DictConfig, family: ModelFamily) -> None:
    """Fill the fields that follow from others, and refuse combinations that cannot train."""
    model, data, train = cfg.model, cfg.data, cfg.train
    if model.resolution is not None and model.resolution != data.resolution:
        raise UsageError(f"model.resolution={model.resolution} does not match data {data.name} "
                         f"({data.resolution}x{data.resolution}); set data.resolution instead")
    model.resolution = data.resolution
    if model.resolution not in family.resolutions:
        raise UsageError(f"model {family.name} does not support {model.resolution}x"
                         f"{model.resolution} images (data {data.name}); supported: "
                         f"{', '.join(map(str, family.resolutions))}")
    if model.num_classes is None:
        model.num_classes = 0 if family.conditional is False else data.num_classes
    if model.num_classes and model.num_classes != data.num_classes:
        raise UsageError(f"model.num_classes={model.num_classes} does not match data {data.name}"
                         f" ({data.num_classes} classes); use {data.num_classes} or 0")
    if family.conditional and not model.num_classes:
        raise UsageError(f"model {family.name} is class-conditional but data {data.name} "
                         "has no labels")
    if family.conditional is False and model.num_classes:
        raise UsageError(f"model {family.name} is unconditional: model.num_classes must be 0")
    if train.batch_size is None:
        train.batch_size = family.defaults.get("batch_size", {}).get(model.resolution, 64)
    for key in ("steps", "batch_size", "n_dis", "log_steps", "vis_steps", "save_steps"):
        if train[key] < 1:
            raise UsageError(f"train.{key} must be at least 1, got {train[key]}")
    if train.ema_decay is not None and not 0 < train.ema_decay < 1:
        raise UsageError(f"train.ema_decay must be in (0, 1) or null, got {train.ema_decay}")
    if train.fid_every < 0:
        raise UsageError(f"train.fid_every must be 0 (off) or a number of steps, got "
                         f"{train.fid_every}")
    if train.lr_decay not in (None, "linear"):
        raise UsageError(f"train.lr_decay must be null or linear, got {train.lr_decay!r}")
    if data.crop not in CROPS:
        raise UsageError(f"data.crop must be one of {', '.join(CROPS)}, got {data.crop!r}")
    if data.fit not in ("pad", "resize"):
        raise UsageError(f"data.fit must be pad or resize, got {data.fit!r}")
    if cfg.run_dir is None:
        cfg.run_dir = f"runs/{family.name}_{data.name}"


def parse_overrides(schema: type, argv: Sequence[str], command: str) -> Any:
    """A typed config of `schema` (a dataclass) from key=value tokens; bad input -> UsageError."""
    config = OmegaConf.structured(schema)
    OmegaConf.set_struct(config, True)
    for token in argv:
        if "=" not in token:
            raise UsageError(f"{command}: expected key=value, got {token!r}")
    try:
        config.merge_with(OmegaConf.from_dotlist(list(argv)))
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        fields = ", ".join(schema.__dataclass_fields__)
        raise UsageError(f"{command}: bad override for {key}: {error.msg.splitlines()[0]} "
                         f"(keys: {fields})") from None
    missing = sorted(OmegaConf.missing_keys(config))
    if missing:
        raise UsageError(f"{command}: {', '.join(missing)}=... is required")
    return config


def resolve_device(name: str, option: str = "device") -> torch.device:
    """auto (a GPU when there is one), cpu, cuda or cuda:N; option names the setting in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"{option}={name!r} is not a device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{option}={name} but this machine has no usable GPU; use cpu")
    return device


def arch_kwargs(model_cfg: DictConfig) -> dict[str, Any]:
    """The family's own architecture arguments from a model section."""
    return {k: v for k, v in OmegaConf.to_container(model_cfg).items()
            if k not in DERIVED_MODEL_KEYS}


def build_models(cfg: DictConfig) -> tuple[nn.Module, nn.Module]:
    """(netG, netD) for a composed configuration, through the family registry."""
    family = get_model(cfg.model.name)
    try:
        return family.build(cfg.model.resolution, cfg.model.num_classes, **arch_kwargs(cfg.model))
    except (ValueError, TypeError) as error:
        raise UsageError(f"cannot build model {family.name}: {error}") from None
