"""A user's own torch module, importable by path (``tests.backends.user_models:TinyNet``)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Flatten and two linear layers: (n, window, channels) -> logits (n, n_classes)."""

    def __init__(self, window: int = 50, channels: int = 9, n_classes: int = 8, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(window * channels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / 10.0)
