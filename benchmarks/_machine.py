"""What every benchmark shares: the machine's description, timing, the bf16 matmul rate, output.

Benchmarks import it as a sibling module (`python benchmarks/bench_x.py` puts this folder first
on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from sagan_plugin import files
from sagan_plugin.machine import cpu_model, describe, git_commit  # noqa: F401  (benchmarks use them)

RESULTS = Path(__file__).resolve().parent / "results"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int,
                   warmup: int = 2) -> float:
    """Median wall time of fn() over `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bf16_matmul_flops(device: torch.device, size: int | None = None, repeats: int = 10) -> float:
    """The measured bf16 matrix-multiply rate (FLOP/s), the denominator of MFU."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    seconds = median_seconds(lambda: a @ b, device, repeats)
    return 2 * size**3 / seconds


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if n and _numeric(c) else c.ljust(w)
                        for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _numeric(cell: str) -> bool:
    try:
        float(cell.rstrip("x%"))
    except ValueError:
        return False
    return True


def last_error_line(done: subprocess.CompletedProcess) -> str:
    """What a failed child said last on stderr; how it ended when it said nothing (a crash)."""
    return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]


def write_json(path: str | Path, payload: dict) -> None:
    """payload plus what reproduces it: the commit, the command line and the date. Written
    whole or not at all: an interrupted benchmark leaves the previous results in place."""
    path = Path(path)
    payload = {**payload, "commit": git_commit(Path(__file__).parent),
               "command": shlex.join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d")}
    files.write_json(path, payload)
    print(f"wrote {path}")


_so_far: tuple[Path, Callable[[], dict | None]] | None = None


def keep_if_interrupted(path: str | Path, so_far: Callable[[], dict | None] | None) -> None:
    """Should the benchmark be interrupted, write `so_far()` (its rows until then; None: none
    yet) to `path`, marked "interrupted", unless `path` already holds results: an interrupted
    run never replaces a finished one. The GPU suite's stages end by a timeout's SIGINT.
    so_far=None: the benchmark rewrites `path` itself after every step (cpp_check, which marks
    it interrupted until its last), so an interrupt only says where it is."""
    global _so_far
    _so_far = (Path(path), so_far)


def run_main(main: Callable[[], object]) -> None:
    """Run a benchmark's main; an interrupt (Ctrl-C, or the GPU suite's `timeout -s INT`) ends it
    with one line and exit 130 instead of a traceback that buries the log's last lines."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _stop_children()
        kept = _keep_what_was_measured()
        print(f"stopped: {Path(sys.argv[0]).name} was interrupted before it finished; " +
              (f"what it measured is in {kept}" if kept else "it wrote no JSON"),
              file=sys.stderr)
        sys.exit(130)


def _keep_what_was_measured() -> Path | None:
    if _so_far is None:
        return None
    path, so_far = _so_far
    if so_far is None:
        return path if path.exists() else None
    if path.exists():
        return None
    payload = so_far()
    if payload is None:
        return None
    write_json(path, {**payload, "interrupted": True})
    return path


def _stop_children() -> None:
    """Kill and reap the processes this one started. subprocess.run kills its child when
    interrupted, but not one that Popen has forked and not yet returned: signalled then, a
    benchmark would leave its measuring child running on, holding the device (Linux's /proc)."""
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in map(int, children.read_text().split()):
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
