import fcntl
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from cpp_helpers import BUILD, PROGRAM
from inception_helpers import converted_weights, with_classifier
from run_helpers import exported_run

REPO = Path(__file__).resolve().parents[1]

# Two cores on CI: keep torch from oversubscribing them when tests spawn processes, and under
# pytest-xdist (`make test`) share the cores among the workers, their children included.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, os.cpu_count() or 1) // _WORKERS)
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


def interruptible() -> None:
    """preexec_fn of a child that a test stops with SIGINT, as a terminal's Ctrl-C would: a
    runner that starts the suite in the background (bash's `&`) leaves SIGINT ignored, and a
    child would inherit that and never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: int = 600, max_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    """Run `python -m sagan_plugin ARGS` and capture its output. max_file_bytes: no file may
    grow past it (RLIMIT_FSIZE), so writes fail as on a full disk."""
    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process

    return subprocess.run([sys.executable, "-m", "sagan_plugin", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})},
                          preexec_fn=limit_files if max_file_bytes is not None else None)


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    """A SAGAN small enough to train on a CPU in seconds, on the procedural data set."""
    return ["model=sagan", "data=procedural", f"run_dir={tmp_path / 'run'}", "model.ngf=8",
            "model.ndf=8", "train.batch_size=4", "data.size=64", "data.num_workers=0"]


@pytest.fixture(scope="session")
def conditional_run(tmp_path_factory) -> Path:
    """A tiny conditional (10 classes) run exported in both formats: one AOTInductor compile
    per session, that is per pytest-xdist worker (test_export, test_cpp*)."""
    return exported_run(tmp_path_factory.getbasetemp(), True, ("torchscript", "aoti"))


@pytest.fixture(scope="session")
def unconditional_run(tmp_path_factory) -> Path:
    return exported_run(tmp_path_factory.getbasetemp(), False, ("torchscript",))


@pytest.fixture(scope="session")
def full_weights(tmp_path_factory) -> Path:
    """Inception weights with a (random) 1008-way classifier, so that IS can be computed."""
    path = tmp_path_factory.mktemp("weights") / "full.pth"
    state = with_classifier(torch.load(converted_weights(), weights_only=True))
    state["fc.weight"] = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0))
    torch.save(state, path)
    return path


@pytest.fixture
def inception_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test's own metric caches, and the converted Inception weights (no download)."""
    monkeypatch.setenv("SAGAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", str(converted_weights()))


@pytest.fixture(scope="session")
def program() -> Path:
    """cpp/ built once per session through the Makefile (a no-op when up to date); one build
    at a time, since pytest-xdist's workers each ask."""
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".pytest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["make", "-s", "cpp"], cwd=REPO, check=True, capture_output=True,
                       timeout=900)
    return PROGRAM


@pytest.fixture(scope="session")
def ext(program: Path) -> ModuleType:
    sys.path.insert(0, str(BUILD))
    import sagan_sample_ext

    return sagan_sample_ext
