"""A model defined outside ``fl``, as a user's own package would: trained by ``model._target_``."""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn


class TinyNet(nn.Module):
    """One hidden layer of ``width`` units; takes the data's ``input_shape`` and ``num_classes``."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                                  nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)
