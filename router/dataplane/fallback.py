"""Circuit breaker: a pure state machine with an injected clock. No Ray.

closed    --threshold consecutive failures--> open
open      --cooldown elapsed, one caller admitted as the probe--> half_open
half_open --probe succeeds--> closed ; --probe fails--> open (cool-down restarts)

While half-open, only the probe is admitted; everyone else is refused and
goes to the baseline, so a sick arm sees at most one request per cool-down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    threshold: int = 5
    cooldown_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    probe_started_at: float = 0.0
    times_opened: int = field(default=0)

    def allow(self) -> bool:
        """May a request go to this arm now? Admits the probe when it is due."""
        if self.state is BreakerState.CLOSED:
            return True
        now = self.clock()
        if self.state is BreakerState.OPEN:
            if now - self.opened_at >= self.cooldown_s:
                self.state = BreakerState.HALF_OPEN
                self.probe_started_at = now
                return True
            return False
        # HALF_OPEN: a probe is in flight. If it never reported (its caller was
        # cancelled), admit a new probe after another cool-down.
        if now - self.probe_started_at >= self.cooldown_s:
            self.probe_started_at = now
            return True
        return False

    def record_success(self) -> None:
        # A late success of a request admitted before the circuit opened does
        # not close it: only the probe (half-open) decides.
        if self.state is BreakerState.OPEN:
            return
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.consecutive_failures >= self.threshold
        ):
            self._open()

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = self.clock()
        self.times_opened += 1
