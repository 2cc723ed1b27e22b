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
on GPUs, math on CPU). `flash` zero-pads query and key to the value's width (exact: zero
columns add nothing to q.k), so that it can run. benchmarks/bench_attention.py reports which
kernels run, and how fast ("ours+pad" is the padded layer).
"""

from __future__ import annotations

import contextlib
import warnings
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


def check_options(precision: str, sdpa_backend: str, device: torch.device) -> None:
    """Refuse an attention kernel this device cannot run, before training (the names
    themselves are the configuration schema's to check)."""
    padded = pads_query_key(sdpa_backend)
    if sdpa_backend != "auto" and not attention_kernel_runs(sdpa_backend, device, precision,
                                                            padded=padded):
        raise UsageError(f"train.sdpa_backend={sdpa_backend} cannot run SAGAN's attention "
                         f"(query/key width C/{2 if padded else 8}, value "
                         f"width C/2) on {device} in {precision}; use auto")


def pads_query_key(sdpa_backend: str) -> bool:
    """Whether SAGAN's attention pads query and key to the value's width for this kernel."""
    return sdpa_backend == "flash"


def use_attention_kernel(net: nn.Module, sdpa_backend: str) -> nn.Module:
    """Set net's attention layers to the shapes the chosen kernel takes (in place)."""
    from sagan_plugin.nets.attention import SelfAttention

    for module in net.modules():
        if isinstance(module, SelfAttention):
            module.pad_query_key = pads_query_key(sdpa_backend)
    return net


def attention_kernel_runs(backend: str, device: torch.device, precision: str = "fp32",
                          channels: int = 256, padded: bool = False) -> bool:
    """Whether one SDPA kernel runs SAGAN's attention layer (probed on a small input: the
    layer itself, so that widths and strides are the ones training gives the kernel)."""
    from sagan_plugin.nets.attention import SelfAttention

    layer = SelfAttention(channels, pad_query_key=padded).to(device).eval()
    x = torch.zeros(2, channels, 8, 8, device=device)
    try:
        with torch.no_grad(), step_context(device, precision, backend), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # each refusing kernel warns why
            layer(x)
    except RuntimeError:
        return False
    return True


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
    """The autocast and attention-kernel choice that training steps run under.

    Autocast's cache is off: the trainer enters this once around all its steps, and a cached
    bf16 copy of a weight (a bias; spectral-norm weights are computed, never cached) would
    outlive the optimizer steps that change the weight until the context is left."""
    with contextlib.ExitStack() as stack:
        if precision == "bf16":
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16,
                                               cache_enabled=False))
        if sdpa_backend != "auto":
            stack.enter_context(sdpa_kernel([SDPA_BACKENDS[sdpa_backend]]))
        yield


def to_memory_format(net: nn.Module, channels_last: bool) -> nn.Module:
    return net.to(memory_format=torch.channels_last) if channels_last else net


def prepare_for_training(netG: nn.Module, netD: nn.Module, *, precision: str = "fp32",
                         sdpa_backend: str = "auto", channels_last: bool = False) -> None:
    """Set G and D up in place for the training options (train.precision, sdpa_backend,
    channels_last). torch.compile (train.compile) is the caller's: training compiles only once
    EMA has deep-copied G, so that the average stays an eager module."""
    for net in (netG, netD):
        to_memory_format(net, channels_last)
        use_attention_kernel(net, sdpa_backend)
        if precision == "bf16":
            keep_spectral_norm_fp32(net)
