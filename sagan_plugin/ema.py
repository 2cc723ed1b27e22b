"""An exponential moving average of the generator's weights, as BigGAN keeps (G_ema).

Before `start` the average is a plain copy of G (BigGAN's start_itr): early weights are poor and
would take thousands of steps to decay away. Batch-norm running statistics are copied, not
averaged. Spectral norm's u/v vectors are the EMA's own: after `start` each update runs one
power iteration on the averaged weights, so they are divided by their own largest singular
value, not by one estimated for G's weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.parametrizations import _SpectralNorm

from sagan_plugin.nets.layers import refresh_spectral_norm


class EMA:
    def __init__(self, net: nn.Module, decay: float, start: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.start = decay, start
        self.model = copy.deepcopy(net).eval().requires_grad_(False)
        power_iteration = {id(b) for m in self.model.modules() if isinstance(m, _SpectralNorm)
                           for b in m.buffers()}
        self._copied = [id(b) not in power_iteration for b in self.model.buffers()]

    @torch.no_grad()
    def update(self, net: nn.Module, global_step: int) -> None:
        """Fold net's weights in after the G update that completed global_step."""
        averaged = list(self.model.parameters())
        current = [p.detach() for p in net.parameters()]
        copying = global_step <= self.start
        if copying:
            torch._foreach_copy_(averaged, current)
        else:
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        for mine, theirs, copied in zip(self.model.buffers(), net.buffers(), self._copied,
                                        strict=True):
            if copied or copying:
                mine.copy_(theirs)
        if not copying:
            refresh_spectral_norm(self.model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
