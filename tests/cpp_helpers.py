"""Shared by the tests of the C++ sampler: running the program and the module, and what a
clean refusal looks like."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BUILD = Path(__file__).resolve().parents[1] / "cpp" / "build"
PROGRAM = BUILD / "sagan_sample"
MODELS = {"torchscript": "generator.pt", "aoti": "generator.pt2"}


def run_program(*args: object, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROGRAM), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def assert_clean_error(result: subprocess.CompletedProcess, message: str = "") -> None:
    """Exit 2 with exactly one line `error: ...` on stderr: no crash, no backtrace."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]


def run_ext(script: str) -> list[str]:
    """Runs `script` with sagan_sample_ext as E in a fresh Python, which an abort cannot take
    down with the tests; returns its output lines."""
    result = subprocess.run(
        [sys.executable, "-c", "import torch, sagan_sample_ext as E\n" + script],
        capture_output=True, text=True, timeout=300,
        env=os.environ | {"PYTHONPATH": str(BUILD)})
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    return result.stdout.splitlines()


# Defines error(f) in a run_ext script: prints the exception's type, its line count, its first line.
ERROR_LINE = """
def error(f):
    try:
        f()
        print("no error")
    except Exception as e:
        print(type(e).__name__, len(str(e).splitlines()), str(e).splitlines()[0])
"""
