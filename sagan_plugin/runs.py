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

import errno
import fcntl
import os
import pickle
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

from sagan_plugin.config import (
    MODEL_INFO_KEYS,
    SELECTORS,
    build_models,
    compose,
    compose_saved,
    dotlist,
)
from sagan_plugin.errors import UsageError, first_line
from sagan_plugin.nets.layers import refresh_spectral_norm

CONFIG_FILE = "config.yaml"
MIMICRY_PARAMS = "params.json"  # what Mimicry's Trainer writes (ours too)
CHECKPOINT_KEYS = ("model_state_dict", "optimizer_state_dict", "global_step")
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
        changes = OmegaConf.to_container(dotlist(run_tokens))  # data.root= for moved data
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


class CorruptCheckpoint(UsageError):
    """A checkpoint file that cannot be read back whole, or is not a checkpoint."""


def read_checkpoint(path: Path) -> dict:
    """A checkpoint in Mimicry's format (a dict with the weights, optimizer and step)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated zip, a foreign pickle, an empty file...
        if isinstance(error, OSError) and error.errno != errno.EINVAL:
            reason = error.strerror or str(error)  # not allowed to read it, a folder...
        elif isinstance(error, pickle.UnpicklingError | KeyError):  # torch's text would advise
            reason = "not tensors and plain values (a damaged file, or another kind of file)"
        else:  # torch's zip reader, or EINVAL from its seek before the start of a cut file
            reason = f"a damaged or incomplete file ({first_line(error).split('. ')[0]})"
        raise CorruptCheckpoint(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(ckpt, dict):
        raise CorruptCheckpoint(f"{path} is not a checkpoint: it holds a "
                                f"{type(ckpt).__name__}, not Mimicry's dict of weights and step")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise CorruptCheckpoint(f"{path} is not a checkpoint: it has no {', '.join(missing)}")
    if not isinstance(ckpt["model_state_dict"], dict) or not isinstance(ckpt["global_step"], int):
        raise CorruptCheckpoint(f"{path} is not a checkpoint: model_state_dict must be a dict "
                                "and global_step an integer")
    return ckpt


def state_dict_mismatch(error: RuntimeError) -> str:
    """What load_state_dict reports, shortened to one line: each kind of difference with its
    first key and a count (a net of another size lists hundreds of keys)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    parts, size_mismatches = [], [line for line in lines if line.startswith("size mismatch")]
    for line in lines[1:]:
        kind, _, listed = line.partition(" in state_dict: ")
        keys = re.findall(r'"([^"]+)"', listed)
        if keys:  # Missing key(s) / Unexpected key(s)
            parts.append(f"{kind.split()[0].lower()} {len(keys)} key(s): {keys[0]}"
                         + (", ..." if len(keys) > 1 else ""))
    if size_mismatches:
        more = f" ({len(size_mismatches)} in all)" if len(size_mismatches) > 1 else ""
        parts.append(size_mismatches[0].rstrip(".") + more)
    return "; ".join(parts) or " ".join(lines[:2])


def check_model_info(ckpt: dict, expected: dict, path: Path) -> None:
    """A checkpoint that records its model (family, resolution, classes) must be `expected`."""
    saved = ckpt.get("model")
    if saved and expected and saved != expected:
        found = ", ".join(f"{k}={saved.get(k)!r}" for k in expected)
        wanted = ", ".join(f"{k}={v!r}" for k, v in expected.items())
        raise UsageError(f"{path} is a checkpoint of another model ({found}); expected {wanted}")


def load_weights(netG: nn.Module, ckpt: dict, ema: bool) -> None:
    """Load a checkpoint's weights of G, or of its EMA, into netG. A net of another shape
    raises load_state_dict's RuntimeError."""
    netG.load_state_dict(ckpt["ema_state_dict"] if ema else ckpt["model_state_dict"])
    if ema:  # the EMA weights normalised by their own sigma, converged once more
        refresh_spectral_norm(netG, EMA_POWER_ITERATIONS)


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
        step_read = _STEP.search(ckpt_file.name)
        earlier = [s for s in checkpoint_steps(run_dir)
                   if step_read and s < int(step_read.group(1))]
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
