"""Files of the evaluation and picture commands, written whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def write_atomically(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call write(file) on a temporary file beside path, then rename it to path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomically(path, lambda f: f.write(json.dumps(payload, indent=2).encode() + b"\n"))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    write_atomically(path, lambda f: np.savez(f, **arrays))
