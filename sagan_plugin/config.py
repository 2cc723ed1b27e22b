"""Run configuration: `model=` and `data=` pick presets, then `key=value` overrides apply.

    sagan-plugin train model=sagan data=fashion_mnist train.steps=2000 model.ngf=32

The schema is typed (OmegaConf structured configs in struct mode), so an unknown key or a
value of the wrong type is refused with the key's full name. The model section's fields come
from the chosen family's preset: a null default there means an optional integer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from omegaconf.nodes import StringNode
from torch import nn

from sagan_plugin.datasets import get_dataset
from sagan_plugin.errors import UsageError, first_line
from sagan_plugin.overrides import SELECTORS, check_tokens, run_overrides
from sagan_plugin.precision import PRECISIONS, SDPA_BACKENDS
from sagan_plugin.registry import ModelFamily, get_model
from sagan_plugin.schema import (
    POSITIVE,
    SEED,
    Rule,
    at_least,
    between,
    check,
    field_lines,
    key_line,
    one_of,
    option,
    validate,
)

DEFAULT_MODEL = "sagan"
DEFAULT_DATA = "procedural"
# Which model a model section is, as checkpoints record it; its other keys are the family's
# architecture arguments.
MODEL_INFO_KEYS = ("name", "resolution", "num_classes")
CROPS = ("square", "mimicry")
SPLITS = ("train", "test", "val")


@dataclass
class DataConfig:
    name: str = option(DEFAULT_DATA, "the data set: chosen with data=NAME, not as data.name")
    root: str | None = option(None, "folder of the data; null: ./datasets (fashion_mnist also "
                              "looks in Debian's package)")
    resolution: int = option(32, "image size R (R x R)", at_least(1))
    num_classes: int = option(0, "classes of the data set; 0: unlabelled", at_least(0))
    split: str = option("train", "which part of the data set, among those it has (another is "
                        "refused, naming them)", one_of(*SPLITS))
    fit: str = option("pad", "small images (Fashion-MNIST's 28 px): pad or resize to R",
                      one_of("pad", "resize"))
    size: int = option(10000, "images of the procedural data set", at_least(1))
    crop: str = option("mimicry", "ImageNet: square (the reference's largest centred square) or "
                       "mimicry (Mimicry's centred 224x224 crop)", one_of(*CROPS))
    num_workers: int | None = option(None, "DataLoader workers; null: up to 4, fewer on small "
                                     "machines", at_least(0))
    classes: list[str] | None = option(None, "class names in label order; data=folder: its "
                                       "class sub-folders, read when a command starts")


@dataclass
class TrainConfig:
    steps: int = option(100_000, "generator steps", at_least(1))
    batch_size: int | None = option(None, "global batch; null: the family's default for R",
                                    at_least(1))
    lr_g: float = option(1e-4, "G's Adam learning rate", POSITIVE)
    lr_d: float = option(4e-4, "D's Adam learning rate", POSITIVE)
    beta1: float = option(0.0, "Adam beta1", between(0, 1, high_open=True))
    beta2: float = option(0.9, "Adam beta2", between(0, 1, high_open=True))
    n_dis: int = option(1, "D steps per G step", at_least(1))
    lr_decay: str | None = option(None, "learning rates fall linearly to 0 at the last step",
                                  Rule(lambda v: v == "linear", "null or linear"))
    seed: int = option(0, "seed of weights, noise and data order", SEED)
    device: str = option("auto", "auto (cuda when present), cpu, cuda or cuda:N")
    log_steps: int = option(50, "steps between TensorBoard summaries", at_least(1))
    vis_steps: int = option(500, "steps between sample grids", at_least(1))
    save_steps: int = option(5000, "steps between checkpoints", at_least(1))
    # Speed (sagan_plugin/precision.py); none of these changes what is learnt beyond rounding.
    precision: str = option("fp32", "fp32 or bf16 (autocast; spectral norm and losses stay fp32)",
                            one_of(*PRECISIONS))
    channels_last: bool = option(False, "channels-last memory format")
    compile: bool = option(False, "torch.compile the forward of G and D")
    fused_adam: bool = option(True, "the fused Adam kernel")
    sdpa_backend: str = option("auto", "attention kernel",
                               one_of("auto", *SDPA_BACKENDS))
    sync_bn: bool = option(False, "batch-norm statistics over the global batch (torchrun, GPUs)")
    bn_group: int | None = option(None, "G's batch norms (this package's) normalise a training "
                                  "batch in groups of this many images, as the reference's 64 "
                                  "per GPU; null: the whole batch of a process", at_least(1))
    deterministic: bool = option(False, "deterministic kernels: a resumed run repeats bit for bit")
    ema_decay: float | None = option(None, "BigGAN-style EMA of G, preferred for sampling; null: "
                                     "none (BigGAN: 0.9999)", between(0, 1, low_open=True,
                                                                      high_open=True))
    ema_start: int = option(0, "steps before which the EMA is a plain copy of G", at_least(0))
    fid_every: int = option(0, "FID of G (its EMA) every k steps to TensorBoard; 0: off",
                            at_least(0))
    fid_n: int = option(5000, "generated images per FID of fid_every", at_least(2))


FAMILY_FIELD = "an argument of the family's nets"
# Far beyond any memory (2^20 channels: 10^13 weights in one 3x3 convolution), yet small enough
# that no layer's size overflows torch's 64-bit sizes, whose error names no key.
WIDTH = between(1, 2**20)
# The rules and help of model fields that families' presets define (each family has its own
# subset); a field not listed here is the family's own and is checked by its builder.
MODEL_FIELDS = {
    "nz": ("noise dimension", WIDTH),
    "ngf": ("G width (channels are multiples of it)", WIDTH),
    "ndf": ("D width", WIDTH),
    "loss_type": ("adversarial loss", one_of("gan", "ns", "hinge", "wasserstein")),
    "attention": ("feature-map size of the attention layers of G and D; null: 16 at 32 px, "
                  "else 32; 64 at 128 px: the paper's feat64; 0: none", at_least(0)),
    "g_attention": ("G's attention alone, overriding attention", at_least(0)),
    "d_attention": ("D's attention alone", at_least(0)),
    "bn_decay": ("running-statistics decay of G's conditional batch norms",
                 between(0, 1, high_open=True)),
    "bn_out_decay": ("of G's last batch norm", between(0, 1, high_open=True)),
    "num_classes": ("classes; null: the data set's; 0: unconditional", at_least(0)),
    "resolution": ("always the data set's (data.resolution)", None),
    "name": ("the family: chosen with model=NAME, not as model.name", None),
}


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
    check_tokens(argv)
    chosen = {"model": DEFAULT_MODEL, "data": DEFAULT_DATA}
    overrides = []
    for token in argv:
        key, _, value = token.partition("=")
        if key in SELECTORS:
            chosen[key] = value
        else:
            overrides.append(token)
    cfg, family = _presets(chosen["model"], chosen["data"])
    _merge(cfg, run_overrides(overrides, cfg), "override")
    _configure_data(cfg)
    _derive(cfg, family)
    return cfg


def compose_data(name: str, fields: Mapping[str, Any] | None = None) -> DictConfig:
    """The data section alone, as `compose` makes it from data=NAME and data.KEY=VALUE (for
    scoring real images with no model). fields: {"root": "/data", ...}."""
    dataset = get_dataset(name)
    cfg = OmegaConf.create({"data": OmegaConf.structured(DataConfig(name=name))})
    OmegaConf.set_struct(cfg, True)
    _merge(cfg, {"data": dict(dataset.defaults)}, f"preset of data {name}")
    _merge(cfg, {"data": dict(fields or {})}, "data fields")
    _configure_data(cfg)
    validate(cfg.data, DataConfig, "data.")
    return cfg.data


def _configure_data(cfg: DictConfig) -> None:
    """The data set's split checked, then the data fields that follow from its files (a
    folder's classes)."""
    _check_split(cfg.data)
    configure = get_dataset(cfg.data.name).configure
    if configure is not None:
        _merge(cfg, {"data": configure(cfg.data)}, f"data {cfg.data.name}")


