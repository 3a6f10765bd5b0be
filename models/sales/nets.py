"""PyTorch network for the sales demo; imported only inside functions and by the torch backend
(by name from the manifest, ``models.sales.nets:SalesNet``), never at import of models/.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SalesNet"]

# Columns of the encoded matrix (models/sales/data.py INPUT_SCHEMA order).
_STORE, _DOW, _MONTH, _HOLIDAY, _PROMO, _PRICE, _DISTANCE = range(7)


class SalesNet(nn.Module):
    """MLP over the schema-encoded float matrix ``(n, 7)`` -> expected units sold ``(n, 1)``.

    The module does its own feature work, so the backend feeds the encoded rows as they
    are: one-hot of the store index, the weekday and the month (an unknown index is all
    zeros rather than an indexing error), log price and log distance standardized with
    buffers (the state_dict carries them). The head predicts log demand, as retail effects
    multiply; training uses a Poisson loss on that log, so ``exp`` of it is the mean.
    """

    store_ids: torch.Tensor
    day_ids: torch.Tensor
    month_ids: torch.Tensor
    num_mean: torch.Tensor
    num_std: torch.Tensor
    log_level: torch.Tensor

    def __init__(self, n_stores: int = 8, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("store_ids", torch.arange(n_stores, dtype=torch.float32))
        self.register_buffer("day_ids", torch.arange(7, dtype=torch.float32))
        self.register_buffer("month_ids", torch.arange(1, 13, dtype=torch.float32))
        self.register_buffer("num_mean", torch.zeros(4))
        self.register_buffer("num_std", torch.ones(4))
        self.register_buffer("log_level", torch.zeros(()))
        width = n_stores + 7 + 12 + 4
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def _numeric(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                x[:, _HOLIDAY],
                x[:, _PROMO],
                x[:, _PRICE].clamp_min(1e-3).log(),
                x[:, _DISTANCE].clamp_min(0.0).log1p(),
            ],
            dim=1,
        )

    @torch.no_grad()
    def fit_normalization(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Set the numeric standardization and the log demand level from the training set."""
        num = self._numeric(x.to(torch.float32))
        self.num_mean.copy_(num.mean(dim=0))
        self.num_std.copy_(num.std(dim=0).clamp_min(1e-6))
        self.log_level.copy_(y.to(torch.float32).mean().log())

    def log_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the expected units, ``(n, 1)``: what the Poisson loss is computed on."""
        x = x.to(torch.float32)
        parts = [
            (x[:, _STORE : _STORE + 1] == self.store_ids).to(torch.float32),
            (x[:, _DOW : _DOW + 1] == self.day_ids).to(torch.float32),
            (x[:, _MONTH : _MONTH + 1] == self.month_ids).to(torch.float32),
            (self._numeric(x) - self.num_mean) / self.num_std,
        ]
        return self.mlp(torch.cat(parts, dim=1)) + self.log_level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_mean(x).exp()
