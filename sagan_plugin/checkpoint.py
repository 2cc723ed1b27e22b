"""Crash-safe checkpoints in Mimicry's layout, with what an exact resume needs.

    checkpoints/netG/netG_<step>_steps.pth   model_state_dict, optimizer_state_dict, global_step,
                                             ema_state_dict (when train.ema_decay is set),
                                             model (family, resolution, classes),
                                             training_state (below)
    checkpoints/netD/netD_<step>_steps.pth   model_state_dict, optimizer_state_dict, global_step

training_state holds the random-number states of every rank and the data position (epoch,
batches read), so a resumed run draws the same noise and sees the same batches. Files are written
to a temporary name, fsynced and renamed: a crash leaves the previous checkpoint whole. netD is
written before netG, and a step counts only when both files are there and readable; a truncated
or corrupt latest step is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from sagan_plugin.files import write_atomically
from sagan_plugin.runs import CorruptCheckpoint, checkpoint_path, checkpoint_steps, read_checkpoint

NETS = ("netD", "netG")  # the order they are written in


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
            warnings.warn(f"skipping {reason}", stacklevel=2)
        return step, pair
    if steps:
        raise CorruptCheckpoint(f"none of the checkpoints in {run_dir / 'checkpoints'} can be "
                                f"read; the latest, {skipped[0]}")
    partial = sorted({s for net in NETS for s in checkpoint_steps(run_dir, net)})
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