def _check_split(data: DictConfig) -> None:
    if data.split in SPLITS:  # another value is the schema's to refuse, as any bad value
        get_dataset(data.name).check_split(data.split)


def run_key_lines(selectors: list[str]) -> list[str]:
    """--help of train: every key of the run configuration with its default (the presets'
    for the chosen model and data set) and what it is."""
    cfg = compose(selectors)
    family = get_model(cfg.model.name)
    lines = [f"  model.* of family {family.name} (model=NAME --help: another family's):"]
    lines += [key_line(f"model.{key}", value, *MODEL_FIELDS.get(key, (FAMILY_FIELD, None)))
              for key, value in cfg.model.items()]
    lines += field_lines(DataConfig, cfg.data, "data.")
    lines += field_lines(TrainConfig, cfg.train, "train.")
    lines.append(key_line("run_dir", cfg.run_dir, "the run folder"))
    return lines


def compose_saved(saved: Any, source: str, overrides: Sequence[str] = ()) -> DictConfig:
    """A run's saved configuration (config.yaml's content), with `key=value` overrides on
    top, checked as `compose` checks the command line; errors name `source`."""
    names = {}
    for section in SELECTORS:
        node = saved.get(section) if isinstance(saved, dict) else None
        names[section] = node.get("name") if isinstance(node, dict) else None
        if not isinstance(names[section], str):
            raise UsageError(f"{source} is not a run configuration: it needs a {section} "
                             f"section with a name")
    if "train" in saved and not isinstance(saved["train"], dict):  # null would erase it
        raise UsageError(f"{source} is not a run configuration: its train section must be a "
                         f"mapping of keys, got {saved['train']!r}")
    try:
        cfg, family = _presets(names["model"], names["data"])
        _merge(cfg, saved, source)
    except UsageError as error:
        message = str(error)
        raise UsageError(message if source in message else f"{source}: {message}") from None
    _merge(cfg, run_overrides(overrides, cfg), "override")
    try:
        _derive(cfg, family)
    except UsageError as error:
        where = f"{source} with the overrides" if overrides else source
        message = str(error)
        raise UsageError(message if source in message else f"{where}: {message}") from None
    return cfg


