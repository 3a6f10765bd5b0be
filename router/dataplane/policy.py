"""Traffic policies: which arm answers a request. Pure Python, no Ray.

Sticky assignment maps a user key to a point ``u`` in [0, 1) with a stable
hash (blake2b, not Python's salted ``hash``) and looks ``u`` up in a layout
that is a pure function of the salt and the candidates with weight > 0, in
the order of the arms list. Same key, same weights: same arm, on every
router replica. The picture is in docs/experiments.md (sticky assignment).

The layout, on the circle [0, 1) (past 1 it wraps to 0):

* every candidate version ``v`` has a fixed anchor ``a(v)``, a hash of the
  salt and the version name, which no other arm changes;
* candidates with weight > 0 are placed one after another in arms-list
  order (``add-candidate`` appends, so the newest comes last); each takes
  ``w(v)`` of the circle clockwise from its anchor, skipping space that an
  earlier candidate already holds;
* the baseline holds the rest. Arms at 0 % hold nothing and count for nothing.

What that guarantees, exactly (``tests/unit/test_assignment.py`` holds it):

1. Adding or removing a 0 % arm, pause and resume move nobody: they do not
   change the candidates with weight > 0 or their order.
2. A candidate's placement depends only on itself and the candidates listed
   before it. So changing the weight of the *last* candidate with weight > 0
   (a single canary, or the newest arm) moves users only between it and the
   baseline, for any weights, and promoting it moves only the old
   baseline's users.
3. A layout is *clean* when every candidate holds its own arc
   ``[a(v), a(v) + w(v))`` (``Layout.displaced`` is empty). Between two clean
   layouts every candidate's users are its own arc, so any change (raise,
   lower, roll back, promote, several at once) moves users only out of arms
   whose weight fell or out of the old baseline, and only into arms whose
   weight rose or into the new baseline. Raising one candidate takes users
   from the baseline alone and never moves another candidate's.
4. Any other change may move more users: ``reassignment`` computes exactly
   which share, and the admin API records it in the change's audit entry.

No layout can do better for every weight: with three candidates that each
may sit beside the others, "raising one never moves another" cannot hold for
all weights (the sets ``S_c(1 - b)`` and ``S_d(b)`` would both have to be the
complement of the same set). Hence the exact condition above.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Arm",
    "Layout",
    "Policy",
    "Reassignment",
    "RouteContext",
    "WeightedPolicy",
    "anchor",
    "build_layout",
    "reassignment",
    "unit_hash",
]

# Below this, a share is float noise (weights are validated to sum to 100 within 1e-6 %).
_EPS = 1e-12


@dataclass(frozen=True)
class Arm:
    version: str
    weight: float  # percent, 0..100
    baseline: bool = False


@dataclass(frozen=True)
class RouteContext:
    """What a policy may look at; grows without breaking call sites."""

    user_key: str | None = None
    experiment: str = "default"


@dataclass(frozen=True)
class Layout:
    """Segments ``[start, end)`` of [0, 1) held by candidates (sorted); the rest is the baseline's.

    ``displaced`` names the candidates that do not hold their own arc from
    their anchor, because an earlier candidate held part of it.
    """

    intervals: tuple[tuple[float, float, Arm], ...]
    baseline: Arm
    displaced: tuple[str, ...] = ()
    _starts: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(s for s, _, _ in self.intervals))

    @property
    def clean(self) -> bool:
        return not self.displaced

    def lookup(self, u: float) -> Arm:
        i = bisect_right(self._starts, u) - 1
        if i >= 0:
            _, end, arm = self.intervals[i]
            if u < end:
                return arm
        return self.baseline

    def shares(self) -> dict[str, float]:
        """Each arm's share of [0, 1) in this layout (candidates at 0 % are absent)."""
        out: dict[str, float] = {}
        for start, end, arm in self.intervals:
            out[arm.version] = out.get(arm.version, 0.0) + (end - start)
        out[self.baseline.version] = max(0.0, 1.0 - sum(out.values()))
        return out


class Policy(Protocol):
    def choose(self, ctx: RouteContext, arms: Sequence[Arm]) -> Arm: ...


def unit_hash(key: str, salt: str = "") -> float:
    """A stable hash of ``key`` to [0, 1), identical across processes and hosts.

    53 bits, so the float is exact: ``int / 2**64`` rounds the top 2**10
    values to exactly 1.0.
    """
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) * 2.0**-53


def anchor(version: str, salt: str = "") -> float:
    """Where ``version``'s space starts when no earlier candidate holds it."""
    return unit_hash(f"anchor\x00{version}", salt)


