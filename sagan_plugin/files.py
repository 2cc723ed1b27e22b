"""Files written whole or not at all (a temporary file beside the target, then a rename), and
output folders checked before the work that fills them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from sagan_plugin.errors import UsageError

CACHE_ENV_VAR = "SAGAN_CACHE_DIR"


def cache_dir() -> Path:
    """Where this package keeps what it derives once: converted Inception weights, real-image
    statistics, unpacked Fashion-MNIST."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "sagan_plugin")


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, algorithm).hexdigest()


def walk_files(folder: str | os.PathLike) -> Iterator[str]:
    """The files under folder, in a fixed (sorted, depth-first) order; hidden entries are
    skipped, and linked folders followed once (a link loop would walk forever). Paths are
    strings: ImageNet has 1.28 million files, and a Path each took longer than its stat. They
    start with folder as a Path spells it ("images//" and "./images" as "images")."""
    seen = set()
    for parent, dirs, files in os.walk(str(Path(folder)), followlinks=True):
        seen.add(os.path.realpath(parent))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(parent, d)) not in seen)
        yield from (os.path.join(parent, name) for name in sorted(files)
                    if not name.startswith("."))


def files_fingerprint(root: Path, paths: Iterable[str | Path], contents: bool = False) -> str:
    """A hash of each file's name under root and its size (-1 if it cannot be read), and of its
    bytes if contents: what the real-image statistics cache knows a data set's files by. Sizes
    alone let a copied folder keep its statistics; contents catch a file replaced by another of
    the same size (Fashion-MNIST's idx files all have one size)."""
    digest = hashlib.sha256()
    prefix = os.path.join(root, "")
    for path in paths:
        name = os.fspath(path)
        # The name under root, as Path.relative_to gives it, without a Path per file.
        relative = (name[len(prefix):] if name.startswith(prefix)
                    else Path(name).relative_to(root))
        try:
            size = os.stat(name).st_size
            content = file_digest(Path(name)) if contents else ""
        except OSError:
            size, content = -1, ""
        digest.update(f"{relative}\0{size}{content}\n".encode())
    return digest.hexdigest()


def file_system_error(error: BaseException) -> OSError | None:
    """The OSError behind a failed write, if there is one: torch.save and AOTInductor report a
    full disk or a file-size limit as a RuntimeError raised while handling the OSError."""
    if isinstance(error, OSError):
        return error
    if isinstance(error, RuntimeError) and isinstance(error.__context__, OSError):
        return error.__context__
    return None


@contextlib.contextmanager
def failures_named_by(path: str | Path) -> Iterator[None]:
    """Report a file-system failure inside as one of path, the file being made (not of the
    temporary file that was being written), in an OSError that the CLI prints as one line."""
    try:
        yield
    except BaseException as error:
        failed = file_system_error(error)
        if failed is None:
            raise
        raise OSError(failed.errno, failed.strerror, str(path)) from error


def write_atomically(path: Path, write: Callable[[IO[bytes]], Any],
                     durable: bool = False) -> None:
    """Call write(file) on a temporary file beside path, then rename it to path.

    durable: also fsync the file and the folder, so that the new file survives a power cut
    (checkpoints); without it a crash still leaves the old file or the new one, never half.
    """
    write_together({Path(path): write}, durable)


def write_together(writes: dict[Path, Callable[[IO[bytes]], Any]],
                   durable: bool = False) -> None:
    """write_atomically for several files that belong together (a report): each is written
    to a temporary file beside it first, and only once all are written are they renamed into
    place, in order. A failure while writing (a full disk) leaves every path as it was; a
    rename does not fail where files can be made, unless a folder is in the way, which the
    caller checks first (check_output_file)."""
    staged: dict[Path, str] = {}
    try:
        for path, write in writes.items():
            staged[path] = _write_beside(path, write, durable)
        for path, tmp in staged.items():
            with failures_named_by(path):
                os.replace(tmp, path)
    finally:
        for tmp in staged.values():
            Path(tmp).unlink(missing_ok=True)  # those not renamed, after a failure
    if durable:
        for folder in {path.parent for path in staged}:
            directory = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(directory)  # the renames themselves
            finally:
                os.close(directory)


def _write_beside(path: Path, write: Callable[[IO[bytes]], Any], durable: bool) -> str:
    """write(file) on a new temporary file in path's folder; its name (removed on failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with failures_named_by(path):
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes files private; these are meant to be shared
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return tmp


def json_bytes(payload: dict[str, Any]) -> bytes:
    """How JSON files are written: indented, with a final newline."""
    return json.dumps(payload, indent=2).encode() + b"\n"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomically(path, lambda f: f.write(json_bytes(payload)))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    write_atomically(path, lambda f: np.savez(f, **arrays))


def check_writable(folder: str | Path, what: str = "output directory") -> None:
    """Prove that files can be made in folder, before any long work, creating nothing: a
    missing folder is judged by the nearest folder above it (writers create the rest)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot write to {what} {folder}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(f"cannot write to {what} {folder}: {error.strerror}") from None


def check_output_file(path: str | Path, key: str = "out") -> Path:
    """Prove that a file can be written at path (not a folder; its folder writable) before the
    work that fills it; returns the path."""
    if str(path).endswith(("/", os.sep)):
        raise UsageError(f"{key}={path} names a folder; expected a file path")
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{key}={path} is a folder; expected a file path")
    check_writable(path.parent)
    return path