def _presets(model: str, data: str) -> tuple[DictConfig, ModelFamily]:
    """The typed configuration of a family and a data set with their presets applied."""
    family = get_model(model)
    dataset = get_dataset(data)  # an unknown name lists the known ones
    cfg = OmegaConf.create({
        "model": OmegaConf.structured(_model_schema(family)),
        "data": OmegaConf.structured(DataConfig(name=data)),
        "train": OmegaConf.structured(TrainConfig()),
        "run_dir": StringNode(None),  # a path (typed, as every key); null: runs/<model>_<data>
    })
    _merge(cfg, {"model": family.defaults.get("model", {}),
                 "train": family.defaults.get("train", {})}, f"preset of model {family.name}")
    _merge(cfg, {"data": dict(dataset.defaults)}, f"preset of data {data}")
    OmegaConf.set_struct(cfg, True)
    return cfg, family


def _merge(cfg: DictConfig, values: Any, source: str) -> None:
    try:
        cfg.merge_with(values)
        # Interpolations (key=${other}) resolve here, not when a value is first read: a
        # missing key or a value of the wrong type is then an error like any bad value.
        OmegaConf.resolve(cfg)
    except ConfigKeyError as error:
        section = error.full_key.rpartition(".")[0]
        node = OmegaConf.select(cfg, section) if section else cfg
        known = ", ".join(str(k) for k in node) if isinstance(node, DictConfig) else ""
        meant = [f"{name}.{error.full_key}" for name, sub in cfg.items()
                 if not section and isinstance(sub, DictConfig) and error.full_key in sub]
        raise UsageError(f"unknown key {error.full_key!r} in {source}"
                         + (f" (did you mean {' or '.join(meant)}?)" if meant else "")
                         + (f"; keys of {section or 'the top level'}: {known}" if known else "")
                         ) from None
    except OmegaConfBaseException as error:  # a wrong type, a mapping for a list, ${nope}
        key = error.full_key or " or ".join(_mappings_for_values(cfg, values)) or "a key"
        raise UsageError(f"bad value for {key} in {source}: "
                         f"{error.msg.splitlines()[0]}") from None


