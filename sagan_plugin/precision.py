"""Numerics and kernels of a training step: bf16 autocast, fused attention, memory format.

    train.precision=bf16        autocast to bfloat16 (no grad scaler: bf16 has fp32's range)
    train.sdpa_backend=auto     attention kernel: auto, flash, efficient, cudnn or math
    train.channels_last=true    NHWC activations and weights (tensor cores prefer them)
    train.compile=true          torch.compile the forward of G and D
    train.fused_adam=true       Adam's fused kernel

Under bf16 the spectral-norm power iteration and sigma stay in fp32 (bf16 keeps 8 significant
bits: a sigma off by up to 0.4% moves every layer's Lipschitz bound), and the nets compute their
losses in fp32.

Attention: the query/key width (C/8) differs from the value width (C/2), which FlashAttention
does not take; `auto` lets PyTorch's dispatcher pick among the rest (memory-efficient or cuDNN
on GPUs, math on CPU). benchmarks/bench_attention.py reports which kernels run, and how fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.parametrizations import _SpectralNorm

from sagan_plugin.errors import UsageError

PRECISIONS = ("fp32", "bf16")
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def check_options(precision: str, sdpa_backend: str) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"train.precision must be one of {', '.join(PRECISIONS)}, "
                         f"got {precision!r}")
    if sdpa_backend != "auto" and sdpa_backend not in SDPA_BACKENDS:
        raise UsageError(f"train.sdpa_backend must be auto or one of "
                         f"{', '.join(SDPA_BACKENDS)}, got {sdpa_backend!r}")


class _FP32SpectralNorm(_SpectralNorm):
    """torch's spectral norm with autocast off: power iteration and sigma in fp32."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            return super().forward(weight.float())


def keep_spectral_norm_fp32(net: nn.Module) -> nn.Module:
    """Make every spectral-norm parametrization of net ignore autocast (in place)."""
    for module in net.modules():
        if type(module) is _SpectralNorm:
            module.__class__ = _FP32SpectralNorm
    return net


@contextlib.contextmanager
def step_context(device: torch.device, precision: str = "fp32",
                 sdpa_backend: str = "auto") -> Iterator[None]:
    """The autocast and attention-kernel choice that training steps run under."""
    with contextlib.ExitStack() as stack:
        if precision == "bf16":
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        if sdpa_backend != "auto":
            stack.enter_context(sdpa_kernel([SDPA_BACKENDS[sdpa_backend]]))
        yield


def to_memory_format(net: nn.Module, channels_last: bool) -> nn.Module:
    return net.to(memory_format=torch.channels_last) if channels_last else net