def _free_gaps(taken: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    gaps: list[tuple[float, float]] = []
    pos = 0.0
    for start, end in sorted(taken):
        if start > pos:
            gaps.append((pos, start))
        pos = max(pos, end)
    if pos < 1.0:
        gaps.append((pos, 1.0))
    return gaps


def _claim(
    at: float, share: float, taken: Sequence[tuple[float, float]]
) -> tuple[list[tuple[float, float]], bool]:
    """``share`` of the free space clockwise from ``at``; and whether that is the plain arc."""
    ahead: list[tuple[float, float]] = []
    behind: list[tuple[float, float]] = []
    for start, end in _free_gaps(taken):
        if end <= at:
            behind.append((start, end))
        elif start >= at:
            ahead.append((start, end))
        else:  # the gap holds the anchor: its part from the anchor comes first
            ahead.append((at, end))
            behind.append((start, at))
    walk = ahead + behind
    free = sum(end - start for start, end in walk)
    take_all = share >= free - _EPS
    left = share
    out: list[tuple[float, float]] = []
    for start, end in walk:
        if left <= 0.0 and not take_all:
            break
        if take_all or end - start <= left:
            out.append((start, end))
            left -= end - start
        else:
            out.append((start, start + left))
            left = 0.0
    # The plain arc is [at, 1) then [0, ...): one segment from the anchor, or that one up to 1
    # and a second from 0.
    plain = bool(out) and out[0][0] == at and (
        len(out) == 1 or (len(out) == 2 and out[0][1] == 1.0 and out[1][0] == 0.0)
    )
    return out, plain


def build_layout(arms: Sequence[Arm], salt: str = "") -> Layout:
    """The layout of ``arms`` (see the module docstring); a pure function of its arguments."""
    baselines = [a for a in arms if a.baseline]
    if len(baselines) != 1:
        raise ValueError("exactly one arm must be the baseline")
    baseline = baselines[0]
    taken: list[tuple[float, float]] = []
    intervals: list[tuple[float, float, Arm]] = []
    displaced: list[str] = []
    for arm in arms:
        share = arm.weight / 100.0
        if arm.baseline or share <= 0.0:
            continue
        segments, plain = _claim(anchor(arm.version, salt), share, taken)
        if not plain:
            displaced.append(arm.version)
        for start, end in segments:
            if end > start:
                taken.append((start, end))
                intervals.append((start, end, arm))
    intervals.sort(key=lambda seg: seg[0])
    merged: list[tuple[float, float, Arm]] = []
    for start, end, arm in intervals:  # one segment where a candidate's pieces touch
        if merged and merged[-1][2] == arm and merged[-1][1] == start:
            start = merged.pop()[0]
        merged.append((start, end, arm))
    return Layout(tuple(merged), baseline, tuple(displaced))


@dataclass(frozen=True)
class Reassignment:
    """Who moves when the arms change from ``before`` to ``after``, as shares of all users.

    ``moves[(x, y)]`` is the share of users who were in ``x`` and are in ``y``
    afterwards. ``unpromised`` holds the moves outside the promise of the
    module docstring: a user may leave an arm only if its weight fell or it
    was the baseline, and join one only if its weight rose or it is the
    baseline now.
    """

    moves: Mapping[tuple[str, str], float]
    unpromised: Mapping[tuple[str, str], float]

    @property
    def moved(self) -> float:
        return sum(self.moves.values())

    @property
    def unpromised_share(self) -> float:
        return sum(self.unpromised.values())

    def describe(self, users: int | None = None) -> str:
        """One line for a log or an audit entry: the unpromised moves, largest first."""
        parts = []
        for (x, y), share in sorted(self.unpromised.items(), key=lambda kv: -kv[1]):
            n = f" ({round(share * users):,} of {users:,} users)" if users else ""
            parts.append(f"{share * 100:.3g}% of users {x} -> {y}{n}")
        return "; ".join(parts)


def reassignment(before: Sequence[Arm], after: Sequence[Arm], salt: str = "") -> Reassignment:
    """Exactly which shares of users a change of the arms moves (no sampling)."""
    old, new = build_layout(before, salt), build_layout(after, salt)
    cuts = sorted({0.0, 1.0, *(p for s, e, _ in old.intervals for p in (s, e)),
                   *(p for s, e, _ in new.intervals for p in (s, e))})
    moves: dict[tuple[str, str], float] = {}
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        if hi <= lo:
            continue
        x, y = old.lookup(lo).version, new.lookup(lo).version
        if x != y:
            moves[(x, y)] = moves.get((x, y), 0.0) + (hi - lo)
    w_old = {a.version: a.weight for a in before}
    w_new = {a.version: a.weight for a in after}

    def promised(x: str, y: str) -> bool:
        fell = x == old.baseline.version or w_new.get(x, 0.0) < w_old.get(x, 0.0)
        rose = y == new.baseline.version or w_new.get(y, 0.0) > w_old.get(y, 0.0)
        return fell and rose

    moves = {k: v for k, v in moves.items() if v > _EPS}
    unpromised = {k: v for k, v in moves.items() if not promised(*k)}
    return Reassignment(moves, unpromised)


@dataclass
class WeightedPolicy:
    """Weighted split; sticky when the request has a user key.

    ``salt`` is the experiment name: a user lands independently in different
    experiments, and the anchors differ too. ``rng`` is injected so tests are
    deterministic; a request without a key draws ``u`` from it and uses the
    same layout, so the split is exact either way.
    """

    salt: str = "default"
    rng: random.Random = field(default_factory=random.Random)
    _cache: dict[tuple[Arm, ...], Layout] = field(default_factory=dict, repr=False)

    def layout(self, arms: Sequence[Arm]) -> Layout:
        key = tuple(arms)
        layout = self._cache.get(key)
        if layout is None:
            if len(self._cache) > 64:  # weights change rarely; keep this bounded anyway
                self._cache.clear()
            layout = self._cache[key] = build_layout(arms, self.salt)
        return layout

    def choose(self, ctx: RouteContext, arms: Sequence[Arm]) -> Arm:
        u = self.rng.random() if ctx.user_key is None else unit_hash(ctx.user_key, self.salt)
        return self.layout(arms).lookup(u)
