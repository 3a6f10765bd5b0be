"""router.dataplane.adaptive: a batch waits only while more requests are expected."""

from __future__ import annotations

from router.dataplane.adaptive import AdaptiveWait


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _arrivals(w: AdaptiveWait, clock: Clock, gap_s: float, n: int) -> list[float]:
    out = []
    for _ in range(n):
        clock.t += gap_s
        out.append(w.arrival())
    return out


def test_sparse_requests_never_wait_and_dense_ones_do() -> None:
    clock = Clock()
    w = AdaptiveWait(0.005, clock=clock)
    assert w.arrival() == 0.0  # the first one: nothing known, nobody to wait for
    assert set(_arrivals(w, clock, 0.010, 20)) == {0.0}  # concurrency 1, 10 ms apart
    waits = _arrivals(w, clock, 0.001, 20)  # load arrives: 1 ms apart
    assert waits[0] == 0.0  # one short gap does not flip it yet...
    assert waits[-1] == 0.005 and waits.count(0.005) >= 12  # ...a few do
    assert _arrivals(w, clock, 0.050, 10)[-1] == 0.0  # and back when it thins out


def test_the_threshold_is_the_wait_itself() -> None:
    clock = Clock()
    w = AdaptiveWait(0.005, clock=clock)
    assert set(_arrivals(w, clock, 0.006, 10)) == {0.0}
    assert _arrivals(w, clock, 0.004, 30)[-1] == 0.005


def test_disabled_is_the_fixed_wait() -> None:
    clock = Clock()
    w = AdaptiveWait(0.005, enabled=False, clock=clock)
    assert set(_arrivals(w, clock, 1.0, 5)) == {0.005}


def test_a_long_idle_gap_does_not_hide_returning_load() -> None:
    clock = Clock()
    w = AdaptiveWait(0.005, clock=clock)
    _arrivals(w, clock, 0.001, 20)
    clock.t += 600.0  # ten minutes idle
    assert w.arrival() == 0.0
    assert _arrivals(w, clock, 0.001, 12)[-1] == 0.005
