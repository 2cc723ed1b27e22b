"""Run folders: what a training run leaves on disk, and loading a generator back from it.

    <run_dir>/config.yaml                               the resolved configuration
    <run_dir>/checkpoints/net{G,D}/net{G,D}_<step>_steps.pth   Mimicry's checkpoint format
    <run_dir>/data/                                     TensorBoard logs
    <run_dir>/images/                                   sample grids
    <run_dir>/train.lock                                who is training it (RunLock)

A folder of Mimicry's own Trainer has the same checkpoints and a params.json but no
config.yaml: the commands that read runs take its model=NAME, data=NAME (and model.*) instead.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sagan_plugin.checkpoint import (
    CorruptCheckpoint,
    check_model_info,
    checkpoint_dir,
    checkpoint_path,
    checkpoint_steps,
    load_weights,
    read_checkpoint,
    state_dict_mismatch,
    step_of,
)
from sagan_plugin.config import (
    MODEL_INFO_KEYS,
    DataConfig,
    build_models,
    compose,
    compose_saved,
)
from sagan_plugin.errors import UsageError, first_line, warn
from sagan_plugin.overrides import SELECTORS, run_overrides

CONFIG_FILE = "config.yaml"
MIMICRY_PARAMS = "params.json"  # what Mimicry's Trainer writes (ours too)


@dataclass
class LoadedGenerator:
    netG: nn.Module  # in eval mode
    config: DictConfig
    step: int
    ema: bool  # whether the weights are the EMA of G's


def read_run_config(path: Path) -> dict:
    """config.yaml as plain data; a file that is not a YAML mapping is a UsageError."""
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = getattr(error, "strerror", None) or first_line(error)
        raise UsageError(f"cannot read {path}: {reason}") from None
    if not isinstance(saved, dict):
        raise UsageError(f"{path} is not a run configuration: expected a mapping of sections, "
                         f"got {type(saved).__name__}")
    return saved


def split_run_tokens(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(a command's own key=value tokens, those that describe the run: model=, data=, model.*,
    data.*). The latter configure a run folder of Mimicry's own Trainer, which has no
    config.yaml, and for eval override the data section of any run."""
    run = [t for t in argv if t.split("=", 1)[0].split(".", 1)[0] in SELECTORS]
    return [t for t in argv if t not in run], run


def is_mimicry_run(run_dir: str | Path) -> bool:
    """A folder written by Mimicry's own Trainer: its params.json, no config.yaml."""
    return (Path(run_dir) / MIMICRY_PARAMS).is_file() and not (
        Path(run_dir) / CONFIG_FILE).is_file()


def mimicry_settings(run_dir: str | Path) -> dict[str, object]:
    """What Mimicry's Trainer recorded in a folder's params.json that training depends on, by
    this package's keys: the batch, D steps, decay, and the Adams' rates and betas (parsed from
    their repr; the implementation flags there, fused or foreach, may change)."""
    path = Path(run_dir) / MIMICRY_PARAMS
    try:
        params = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}"
                         ) from None
    if not isinstance(params, dict):
        raise UsageError(f"{path} is not Mimicry's params.json: expected a mapping")
    settings = {key: params[name] for name, key in (("batch_size", "train.batch_size"),
                                                    ("n_dis", "train.n_dis"),
                                                    ("lr_decay", "train.lr_decay"))
                if name in params}
    for opt, rate in (("optD", "train.lr_d"), ("optG", "train.lr_g")):
        adam = dict(re.findall(r"^\s*(\w+): (.+)$", str(params.get(opt, "")), re.MULTILINE))
        with contextlib.suppress(KeyError, ValueError, SyntaxError):
            settings[rate] = float(adam["lr"])
            settings["train.beta1"], settings["train.beta2"] = ast.literal_eval(adam["betas"])
    return settings


def load_run_config(run_dir: str | Path, run_tokens: Sequence[str] = ()) -> DictConfig:
    """A run folder's configuration, checked as the command line is. A folder of Mimicry's own
    Trainer has none: `run_tokens` (model=NAME data=NAME model.ngf=...) say what it trained."""
    path = Path(run_dir) / CONFIG_FILE
    if path.is_file():
        fixed = [t for t in run_tokens if not t.startswith("data.")]
        if fixed:
            raise UsageError(f"the model and data set of {run_dir} are the ones in {path}: "
                             f"leave out {' '.join(fixed)} (data.KEY=VALUE may change a key)")
        saved = read_run_config(path)
        if not run_tokens:
            return compose_saved(saved, str(path))
        sections = OmegaConf.create({"data": OmegaConf.structured(DataConfig)})  # their types
        changes = OmegaConf.to_container(run_overrides(run_tokens, sections))  # moved data
        saved["data"] = {**(saved.get("data") or {}), **changes["data"]}
        return compose_saved(saved, f"{path} with {' '.join(run_tokens)}")
    if not any(t.startswith("model=") for t in run_tokens):
        kind = "a run of Mimicry's own Trainer" if is_mimicry_run(run_dir) else "not a run folder"
        raise UsageError(f"{run_dir} has no {CONFIG_FILE} ({kind}): give the model=NAME and "
                         "data=NAME it was trained with, and any model.* it was built with")
    return compose([*run_tokens, f"run_dir={run_dir}"])


