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


class BranchyNet(TinyNet):
    """Python control flow on tensor values: a trace would bake in one branch, so the
    backend must not trace it (torch.export refuses it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x / 10.0)
        if x.mean() > 0:
            return logits
        return -logits


class StatefulNet(TinyNet):
    """Python state changes every call: exportable, but a trace freezes the count, so only
    the verification at load can catch it."""

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x / 10.0) * float(self.calls)


class TabularNet(nn.Module):
    """Rows of features (n, n_in) -> (n, n_out): a regression value per output, or binary
    logits (n_out 1) and a wrong width for a binary declaration (n_out 3)."""

    def __init__(self, n_in: int = 4, n_out: int = 1, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ScoreNet(TinyNet):
    """Windows -> one logit per row, returned flat (n,): a binary model's other shape."""

    def __init__(self, **kwargs: int) -> None:
        super().__init__(n_classes=1, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / 10.0).reshape(-1)
