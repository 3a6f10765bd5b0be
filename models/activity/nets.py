"""PyTorch network for the activity demo. The only module of models/ that imports torch.

Nothing else in models/ imports this module at import time; the torch backend
imports it by name from the manifest (``models.activity.nets:ActivityCNN``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ActivityCNN", "expand_channels"]


def expand_channels(x: torch.Tensor) -> torch.Tensor:
    """(n, w, c) -> (n, w, 2c + 2c/3): raw, window-centred, sensor magnitudes and theirs centred.

    The phone's orientation is random, so the magnitudes carry what the axes hide;
    centring exposes small disturbances riding on large offsets (gravity, Earth's field).
    """
    n, w, c = x.shape
    parts = [x, x - x.mean(dim=1, keepdim=True)]
    if c % 3 == 0:
        mag = x.reshape(n, w, c // 3, 3).norm(dim=-1)
        parts += [mag, mag - mag.mean(dim=1, keepdim=True)]
    return torch.cat(parts, dim=2)


class ActivityCNN(nn.Module):
    """1-D CNN over the 9 sensor channels: (n, window, channels) -> logits (n, n_classes).

    The input normalization lives in buffers, so the state_dict carries it and the
    backend feeds raw windows.
    """

    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(
        self, channels: int = 9, n_classes: int = 8, width: int = 32, dropout: float = 0.1
    ) -> None:
        super().__init__()
        expanded = 2 * channels + (2 * channels // 3 if channels % 3 == 0 else 0)
        self.register_buffer("feature_mean", torch.zeros(expanded))
        self.register_buffer("feature_std", torch.ones(expanded))
        self.features = nn.Sequential(
            nn.Conv1d(expanded, width, kernel_size=5, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, kernel_size=5, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, 2 * width, kernel_size=3, padding=1),
            nn.BatchNorm1d(2 * width),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, n_classes))

    @torch.no_grad()
    def fit_normalization(self, x: torch.Tensor) -> None:
        """Set the input normalization from a training batch of raw windows."""
        flat = expand_channels(x).reshape(-1, self.feature_mean.numel())
        self.feature_mean.copy_(flat.mean(dim=0))
        self.feature_std.copy_(flat.std(dim=0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (expand_channels(x) - self.feature_mean) / self.feature_std  # (n, w, c')
        h = self.features(z.transpose(1, 2))  # (n, 2*width, w/2)
        # Mean and max over time: the mean keeps levels, the max keeps jolts.
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
        return self.head(pooled)
