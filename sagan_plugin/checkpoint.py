"""Checkpoint files in Mimicry's layout: crash-safe writes, with what an exact resume needs,
and checked reads.

    checkpoints/netG/netG_<step>_steps.pth   model_state_dict, optimizer_state_dict, global_step,
                                             ema_state_dict (when train.ema_decay is set),
                                             model (family, resolution, classes),
                                             training_state (below)
    checkpoints/netD/netD_<step>_steps.pth   model_state_dict, optimizer_state_dict, global_step

Reading one back (read_checkpoint) tells a damaged file from a foreign one, in one line, and
checks the model a checkpoint records against the one it is loaded into.

training_state holds the random-number states of every rank and the data position (epoch,
batches read), so a resumed run draws the same noise and sees the same batches. Files are written
to a temporary name, fsynced and renamed: a crash leaves the previous checkpoint whole. netD is
written before netG, and a step counts only when both files are there and readable; a truncated
or corrupt latest step is skipped with a warning, and so is a lone netD of a run killed while
writing its first checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sagan_plugin.errors import UsageError, first_line, warn
from sagan_plugin.files import write_atomically
from sagan_plugin.nets.layers import refresh_spectral_norm

NETS = ("netD", "netG")  # the order they are written in
CHECKPOINT_KEYS = ("model_state_dict", "optimizer_state_dict", "global_step")
EMA_POWER_ITERATIONS = 30
_STEP = re.compile(r"_(\d+)_steps\.pth$")


def checkpoint_dir(run_dir: str | Path, net: str = "netG") -> Path:
    return Path(run_dir) / "checkpoints" / net


def checkpoint_path(run_dir: str | Path, step: int, net: str = "netG") -> Path:
    return checkpoint_dir(run_dir, net) / f"{net}_{step}_steps.pth"


def checkpoint_steps(run_dir: str | Path, net: str = "netG") -> list[int]:
    """The training steps that have a checkpoint of net, ascending."""
    folder = checkpoint_dir(run_dir, net)
    if not folder.is_dir():
        return []
    return sorted(step for p in folder.iterdir() if (step := step_of(p)) is not None)


def step_of(path: Path) -> int | None:
    """The step a checkpoint file's name gives (net?_<step>_steps.pth); None if it has none."""
    match = _STEP.search(Path(path).name)
    return int(match.group(1)) if match else None


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
    wrong = [key for key in ("optimizer_state_dict", "ema_state_dict", "model")
             if not isinstance(ckpt.get(key), dict | None)]
    if wrong:
        raise CorruptCheckpoint(f"{path} is not a checkpoint: {', '.join(wrong)} must be a dict "
                                f"(or null), got {type(ckpt[wrong[0]]).__name__}")
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


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to path through a temporary file: path is either the old or the new file."""
    write_atomically(path, lambda f: torch.save(obj, f), durable=True)


def save_pair(run_dir: Path, step: int, checkpoints: dict[str, dict]) -> None:
    """Write one step's netD then netG checkpoint; on failure drop the half-written step.

    A step that already had both files (a finished run started again, a stop on a save step)
    keeps them: each file is the old one or the new one, of the same step's state."""
    existed = step in complete_steps(run_dir)
    try:
        for net in NETS:
            atomic_save(checkpoints[net], checkpoint_path(run_dir, step, net))
    except BaseException:
        if not existed:
            for net in NETS:
                with contextlib.suppress(OSError):
                    checkpoint_path(run_dir, step, net).unlink()
        raise


def complete_steps(run_dir: Path) -> list[int]:
    """Steps with both a netG and a netD file, ascending."""
    return sorted(set(checkpoint_steps(run_dir, "netG")) & set(checkpoint_steps(run_dir, "netD")))


def last_checkpoint_said(run_dir: Path) -> str:
    """'the last checkpoint is step N' or 'no checkpoint', for the message that stops a run."""
    steps = complete_steps(run_dir)
    return f"the last checkpoint is step {steps[-1]}" if steps else "no checkpoint"


def load_latest(run_dir: Path) -> tuple[int, dict[str, dict]] | None:
    """(step, {net: checkpoint}) of the newest readable step; None when there is none at all.

    Unreadable steps are skipped with a warning; if every step is unreadable it is an error
    (CorruptCheckpoint), not a fresh start that would overwrite the run.
    """
    steps = complete_steps(run_dir)
    skipped = []  # why each newer step could not be used
    for step in reversed(steps):
        try:
            pair = {net: read_checkpoint(checkpoint_path(run_dir, step, net)) for net in NETS}
        except CorruptCheckpoint as error:
            skipped.append(f"the checkpoint of step {step}: {error}")
            continue
        if pair["netG"]["global_step"] != pair["netD"]["global_step"]:
            skipped.append(f"the checkpoint of step {step}: G and D disagree on the step")
            continue
        for reason in skipped:
            warn(f"skipping {reason}")
        return step, pair
    if steps:
        raise CorruptCheckpoint(f"none of the checkpoints in {run_dir / 'checkpoints'} can be "
                                f"read; the latest, {skipped[0]}")
    partial = sorted({s for net in NETS for s in checkpoint_steps(run_dir, net)})
    if len(partial) == 1 and not checkpoint_steps(run_dir, "netG"):
        # netD is written first: a process killed between its first save's two files left it
        warn(f"ignoring {checkpoint_path(run_dir, partial[0], 'netD')}: the first checkpoint "
             "of a run stopped while saving it, without its netG; training starts afresh")
        return None
    if partial:  # starting afresh would write over someone's run
        raise CorruptCheckpoint(f"{run_dir / 'checkpoints'} holds checkpoints of steps "
                                f"{', '.join(map(str, partial))} without both netG and netD "
                                "files: a run cannot resume from them; use another run_dir")
    return None


def rng_state() -> dict:
    """This process's random-number states (torch CPU and GPU, Python, NumPy), as tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _as_tuples(value: object) -> object:
    """random.setstate wants the nested tuples that a round trip may have made lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value
