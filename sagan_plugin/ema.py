"""An exponential moving average of the generator's weights, as BigGAN keeps (G_ema).

Before `start` the average is a plain copy of G (BigGAN's start_itr): early weights are poor and
would take thousands of steps to decay away. Buffers (batch-norm running statistics, the
spectral-norm u/v vectors) are copied, not averaged: they are statistics of the current weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, net: nn.Module, decay: float, start: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.start = decay, start
        self.model = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, global_step: int) -> None:
        """Fold net's weights in after the G update that completed global_step."""
        averaged = list(self.model.parameters())
        current = [p.detach() for p in net.parameters()]
        if global_step <= self.start:
            torch._foreach_copy_(averaged, current)
        else:
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        for mine, theirs in zip(self.model.buffers(), net.buffers(), strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
