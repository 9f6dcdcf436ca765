"""Exponential moving average of a model's weights (Polyak averaging).

Validation accuracy of the small classifier moves a point or two from one
epoch to the next; the average of the last few hundred steps is steadier and
usually better than any single step, so selection and export use it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """``average = decay * average + (1 - decay) * current`` after every step.

    Float parameters and buffers (BatchNorm statistics included) are averaged;
    integer buffers (BatchNorm's step counter) are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            value = current[name]
            if average.is_floating_point():
                average.lerp_(value, 1.0 - self.decay)
            else:
                average.copy_(value)
