"""When a batch should wait to fill: only when more requests are coming. Pure, no Ray.

A fixed batch wait (``batch_wait_timeout_s``) buys larger batches under load,
but a lone request pays all of it for nothing: at concurrency 1 nobody joins.
``AdaptiveWait`` keeps an exponentially weighted mean of the time between
arriving *calls* and lets a batch wait only while that mean is shorter than
the wait, that is, while another call is expected within it. Calls, not rows:
a merged call from the router carries many rows, but waiting helps only if
another call comes (the router sends a version's next call when this one
returns, so from one router replica the model never waits for nothing). One
long idle gap counts as at most ``GAP_CAP`` waits, so the mean catches up
with returning load within about ten calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["AdaptiveWait"]

GAP_CAP = 10.0


class AdaptiveWait:
    def __init__(
        self,
        wait_s: float,
        *,
        enabled: bool = True,
        alpha: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wait_s = wait_s
        self.enabled = enabled
        self.alpha = alpha
        self.clock = clock
        self.mean_gap_s = math.inf  # nothing seen yet: the first request does not wait
        self._last: float | None = None

    def arrival(self) -> float:
        """Record a call; return the wait for the batch it may start."""
        if not self.enabled:
            return self.wait_s
        now = self.clock()
        if self._last is not None:
            gap = min(now - self._last, GAP_CAP * self.wait_s)
            if math.isinf(self.mean_gap_s):
                self.mean_gap_s = gap
            else:
                self.mean_gap_s += self.alpha * (gap - self.mean_gap_s)
        self._last = now
        return self.wait_s if self.mean_gap_s < self.wait_s else 0.0
