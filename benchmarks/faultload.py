"""A fixed-rate, tagged load generator for fault injection (issue 5) and the soak.

Open loop, like ``loadgen.open_loop``: request ``i`` is due at ``start + i / rate``
whatever the server does, and its latency runs from that moment, so a stalled
server cannot hide its queue. Unlike the benchmark client it keeps one record per
request: its tag (sent as ``X-Request-Id``), when it was due, the status or the
socket error, the latency, and what the answer said about itself (``X-Fallback``,
``X-Fallback-Reason``, ``X-Cache``, ``X-Model-Version``, the arm). Inputs mix a
small pool of repeated windows (cache hits) with unique ones, and every request
carries a user key (``X-User-Id``) so the experiment's split applies.

``FaultLoad.start()`` runs the load in a background thread, so a test or the
soak can inject faults meanwhile and ``mark()`` them on the same time axis.
``summarize(records)`` is pure: success rate, fallback and cache counts,
percentiles, and per-window success, for the assertions and the soak's table.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Event", "FaultLoad", "Record", "percentile", "read_jsonl", "summarize", "write_jsonl"]


@dataclass
class Record:
    """One request: what was sent, when, and what came back."""

    tag: str
    t: float  # when it was due, seconds since the load started
    user: str
    repeated: bool  # one of the repeated inputs (a cache hit once written)
    status: int = 0  # HTTP status; 0 when no response came back
    latency_ms: float = float("nan")  # from when it was due to the end of the answer
    error: str | None = None  # socket error or client timeout, by class name
    fallback: bool | None = None
    fallback_reason: str | None = None
    cache: str | None = None  # X-Cache: HIT | MISS | BYPASS
    version: str | None = None  # X-Model-Version: the version that answered
    arm: str | None = None  # the arm the router chose (from the body)
    request_id: str | None = None  # the X-Request-Id the answer carried

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Event:
    """A fault (or anything else) marked on the load's time axis."""

    t: float
    name: str
    detail: dict[str, Any] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (need not be sorted); NaN when empty."""
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def summarize(
    records: Iterable[Record], *, window_s: float = 5.0, start: float = 0.0,
    end: float | None = None,
) -> dict[str, Any]:
    """What a load run saw, between ``start`` and ``end`` (send times, seconds)."""
    rows = [r for r in records if r.t >= start and (end is None or r.t < end)]
    n = len(rows)
    ok = sum(r.ok for r in rows)
    latencies = [r.latency_ms for r in rows if r.ok]
    windows: list[dict[str, Any]] = []
    if rows and window_s > 0:
        by_window: dict[int, list[Record]] = {}
        for r in rows:
            by_window.setdefault(int((r.t - start) // window_s), []).append(r)
        for w in sorted(by_window):
            ws = by_window[w]
            w_ok = sum(r.ok for r in ws)
            windows.append({
                "t0": round(start + w * window_s, 3),
                "requests": len(ws),
                "ok": w_ok,
                "success_rate": w_ok / len(ws),
                "hit_rate": sum(r.cache == "HIT" for r in ws) / len(ws),
                "fallbacks": sum(bool(r.fallback) for r in ws),
                "p99_ms": percentile([r.latency_ms for r in ws if r.ok], 99),
            })
    return {
        "requests": n,
        "ok": ok,
        "failed": n - ok,
        "success_rate": ok / n if n else float("nan"),
        "statuses": dict(Counter(r.status for r in rows)),
        "errors": dict(Counter(r.error for r in rows if r.error)),
        "fallbacks": sum(bool(r.fallback) for r in rows),
        "fallback_reasons": dict(Counter(r.fallback_reason for r in rows if r.fallback_reason)),
        "cache": dict(Counter(r.cache for r in rows if r.cache)),
        "hit_rate": sum(r.cache == "HIT" for r in rows) / n if n else float("nan"),
        "versions": dict(Counter(r.version for r in rows if r.version)),
        "arms": dict(Counter(r.arm for r in rows if r.arm)),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
        "windows": windows,
    }


def write_jsonl(path: Path, records: Iterable[Record], events: Iterable[Event] = ()) -> Path:
    """One JSON object per line: every request, then every event (``"event": name``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")
        for e in events:
            f.write(json.dumps({"event": e.name, "t": e.t, **e.detail}) + "\n")
    return path


def read_jsonl(path: Path) -> tuple[list[Record], list[Event]]:
    records: list[Record] = []
    events: list[Event] = []
    for line in path.read_text().splitlines():
        data = json.loads(line)
        if "event" in data:
            name, t = data.pop("event"), data.pop("t")
            events.append(Event(t, name, data))
        else:
            records.append(Record(**data))
    return records, events


class FaultLoad:
    """Fixed-rate tagged load against ``url`` + ``path``, bounded by time and/or count.

    ``repeat_share`` of the requests send one of ``repeat_pool`` fixed windows;
    the rest send a window no other request sends. ``pin`` sends
    ``X-Model-Version`` on every request (e.g. to measure the baseline alone).
    """

    def __init__(
        self,
        url: str,
        *,
        rate: float,
        duration_s: float | None = None,
        count: int | None = None,
        path: str = "/predict",
        users: int = 200,
        repeat_share: float = 0.5,
        repeat_pool: int = 16,
        timeout_s: float = 10.0,
        max_connections: int = 128,
        pin: str | None = None,
        seed: int = 0,
        tag_prefix: str = "fl",
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if duration_s is None and count is None:
            raise ValueError("give duration_s or count (the load must be bounded)")
        self.url = url.rstrip("/") + path
        self.rate = rate
        self.duration_s = duration_s
        self.count = count
        self.users = users
        self.repeat_share = repeat_share
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.pin = pin
        self.rng = random.Random(seed)
        self.tag_prefix = f"{tag_prefix}-{seed}"
        self.records: list[Record] = []
        self.events: list[Event] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()
        self._error: BaseException | None = None
        from models.activity.data import make_windows

        windows, _ = make_windows(repeat_pool + 64, seed=1000 + seed)
        self._pool = [self._encode(w) for w in windows[:repeat_pool]]
        self._templates = windows[repeat_pool:]

    @staticmethod
    def _encode(window: Any) -> bytes:
        import orjson

        return orjson.dumps({"features": window.tolist()})

    def _body(self, i: int) -> tuple[bytes, bool]:
        if self._pool and self.rng.random() < self.repeat_share:
            return self._pool[self.rng.randrange(len(self._pool))], True
        window = self._templates[i % len(self._templates)].copy()
        window[0, 0] += 1e-3 * (i + 1)  # a number no other request sends
        window[0, 1] += 1e-3 * (self.rng.randrange(1 << 20))
        return self._encode(window), False

    # ------------------------------------------------------------ control

    def elapsed(self) -> float:
        """Seconds since the load started (the records' and events' time axis)."""
        return time.monotonic() - self._t0

    def mark(self, name: str, **detail: Any) -> Event:
        event = Event(round(self.elapsed(), 3), name, detail)
        self.events.append(event)
        return event

    def start(self) -> FaultLoad:
        """Send in a background thread; returns at once."""
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run_thread, name="faultload", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Send nothing more; in-flight requests still finish (see ``join``)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> list[Record]:
        """Wait until the last request has finished; re-raises the client's own crash."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("the load generator did not finish in time")
        if self._error is not None:
            raise self._error
        return self.records

    def run(self) -> list[Record]:
        """Send in this thread, until the bound; returns every record."""
        self._t0 = time.monotonic()
        asyncio.run(self._main())
        return self.records

    def _run_thread(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - handed to join()
            self._error = exc

    # ------------------------------------------------------------ the client

    async def _main(self) -> None:
        import httpx

        limits = httpx.Limits(
            max_connections=self.max_connections, max_keepalive_connections=self.max_connections
        )
        timeout = httpx.Timeout(self.timeout_s)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            tasks: set[asyncio.Task[None]] = set()
            i = 0
            while not self._stop.is_set():
                due = i / self.rate
                if self.count is not None and i >= self.count:
                    break
                if self.duration_s is not None and due >= self.duration_s:
                    break
                delay = due - self.elapsed()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._one(client, i, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if tasks:
                await asyncio.gather(*tasks)

    async def _one(self, client: Any, i: int, due: float) -> None:
        import httpx

        body, repeated = self._body(i)
        user = f"user-{self.rng.randrange(self.users)}"
        rec = Record(tag=f"{self.tag_prefix}-{i}", t=round(due, 4), user=user, repeated=repeated)
        self.records.append(rec)
        headers = {"content-type": "application/json", "X-User-Id": user, "X-Request-Id": rec.tag}
        if self.pin:
            headers["X-Model-Version"] = self.pin
        try:
            r = await client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            rec.error = f"timeout:{type(exc).__name__}"
        except (httpx.TransportError, OSError) as exc:
            rec.error = type(exc).__name__
        else:
            rec.status = r.status_code
            h = r.headers
            rec.cache = h.get("X-Cache")
            rec.version = h.get("X-Model-Version")
            rec.fallback = {"true": True, "false": False}.get(h.get("X-Fallback", ""))
            rec.fallback_reason = h.get("X-Fallback-Reason")
            rec.request_id = h.get("X-Request-Id")
            if rec.ok:
                try:
                    rec.arm = r.json().get("arm")
                except ValueError:
                    rec.error = "bad-json"
                    rec.status = 0
        rec.latency_ms = round((self.elapsed() - due) * 1000.0, 3)


def main(argv: list[str] | None = None) -> int:
    """python -m benchmarks.faultload URL --rate 30 --duration 20 [--out log.jsonl]"""
    import argparse

    p = argparse.ArgumentParser(prog="faultload", description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--repeat-share", type=float, default=0.5)
    p.add_argument("--pin")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    load = FaultLoad(args.url, rate=args.rate, duration_s=args.duration,
                     repeat_share=args.repeat_share, pin=args.pin)
    records = load.run()
    if args.out:
        write_jsonl(args.out, records, load.events)
    summary = summarize(records)
    print(json.dumps({k: v for k, v in summary.items() if k != "windows"}, indent=2))
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
