"""Make torch-mimicry 0.1.16 importable on current PyTorch.

The host was last released in 2022. On torch >= 2.0 its import fails, in this order, on:

1. ``tensorboard`` missing: a declared dependency of this package, nothing to patch.
2. ``import torchvision`` when the torchvision wheel's compiled ops cannot load (the only
   torchvision wheel that pairs with torch 2.13 is a CUDA build): we declare the two operator
   schemas its Python code registers fakes for, and the pure-Python parts then import.
3. ``import tensorflow`` in its TF1 metrics: when TensorFlow is not installed we put a stand-in
   module in ``sys.modules`` that raises a clear error on use. Our evaluators replace those metrics.
   Each of them downloads the Inception graph before it touches TensorFlow, so their first step
   (``inception_utils.create_inception_graph``) raises that error instead, once the module loads.
4. ``from torch._six import PY3`` (removed in torch 2.0): a stand-in with the two names it uses.

And once imported, its FID utilities (``torch_mimicry.metrics.fid.fid_utils``), like pytorch-fid
0.3.0's ``fid_score``, call ``scipy.linalg.sqrtm(..., disp=False)``, which scipy 1.18 (the
release for Python >= 3.12) removed: those two modules are given a ``linalg`` whose ``sqrtm``
takes ``disp`` again (:func:`ensure_sqrtm_takes_disp`).

Each step acts only when its cause is present, so a machine with a real TensorFlow or a working
torchvision is left exactly as it is. :func:`ensure_host_importable` runs before the first
``import torch_mimicry`` of any interpreter of an environment where this package is installed:
``_sagan_plugin_hook`` (started by a .pth file) calls it when the host is first imported, and
every module of this package that touches the host calls it too (``python -S`` skips .pth files).
The hook calls :func:`ensure_sqrtm_takes_disp` when pytorch-fid is first imported.

This distribution does not declare torch, torchvision, the host or pytorch-fid (pip would
replace the user's torch, and the host's metadata pulls TensorFlow); a missing one is reported
with the command that installs it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import re
import sys
import types
from collections.abc import Callable, Sequence

import numpy as np
import torch

_done = False

# The torchvision ops whose schemas its Python side (torchvision/_meta_registrations.py) needs.
_TORCHVISION_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_torchvision_library = None  # kept alive: dropping the Library object would undo the schemas


# What README "Installation with pip alone" has a user run; --no-deps keeps the host's metadata
# (TensorFlow, an unpinned torchvision) out.
HOST_INSTALL = "pip install --no-deps torch-mimicry==0.1.16 pytorch-fid==0.3.0"


def torchvision_install(torch_version: str | None = None) -> str:
    """The command that installs the torchvision release paired with a torch (default: this one)."""
    version = re.match(r"2\.(\d+)\.(\d+)", torch_version or torch.__version__)
    # Since torch 2.0, torch 2.N.p pairs with torchvision 0.(N + 15).p: 2.13.0 with 0.28.0.
    paired = f"0.{int(version[1]) + 15}.{version[2]}" if version else "<the one paired with torch>"
    return f"pip install --no-deps torchvision=={paired}"


def _require(module: str, command: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"{module} is not installed: run `{command}`", name=module)


def ensure_host_importable() -> None:
    """Apply the compatibility steps that this machine needs, once per process."""
    global _done
    if _done:
        return
    hook = sys.modules.get("_sagan_plugin_hook")
    if hook is not None:  # applied now: the watcher must not run this again on our probe below
        hook.uninstall()
    _require("torchvision", torchvision_install())
    _require("torch_mimicry", HOST_INSTALL)
    _import_torchvision()
    _stand_in_for_missing_tensorflow()
    _stand_in_for_torch_six()
    ensure_sqrtm_takes_disp()
    _done = True


def _import_torchvision() -> None:
    try:
        importlib.import_module("torchvision")
        return
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    # A failed import leaves half-initialised modules behind; drop them before retrying.
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    _declare_torchvision_schemas()
    importlib.import_module("torchvision")


def _declare_torchvision_schemas() -> None:
    global _torchvision_library
    _torchvision_library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
    for schema in _TORCHVISION_SCHEMAS.values():
        _torchvision_library.define(schema)


def declared_torchvision_schemas() -> bool:
    """Whether this process had to declare torchvision's operator schemas itself."""
    return _torchvision_library is not None


TF_METRICS_UNAVAILABLE = (
    "TensorFlow is not installed: torch-mimicry's TF metrics are unavailable; use "
    "sagan_plugin.metrics.evaluate (the same arguments) or `sagan-plugin eval` (pytorch-fid's "
    "Inception, offline) for FID/KID/IS")