def resolve_checkpoint(path: str | Path, step: int | None = None) -> tuple[Path, Path]:
    """(run folder, netG checkpoint) for a run folder (latest or given step) or a checkpoint."""
    path = Path(path)
    if path.is_file():
        if path.parent.parent.name == "checkpoints" and path.parent.name == "netD":
            raise UsageError(f"{path} is a discriminator checkpoint: give the run folder or its "
                             f"netG checkpoint (in {checkpoint_dir(path.parents[2])})")
        if path.parent.parent.name != "checkpoints" or path.parent.name != "netG":
            raise UsageError(f"{path} is not a netG checkpoint of a run folder: expected "
                             "RUN/checkpoints/netG/netG_<step>_steps.pth, or the run folder")
        if step is not None and step != step_of(path):  # else step= would be ignored
            raise UsageError(f"{path} is one checkpoint file: leave out step={step} (it picks "
                             f"a checkpoint of a run folder: run={path.parents[2]})")
        return path.parents[2], path
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


def load_generator(path: str | Path, step: int | None = None, prefer_ema: bool = True,
                   device: str | torch.device = "cpu",
                   run_tokens: Sequence[str] = ()) -> LoadedGenerator:
    """Rebuild a run's generator through the registry and load its weights (EMA if present).

    run_tokens: model=NAME data=NAME ... for a folder of Mimicry's own Trainer."""
    run_dir, ckpt_file = resolve_checkpoint(path, step)
    config = load_run_config(run_dir, run_tokens)
    netG, _ = build_models(config)
    try:
        ckpt = read_checkpoint(ckpt_file)
    except CorruptCheckpoint as error:
        step_read = step_of(ckpt_file)
        earlier = [s for s in checkpoint_steps(run_dir) if step_read and s < step_read]
        if not earlier:
            raise
        raise CorruptCheckpoint(f"{error}; step={earlier[-1]} reads the one before it") from None
    check_model_info(ckpt, {k: config.model[k] for k in MODEL_INFO_KEYS}, ckpt_file)
    use_ema = prefer_ema and ckpt.get("ema_state_dict") is not None
    try:
        load_weights(netG, ckpt, use_ema)
    except RuntimeError as error:
        model = config.model
        hint = (" (give the data.resolution=, model.ngf= and model.ndf= it was trained with)"
                if is_mimicry_run(run_dir) else "")
        raise UsageError(f"checkpoint {ckpt_file} does not fit model={model.name} at "
                         f"{model.resolution}x{model.resolution} with {model.num_classes} "
                         f"classes: {state_dict_mismatch(error)}{hint}") from None
    broken = [name for name, tensor in netG.state_dict().items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:  # training stops at a NaN loss, but a checkpoint may come from elsewhere
        warn(f"{ckpt_file}: {len(broken)} of G's tensors hold NaN or inf ({broken[0]}"
             f"{', ...' if len(broken) > 1 else ''}), so its images mean nothing (did the "
             "run diverge?)")
    return LoadedGenerator(netG.to(device).eval(), config, int(ckpt["global_step"]), use_ema)


LOCK_FILE = "train.lock"


class RunLock:
    """One writer per run folder: an advisory lock on <run_dir>/train.lock, which names its
    holder while held. The kernel drops it when the process dies, so even a SIGKILL leaves no
    stale lock. The file is never removed: a process could hold a lock on the removed file
    while another locks a new one."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._file = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")  # noqa: SIM115 - held open for the whole run
        except OSError as error:
            raise UsageError(f"cannot write to run folder {self.path.parent}: "
                             f"{error.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(f"run folder {self.path.parent} is being trained by {holder}; "
                             "wait for it to finish or stop it, or use another run_dir") from None
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()} (since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            # The holder's name is true only while held: emptied, a run refused on resuming
            # leaves the file as the last run left it.
            try:
                self._file.truncate(0)
            finally:
                self._file.close()  # closing releases the lock
                self._file = None
