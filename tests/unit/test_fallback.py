from __future__ import annotations

from router.dataplane.fallback import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def test_opens_after_threshold_consecutive_failures() -> None:
    b = CircuitBreaker(threshold=3, cooldown_s=10, clock=FakeClock())
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state is BreakerState.CLOSED
    b.record_success()  # a success resets the count
    for _ in range(3):
        assert b.allow()
        b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()


def test_one_probe_per_cooldown_and_close_on_success() -> None:
    clock = FakeClock()
    b = CircuitBreaker(threshold=1, cooldown_s=10, clock=clock)
    b.record_failure()
    clock.advance(9.9)
    assert not b.allow()
    clock.advance(0.2)
    assert b.allow()  # the probe
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow() and not b.allow()  # nobody else while the probe runs
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allow()


def test_failed_probe_reopens_and_restarts_cooldown() -> None:
    clock = FakeClock()
    b = CircuitBreaker(threshold=2, cooldown_s=5, clock=clock)
    b.record_failure()
    b.record_failure()
    clock.advance(5)
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN and b.times_opened == 2
    clock.advance(4.9)
    assert not b.allow()
    clock.advance(0.1)
    assert b.allow()


def test_lost_probe_is_replaced_after_another_cooldown() -> None:
    clock = FakeClock()
    b = CircuitBreaker(threshold=1, cooldown_s=5, clock=clock)
    b.record_failure()
    clock.advance(5)
    assert b.allow()  # probe admitted, never reports back
    clock.advance(4)
    assert not b.allow()
    clock.advance(1)
    assert b.allow()


def test_late_success_does_not_close_an_open_circuit() -> None:
    b = CircuitBreaker(threshold=1, cooldown_s=5, clock=FakeClock())
    b.record_failure()
    b.record_success()
    assert b.state is BreakerState.OPEN