# Where every TF metric of the host starts: it downloads the Inception graph, then uses TF.
INCEPTION_GRAPH_MODULE = "torch_mimicry.metrics.inception_model.inception_utils"


class TensorFlowUnavailable(AttributeError):
    """An attribute of the TensorFlow stand-in was used.

    An AttributeError, so that libraries probing `sys.modules["tensorflow"].is_tensor` (as
    matplotlib does) see no TensorFlow instead of crashing.
    """


class _MissingTensorFlow(types.ModuleType):
    """Stands in for TensorFlow: importable, but any use says what to do instead."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise TensorFlowUnavailable(TF_METRICS_UNAVAILABLE)


def _no_inception_graph(inception_path: str | None = None) -> None:
    raise TensorFlowUnavailable(TF_METRICS_UNAVAILABLE)


class _PatchOnLoad:
    """A meta-path finder that lets one module load as usual, then applies a patch to it."""

    def __init__(self, name: str, patch: Callable[[types.ModuleType], None]) -> None:
        self.name, self.patch = name, patch

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_then_patch(module: types.ModuleType) -> None:
                exec_module(module)
                self.patch(module)

            spec.loader.exec_module = exec_then_patch
        return spec


def _stand_in_for_missing_tensorflow() -> None:
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is not None:
        return
    # torch.utils.tensorboard probes for TensorFlow when first imported: it must see none.
    importlib.import_module("torch.utils.tensorboard")
    module = _MissingTensorFlow("tensorflow")
    # torch._dynamo inspects module specs, so the stand-in carries a real one.
    module.__spec__ = importlib.machinery.ModuleSpec("tensorflow", loader=None)
    module.__file__ = None
    sys.modules["tensorflow"] = module
    # Without TF the host's metrics would download the Inception graph only to fail on it.
    sys.meta_path.insert(0, _PatchOnLoad(INCEPTION_GRAPH_MODULE, lambda m: setattr(
        m, "create_inception_graph", _no_inception_graph)))


def _stand_in_for_torch_six() -> None:
    try:
        importlib.import_module("torch._six")
        return
    except ImportError:
        pass
    module = types.ModuleType("torch._six")
    module.__spec__ = importlib.machinery.ModuleSpec("torch._six", loader=None)
    module.PY3 = True
    module.string_classes = (str, bytes)
    sys.modules["torch._six"] = module
    torch._six = module


def is_tensorflow_stand_in() -> bool:
    """Whether ``tensorflow`` in this process is our stand-in rather than the real library."""
    return isinstance(sys.modules.get("tensorflow"), _MissingTensorFlow)


# The modules that unpack `root, error = linalg.sqrtm(..., disp=False)` from `from scipy import
# linalg`; scipy 1.18 returns the root alone and refuses `disp` (a TypeError).
SQRTM_CALLERS = ("pytorch_fid.fid_score", "torch_mimicry.metrics.fid.fid_utils")


class _LinalgWithDisp:
    """scipy.linalg as one of those modules sees it: sqrtm takes `disp` as before scipy 1.18."""

    def __init__(self, linalg: types.ModuleType) -> None:
        self._linalg = linalg

    def __getattr__(self, name: str):
        return getattr(self._linalg, name)

    def sqrtm(self, matrix: np.ndarray, disp: bool = True) -> np.ndarray | tuple:
        root = self._linalg.sqrtm(matrix)
        if disp:
            return root
        # disp=False also returned scipy's error estimate, ||root @ root - A||_F^2 / ||A||_F.
        norm = self._linalg.norm
        try:
            return root, norm(root @ root - matrix, "fro") ** 2 / norm(matrix, "fro")
        except ValueError:  # NaNs, as scipy had it
            return root, float("inf")


def _give_sqrtm_its_disp(module: types.ModuleType) -> None:
    linalg = getattr(module, "linalg", None)
    try:
        takes_disp = "disp" in inspect.signature(linalg.sqrtm).parameters
    except (AttributeError, TypeError, ValueError):  # not scipy.linalg as we know it: leave it
        return
    if not takes_disp:
        module.linalg = _LinalgWithDisp(linalg)


def ensure_sqrtm_takes_disp() -> None:
    """Let pytorch-fid's and the host's FID code call scipy's sqrtm as they were written.

    Each module is patched when it loads (now, if it has), and only where its scipy's sqrtm has
    no `disp`; scipy itself is left as it is.
    """
    for name in SQRTM_CALLERS:
        if name in sys.modules:
            _give_sqrtm_its_disp(sys.modules[name])
        elif not any(isinstance(finder, _PatchOnLoad) and finder.name == name
                     for finder in sys.meta_path):
            sys.meta_path.insert(0, _PatchOnLoad(name, _give_sqrtm_its_disp))
