"""Self-attention over a feature map, as in the SAGAN authors' released code."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sagan_plugin.nets.layers import sn_conv1x1


class SelfAttention(nn.Module):
    """y = x + gamma * W_o(softmax(theta^T phi) g), with gamma starting at 0.

    As in the authors' code (and BigGAN, Mimicry, StudioGAN after it), not the paper's text:
    query and key have C/8 channels, the value C/2 and the output conv maps C/2 -> C; keys and
    values are 2x2 max-pooled, so N queries attend to N/4 positions; there is no 1/sqrt(d) scale.
    The product runs through scaled_dot_product_attention (scale=1) so fused kernels apply.
    FlashAttention takes only equal query and value widths: with pad_query_key, query and key
    are zero-padded to the value's C/2, which leaves every q.k, and so the output, unchanged.
    """

    def __init__(self, channels: int, pad_query_key: bool = False) -> None:
        super().__init__()
        if channels % 8:
            raise ValueError(f"attention needs channels divisible by 8, got {channels}")
        self.pad_query_key = pad_query_key
        self.theta = sn_conv1x1(channels, channels // 8)
        self.phi = sn_conv1x1(channels, channels // 8)
        self.g = sn_conv1x1(channels, channels // 2)
        self.o = sn_conv1x1(channels // 2, channels)
        self.gamma = nn.Parameter(torch.zeros(()))

    def _query_key_value(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # theta, phi and g as one 1x1 convolution: x is read once, one GEMM instead of three.
        # Each weight is still spectrally normalised on its own (the parametrizations apply).
        weight = torch.cat([self.theta.weight, self.phi.weight, self.g.weight])
        narrow = self.theta.out_channels
        query, key_value = F.conv2d(x, weight).split([narrow, weight.shape[0] - narrow], dim=1)
        key, value = F.max_pool2d(key_value, 2).split([narrow, self.g.out_channels], dim=1)

        def tokens(t: Tensor) -> Tensor:  # (N, C', H, W) -> (N, 1, positions, C'): one head
            # Fused kernels need channels at stride 1: a copy from NCHW, none from NHWC.
            return t.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()

        return tokens(query), tokens(key), tokens(value)

    def attention_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Query, key and value as scaled_dot_product_attention gets them."""
        query, key, value = self._query_key_value(x)
        if self.pad_query_key:
            extra = value.shape[-1] - query.shape[-1]
            query, key = F.pad(query, (0, extra)), F.pad(key, (0, extra))
        return query, key, value

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        attended = F.scaled_dot_product_attention(*self.attention_inputs(x), scale=1.0)
        attended = attended.squeeze(1).transpose(1, 2).reshape(n, c // 2, h, w)
        return x + self.gamma * self.o(attended)

    def attention_weights(self, x: Tensor) -> Tensor:
        """The attention map beta, (N, H*W, H*W/4): row j is where query j looks."""
        query, key, _ = self._query_key_value(x)
        return torch.softmax(query @ key.transpose(-1, -2), dim=-1).squeeze(1)
