"""The machine's description that every benchmark's JSON and study report carries."""

from types import SimpleNamespace

import pytest
import torch

from sagan_plugin.machine import describe


@pytest.mark.parametrize("tf32", [True, False])
def test_a_gpu_description_says_whether_float32_rounds_to_tf32(monkeypatch, tf32) -> None:
    """An "fp32" row on a GPU is TF32 convolutions by torch's default: the JSON says which."""
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(name="GPU", total_memory=2**34))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32, not tf32
    try:  # by hand: monkeypatch cannot restore the matmul module's computed attribute
        info = describe(torch.device("cuda"))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert (info["gpu"], info["gpu_memory_gib"]) == ("GPU", 16.0)
    assert (info["tf32_convolutions"], info["tf32_matmul"]) == (tf32, not tf32)
    assert "tf32_convolutions" not in describe(torch.device("cpu"))


def test_a_gpu_description_reads_tf32_set_through_torchs_newer_api(monkeypatch) -> None:
    """Once fp32_precision is set, torch refuses to read allow_tf32: the description must
    still be written (a benchmark's JSON), with the newer setting."""
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(name="GPU", total_memory=2**34))
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision, matmul.fp32_precision = "ieee", "tf32"
    try:
        info = describe(torch.device("cuda"))
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved
    assert (info["tf32_convolutions"], info["tf32_matmul"]) == ("ieee", "tf32")
