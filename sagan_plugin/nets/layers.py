"""Building blocks of the SAGAN networks, as in the authors' 128x128 ImageNet code.

Every weight layer is spectrally normalised (generator and discriminator alike). Layers are
initialised before the normalisation is attached, so the stored weight is the initialised one.
"""

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm, spectral_norm

# Running-statistics decay of the reference's batch norms: the conditional ones, and G's last.
BN_DECAY = 0.999
BN_OUT_DECAY = 0.9999
# How the running statistics open before that decay takes over (see BatchNorm2d).
OPENING_ETA = 9


def sn(layer: nn.Module) -> nn.Module:
    """Xavier-initialise a layer's weight and attach a spectral-norm parametrization to it."""
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return spectral_norm(layer)


@contextlib.contextmanager
def spectral_norm_frozen(net: nn.Module) -> Iterator[None]:
    """Forwards inside reuse each layer's current sigma: no power iteration.

    The reference D updates its u vectors once per D step (refresh_spectral_norm, before its
    passes); its passes and G's step use that sigma. torch's spectral norm iterates on every
    training-mode forward.
    """
    norms = [m for m in net.modules() if isinstance(m, _SpectralNorm) and m.training]
    for module in norms:
        module.training = False
    try:
        yield
    finally:
        for module in norms:
            module.training = True


@torch.no_grad()
def refresh_spectral_norm(net: nn.Module, iterations: int = 1) -> nn.Module:
    """Power iterations on net's own weights, in place: its u/v then estimate its own sigma.

    In fp32 under any autocast (CUDA's would run torch.mv in bf16), as the spectral norm of a
    forward does (precision.keep_spectral_norm_fp32).
    """
    for module in net.modules():
        if not parametrize.is_parametrized(module):
            continue
        for weights in module.parametrizations.values():
            for norm in weights:
                if isinstance(norm, _SpectralNorm) and weights.original.ndim > 1:
                    weight_mat = norm._reshape_weight_to_matrix(weights.original)
                    with torch.autocast(weight_mat.device.type, enabled=False):
                        norm._power_method(weight_mat, iterations)
    return net


def sn_conv3x3(in_channels: int, out_channels: int) -> nn.Module:
    return sn(nn.Conv2d(in_channels, out_channels, 3, padding=1))


def sn_conv1x1(in_channels: int, out_channels: int, bias: bool = False) -> nn.Module:
    return sn(nn.Conv2d(in_channels, out_channels, 1, bias=bias))


class BatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose running statistics decay as the reference's (e.g. 0.999 per batch).

    Until then batch k is weighted (eta + 1) / (k + eta) instead (polynomial-decay averaging,
    Shamir and Zhang 2013, with eta = OPENING_ETA): the first batch replaces the initial mean 0
    and variance 1, and the statistics stay an average over roughly the last tenth of the run,
    so the weights of a short run's first steps do not linger in them. The weight is a tensor:
    no host sync, one graph.

    With `group` set (set_bn_group), a training batch larger than it is normalised in groups
    of that many images, each with its own statistics, and each group updates the running
    statistics in turn: the reference's G, one copy per GPU tower of 64 images, normalises so.
    """

    group: int | None = None

    def __init__(self, channels: int, decay: float = BN_DECAY, affine: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"batch-norm decay must be in [0, 1), got {decay}")
        super().__init__(channels, momentum=1.0 - decay, affine=affine)
        self.decay = decay

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        if self.group and x.shape[0] > self.group:
            return torch.cat([self._normalise(part) for part in x.split(self.group)])
        return self._normalise(x)

    def _normalise(self, x: Tensor) -> Tensor:
        """Training mode: x by its own statistics, which then update the running ones."""
        # momentum=1 leaves exactly this batch's statistics (variance unbiased, as torch keeps).
        batch_mean = torch.zeros_like(self.running_mean)
        batch_var = torch.ones_like(self.running_var)
        out = F.batch_norm(x, batch_mean, batch_var, self.weight, self.bias, True, 1.0, self.eps)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            opening = (OPENING_ETA + 1.0) / (self.num_batches_tracked + OPENING_ETA)
            weight = opening.clamp(min=1.0 - self.decay)
            self.running_mean.lerp_(batch_mean, weight)
            self.running_var.lerp_(batch_var, weight)
        return out


def set_bn_group(net: nn.Module, images: int | None) -> int:
    """Normalise net's batch norms (this package's) in groups of `images` while training
    (None: the whole batch); returns how many it has."""
    norms = [m for m in net.modules() if isinstance(m, BatchNorm2d)]
    for norm in norms:
        norm.group = images
    return len(norms)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm with a per-class gain and bias; running statistics are shared by all classes.

    With num_classes=0 it is a plain affine batch norm, and the label is ignored.
    """

    def __init__(self, channels: int, num_classes: int, decay: float = BN_DECAY) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bn = BatchNorm2d(channels, decay, affine=num_classes == 0)
        if num_classes:
            self.gain = nn.Parameter(torch.ones(num_classes, channels))
            self.bias = nn.Parameter(torch.zeros(num_classes, channels))

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        h = self.bn(x)
        if not self.num_classes:
            return h
        return self.gain[y][:, :, None, None] * h + self.bias[y][:, :, None, None]


class GBlock(nn.Module):
    """Up-sampling residual block: CBN, ReLU, 2x nearest up, conv3x3, CBN, ReLU, conv3x3."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int,
                 bn_decay: float = BN_DECAY) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_channels, num_classes, bn_decay)
        self.conv1 = sn_conv3x3(in_channels, out_channels)
        self.bn2 = ConditionalBatchNorm2d(out_channels, num_classes, bn_decay)
        self.conv2 = sn_conv3x3(out_channels, out_channels)
        # Every block up-samples, so every shortcut is learnable (also 1024 -> 1024).
        self.shortcut = sn_conv1x1(in_channels, out_channels, bias=True)

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        h = F.relu(self.bn1(x, y))
        h = self.conv1(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.conv2(F.relu(self.bn2(h, y)))
        # A 1x1 conv commutes with nearest up-sampling: convolving first is the same, cheaper.
        return h + F.interpolate(self.shortcut(x), scale_factor=2, mode="nearest")


class DBlock(nn.Module):
    """Residual block of D: ReLU, conv3x3 (in -> out), ReLU, conv3x3, optional 2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = True) -> None:
        super().__init__()
        self.downsample = downsample
        self.conv1 = sn_conv3x3(in_channels, out_channels)
        self.conv2 = sn_conv3x3(out_channels, out_channels)
        learnable = downsample or in_channels != out_channels
        self.shortcut = sn_conv1x1(in_channels, out_channels, bias=True) if learnable else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        skip = x if self.shortcut is None else self.shortcut(x)
        if self.downsample:
            h, skip = F.avg_pool2d(h, 2), F.avg_pool2d(skip, 2)
        return h + skip


class DBlockFirst(nn.Module):
    """D's first block on RGB input: no leading ReLU, and the shortcut pools before its conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = sn_conv3x3(in_channels, out_channels)
        self.conv2 = sn_conv3x3(out_channels, out_channels)
        self.shortcut = sn_conv1x1(in_channels, out_channels, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(x))), 2)
        return h + self.shortcut(F.avg_pool2d(x, 2))