def _mappings_for_values(cfg: DictConfig, values: Any, prefix: str = "") -> list[str]:
    """The keys that `values` gives a mapping where cfg has no section (OmegaConf's error for
    one, data.classes={a:1}, names no key)."""
    keys = []
    for key, value in (values.items() if isinstance(values, Mapping | DictConfig) else ()):
        if isinstance(value, Mapping | DictConfig):
            name = f"{prefix}{key}"
            if isinstance(OmegaConf.select(cfg, name), DictConfig):
                keys += _mappings_for_values(cfg, value, f"{name}.")
            else:
                keys.append(name)
    return keys


def _derive(cfg: DictConfig, family: ModelFamily) -> None:
    """Check every field's range, fill the fields that follow from others, and refuse
    combinations that cannot train."""
    model, data, train = cfg.model, cfg.data, cfg.train
    validate(data, DataConfig, "data.")
    validate(train, TrainConfig, "train.")
    for key, (_, rule) in MODEL_FIELDS.items():
        if key in model:
            check(f"model.{key}", model[key], rule)
    if model.resolution is not None and model.resolution != data.resolution:
        raise UsageError(f"model.resolution={model.resolution} does not match data {data.name} "
                         f"({data.resolution}x{data.resolution}): a model has its data's")
    model.resolution = data.resolution
    if model.resolution not in family.resolutions:
        raise UsageError(f"model {family.name} does not support {model.resolution}x"
                         f"{model.resolution} images (data {data.name}); supported: "
                         f"{', '.join(map(str, family.resolutions))}")
    if model.num_classes is None:
        model.num_classes = 0 if family.conditional is False else data.num_classes
    if model.num_classes and model.num_classes != data.num_classes:
        where = f" at {data.root}" if data.root else ""
        use = (f"; use {data.num_classes} or 0" if data.num_classes else
               ": it has no labels, use 0")
        raise UsageError(f"model.num_classes={model.num_classes} does not match data {data.name}"
                         f"{where} ({data.num_classes} classes){use}")
    if family.conditional and not model.num_classes:
        raise UsageError(f"model {family.name} is class-conditional but data {data.name} "
                         "has no labels")
    if family.conditional is False and model.num_classes:
        raise UsageError(f"model {family.name} is unconditional: model.num_classes must be 0")
    if train.batch_size is None:
        train.batch_size = family.defaults.get("batch_size", {}).get(model.resolution, 64)
    if cfg.run_dir is None:
        cfg.run_dir = f"runs/{family.name}_{data.name}"


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
            if k not in MODEL_INFO_KEYS}


def build_models(cfg: DictConfig) -> tuple[nn.Module, nn.Module]:
    """(netG, netD) for a composed configuration, through the family registry."""
    family = get_model(cfg.model.name)
    try:
        return family.build(cfg.model.resolution, cfg.model.num_classes, **arch_kwargs(cfg.model))
    except (ValueError, TypeError) as error:  # torch's may add its C++ frames: one line
        raise UsageError(f"cannot build model {family.name}: {first_line(error)}") from None
    except RuntimeError as error:  # the allocator's "can't allocate memory", and OOM on GPUs
        if "allocate" not in str(error):
            raise
        raise UsageError(f"cannot build model {family.name}: its weights do not fit in memory "
                         "(lower model.ngf / model.ndf)") from None
