"""This machine: the description every measurement is stored with (device, versions, commit),
and the memory a command may count on."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from sagan_plugin.errors import UsageError


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe(device: torch.device) -> dict:
    """CPU model, cores, torch and Python versions, and the GPU when there is one (with whether
    its float32 convolutions and matrix products may round to TF32)."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), cuda=torch.version.cuda,
                    # what "fp32" means there: torch lets cuDNN's convolutions use TF32
                    tf32_convolutions=_tf32(torch.backends.cudnn, torch.backends.cudnn.conv),
                    tf32_matmul=_tf32(torch.backends.cuda.matmul, torch.backends.cuda.matmul))
    return info


def _tf32(legacy: object, backend: object) -> bool | str:
    """A backend's allow_tf32; its fp32_precision ("tf32", "ieee") where that was set, as
    torch then refuses to read allow_tf32."""
    try:
        return legacy.allow_tf32
    except RuntimeError:
        return backend.fp32_precision


def git_commit(folder: str | Path = ".") -> str | None:
    """The checkout's commit, with "-dirty" when tracked files differ from it. Outside git (a
    copy of the tree, as on a lent GPU machine) it is $SAGAN_COMMIT, else None."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no")
                         else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SAGAN_COMMIT") or None


def available_memory() -> int:
    """Bytes of memory this process could still take (MemAvailable; free pages elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def require_memory(nbytes: int, what: str) -> None:
    """Refuse, before any work, what would not fit in memory (half of what is available)."""
    available = available_memory()
    if nbytes > available // 2:
        raise UsageError(f"{what} needs about {nbytes / 2**30:.3g} GiB of memory, more than half "
                         f"of the {available / 2**30:.3g} GiB this machine has free")
