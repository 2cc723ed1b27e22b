"""Installing the wheel: pip never touches torch nor pulls TensorFlow, and the start-up hook makes
`import torch_mimicry` work in any fresh interpreter, editable install or wheel.

The virtual environments here are fresh ones whose site-packages link (not copy) distributions
of this environment: pip and Python see them as installed there, in a second rather than the
minute that unpacking torch takes. Only the dry-run asks an index (PyPI) for anything.
"""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
OURS = "sagan-plugin"
# What installing this package must never bring: the torch stack and TensorFlow.
FORBIDDEN = re.compile(r"torch|torchvision|torch-mimicry|pytorch-fid|tensorflow.*|keras|triton"
                       r"|nvidia-.*")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_closure(names: Iterable[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions `names` need, themselves included: markers and extras
    followed as pip follows them on this Python (torch 2.11 asks for cuda-toolkit[cudart,...])."""
    found: dict[str, importlib.metadata.Distribution] = {}
    seen: set[tuple[str, str]] = set()
    todo = [(name, "") for name in names]
    while todo:
        name, extra = todo.pop()
        dist = importlib.metadata.distribution(name)
        key = _canonical(dist.metadata["Name"])
        if (key, extra) in seen:
            continue
        seen.add((key, extra))
        found[key] = dist
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, wanted) for wanted in ("", *req.extras)]
    return list(found.values())


def _venv_holding(path: Path, dists: Iterable[importlib.metadata.Distribution]) -> Path:
    """A fresh venv (no pip: this environment's pip drives it with --python) whose site-packages
    links the top-level files and folders that each distribution's RECORD lists."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site = next(path.glob("lib/python*/site-packages"))
    for dist in dists:
        for top in {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}:
            source = Path(dist.locate_file(top))
            if top != "__pycache__" and source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return path / "bin" / "python"


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args],
                          capture_output=True, text=True, check=True)


def _dry_run(python: Path, *args: str) -> list[str]:
    """`pip install --dry-run` of args: the names and versions pip would install."""
    report = json.loads(_pip(python, "install", "--dry-run", "-q", "--report", "-", *args).stdout)
    return [f"{_canonical(i['metadata']['name'])}=={i['metadata']['version']}"
            for i in report["install"]]


def _run(python: Path | str, code: str, timeout: int = 300) -> str:
    """Run code in a fresh interpreter, with no PYTHONPATH and not from the checkout."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    result = subprocess.run([str(python), "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, env=env, cwd="/", timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.strip()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(REPO)], check=True, capture_output=True)
    return next(out.glob("sagan_plugin-*.whl"))


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory, wheel: Path) -> Path:
    """A fresh venv holding everything this one does except this package, which is installed
    there from the wheel (not editable): its .pth and hook come from the wheel alone."""
    others = [d for d in importlib.metadata.distributions(path=[sysconfig.get_path("purelib")])
              if _canonical(d.metadata["Name"]) != OURS]
    python = _venv_holding(tmp_path_factory.mktemp("wheel_env") / "venv", others)
    _pip(python, "install", "--no-deps", "--no-index", "-q", str(wheel))
    return python


@pytest.mark.slow  # resolves this package's requirements against PyPI's index: ~20 s
def test_pip_install_into_a_venv_holding_torch_changes_no_torch_and_pulls_no_tensorflow(
        tmp_path: Path, wheel: Path) -> None:
    python = _venv_holding(tmp_path / "venv", _requirement_closure(["torch"]))
    # The venv holds torch as pip sees it: the same pin needs nothing (offline, no index).
    assert _dry_run(python, "--no-index", f"torch=={importlib.metadata.version('torch')}") == []
    would_install = _dry_run(python, str(wheel))
    assert f"{OURS}==0.1.0" in would_install and any(
        name.startswith("tensorboard==") for name in would_install), would_install
    assert not [n for n in would_install if FORBIDDEN.fullmatch(n.split("==")[0])], would_install


def test_startup_hook_imports_neither_torch_nor_this_package() -> None:
    """Starting Python only installs the watcher: no torch, no sagan_plugin, no compat."""
    out = _run(sys.executable, """
        import sys
        watching = [getattr(f, "__name__", "") for f in sys.meta_path].count("ImportWatcher")
        ours = [m for m in sys.modules if m == "sagan_plugin" or m.startswith("sagan_plugin.")]
        print(watching, "torch" in sys.modules, ours)
    """)
    assert out == "1 False []"


TRAIN_TWO_STEPS = """
    import sys
    import torch_mimicry as mmc  # first, before anything of ours
    assert "sagan_plugin.compat" in sys.modules and "sagan_plugin.host" not in sys.modules
    assert not sys.modules["_sagan_plugin_hook"].installed()  # done: it removed itself
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from sagan_plugin.registry import get_model
    torch.set_num_threads(2)
    torch.manual_seed(0)
    netG, netD = get_model("sagan").build(32, 10, ngf=8, ndf=8)
    data = TensorDataset(torch.rand(8, 3, 32, 32) * 2 - 1, torch.arange(8) % 10)
    optD = torch.optim.Adam(netD.parameters(), 4e-4, betas=(0.0, 0.9))
    optG = torch.optim.Adam(netG.parameters(), 1e-4, betas=(0.0, 0.9))
    trainer = mmc.training.Trainer(netD, netG, optD, optG, DataLoader(data, batch_size=4),
                                   num_steps=2, log_dir=sys.argv[1], device="cpu",
                                   print_steps=1, vis_steps=2, log_steps=1, save_steps=2)
    trainer.train()
    print(sys.modules["sagan_plugin"].__file__)
"""


@pytest.mark.parametrize("env", ["editable", "wheel"])
def test_fresh_interpreter_imports_the_host_and_its_trainer_trains_our_nets(
        request, tmp_path: Path, env: str) -> None:
    python = sys.executable if env == "editable" else request.getfixturevalue("wheel_env")
    log_dir = tmp_path / "log"
    code = TRAIN_TWO_STEPS.replace("sys.argv[1]", repr(str(log_dir)))
    package = Path(_run(python, code).splitlines()[-1])
    assert (log_dir / "checkpoints" / "netG" / "netG_2_steps.pth").is_file()
    # The editable install runs the checkout; the wheel's venv its own copy.
    assert package.is_relative_to(REPO if env == "editable" else Path(python).parents[1])


def test_without_the_host_the_hook_leaves_the_import_error_alone(tmp_path: Path,
                                                                  wheel: Path) -> None:
    """A venv with this package and torch but no host: `import torch_mimicry` fails as usual,
    without importing torch."""
    python = _venv_holding(tmp_path / "venv", _requirement_closure(["torch"]))
    _pip(python, "install", "--no-deps", "--no-index", "-q", str(wheel))
    out = _run(python, """
        import sys
        try:
            import torch_mimicry
        except ModuleNotFoundError as error:
            print(error.name, "torch" in sys.modules)
    """)
    assert out == "torch_mimicry False"
