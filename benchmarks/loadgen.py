"""Load generators: wrk (closed loop, throughput) and an open-loop asyncio client (latency).

Both send the same bodies (``write_bodies``; as OIP v2 requests for MLServer).
wrk comes from the OS packages and runs ``wrk/predict.lua``, whose ``done()``
prints one JSON line: the harness parses that, never wrk's prose. The open-loop
client sends at a fixed rate whatever the server does, and measures each
latency from the moment the request was sent on schedule, including any wait
for a free connection, so a stalled server cannot hide its queue (no
coordinated omission).
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LUA_SCRIPT",
    "LoadResult",
    "open_loop",
    "run_wrk",
    "unique_bodies",
    "write_bodies",
]

LUA_SCRIPT = Path(__file__).parent / "wrk" / "predict.lua"
_PLACEHOLDERS = 4  # @0@..@3@ in a unique-mode template, see wrk/predict.lua


@dataclass
class LoadResult:
    """What one load run measured; latencies in milliseconds."""

    tool: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_detail: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- bodies


def _windows(n: int, seed: int) -> list[list[list[float]]]:
    from models.activity.data import make_windows

    X, _ = make_windows(n, seed)
    return [[[round(float(v), 4) for v in row] for row in w] for w in X]


OIP_INPUT = "window"  # the one input tensor's name in an OIP body (any name decodes)


def _body(window: list[Any], fmt: str) -> str:
    """One request body as JSON text: abserve's ``{"features": ...}`` or an OIP v2 request.

    The OIP body carries the window as one FP32 tensor of shape [1, window, channels],
    its data flat in row-major order (so its first values are the first time step's,
    as in the nested form), and asks for ``predict_proba`` (MLServer's sklearn runtime
    answers ``predict``, the labels, when a request names no output).
    """
    if fmt == "abserve":
        return json.dumps({"features": window}, separators=(",", ":"))
    if fmt == "oip":
        flat = [v for row in window for v in row]
        return json.dumps({
            "inputs": [{"name": OIP_INPUT, "shape": [1, len(window), len(window[0])],
                        "datatype": "FP32", "data": flat}],
            "outputs": [{"name": "predict_proba"}],
        }, separators=(",", ":"))
    raise ValueError(f"unknown body format {fmt!r}; use 'abserve' or 'oip'")


def write_bodies(path: Path, n: int = 64, seed: int = 7, *, unique: bool,
                 fmt: str = "abserve") -> Path:
    """``n`` request bodies, one per line; in unique mode with wrk's placeholders.

    The placeholders replace the first four accelerometer/gyroscope readings of
    the first time step; every other number is a real generated window. ``fmt``
    ``"oip"`` writes the same windows as Open Inference Protocol requests (see
    ``_body``), placeholders in the same four readings.
    """
    lines = []
    for w in _windows(n, seed):
        if unique:
            marked: list[Any] = [list(row) for row in w]
            marked[0][:_PLACEHOLDERS] = [f"@{i}@" for i in range(_PLACEHOLDERS)]
            text = _body(marked, fmt)
            for i in range(_PLACEHOLDERS):
                text = text.replace(f'"@{i}@"', f"@{i}@")
        else:
            text = _body(w, fmt)
        lines.append(text)
    path.write_text("\n".join(lines) + "\n")
    return path


def _cell(n: int) -> str:
    return f"{(n % 1000) / 100:.2f}"


def unique_bodies(template_file: Path, count: int, salt: int) -> list[bytes]:
    """The open-loop client's bodies: filled like wrk fills them (thread slot 9)."""
    templates = [t for t in template_file.read_text().splitlines() if t]
    out = []
    for k in range(count):
        body = templates[k % len(templates)]
        for i, value in enumerate((_cell(k), _cell(k // 1000), _cell(9), _cell(salt))):
            body = body.replace(f"@{i}@", value, 1)
        out.append(body.encode())
    return out


# ---------------------------------------------------------------- wrk


def run_wrk(
    url: str,
    bodies_file: Path,
    *,
    unique: bool,
    salt: int,
    connections: int,
    threads: int,
    duration_s: float,
    timeout_s: float = 5.0,
) -> LoadResult:
    """One closed-loop wrk run; raises RuntimeError when wrk fails or prints no summary."""
    binary = shutil.which("wrk")
    if binary is None:
        raise FileNotFoundError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    threads = max(1, min(threads, connections))
    seconds = max(1, math.ceil(duration_s))
    cmd = [
        binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
        f"--timeout={max(1, math.ceil(timeout_s))}s", "--latency", "-s", str(LUA_SCRIPT),
        url, "--", str(bodies_file), "unique" if unique else "repeat", str(salt),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"wrk did not finish within {seconds + 60}s") from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = out.decode(errors="replace")
    summary = next(
        (json.loads(line) for line in text.splitlines() if line.startswith('{"abserve_wrk"')),
        None,
    )
    if proc.returncode != 0 or summary is None:
        raise RuntimeError(
            f"wrk failed (exit {proc.returncode}): {err.decode(errors='replace')[-500:]}"
            f"{text[-500:]}"
        )
    lat = summary["latency_us"]
    errors = {k: int(v) for k, v in summary["errors"].items()}
    elapsed = summary["duration_us"] / 1e6
    requests = int(summary["requests"])
    return LoadResult(
        tool="wrk",
        connections=connections,
        duration_s=round(elapsed, 3),
        requests=requests,
        rps=requests / elapsed if elapsed > 0 else 0.0,
        p50_ms=lat["p50"] / 1000.0,
        p99_ms=lat["p99"] / 1000.0,
        errors=sum(errors.values()),
        error_detail=errors,
        extra={
            "threads": threads,
            "latency_ms": {k: v / 1000.0 for k, v in lat.items()},
            "bytes": summary["bytes"],
            "client_cpu_pct": round(100.0 * client_cpu_s / elapsed, 1) if elapsed else None,
        },
    )


# ---------------------------------------------------------------- open loop


class _Conn:
    """One keep-alive HTTP/1.1 connection over asyncio streams (no client library cost)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Conn:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def post(self, head: bytes, body: bytes) -> int:
        self.writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = -1
        chunked = False
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length >= 0:
            await self.reader.readexactly(length)
        else:
            raise ConnectionError("response without length on a keep-alive connection")
        return status

    def close(self) -> None:
        self.writer.close()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


async def _open_loop(
    host: str, port: int, path: str, bodies: list[bytes], rate: float, duration_s: float,
    max_connections: int, timeout_s: float,
) -> LoadResult:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    idle: list[_Conn] = []
    opened = 0
    slots = asyncio.Semaphore(max_connections)
    latencies: list[float] = []
    errors: dict[str, int] = {"status": 0, "timeout": 0, "connection": 0}
    n = max(1, int(rate * duration_s))
    clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    start = clock() + 0.05

    lateness: list[float] = []

    async def one(i: int) -> None:
        nonlocal opened
        began = clock()
        lateness.append(began - (start + i / rate))
        async with slots:
            conn = idle.pop() if idle else None
            try:
                if conn is None:
                    conn = await _Conn.open(host, port)
                    opened += 1
                body = bodies[i % len(bodies)]
                status = await asyncio.wait_for(conn.post(head, body), timeout_s)
            except TimeoutError:
                errors["timeout"] += 1
                if conn is not None:
                    conn.close()
                return
            except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                errors["connection"] += 1
                if conn is not None:
                    conn.close()
                return
            idle.append(conn)
        latencies.append((clock() - began) * 1000.0)
        if not 200 <= status < 300:
            errors["status"] += 1

    tasks = []
    for i in range(n):
        delay = start + i / rate - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    sent_by = clock()
    await asyncio.gather(*tasks)
    elapsed = clock() - start
    for conn in idle:
        conn.close()
    latencies.sort()
    return LoadResult(
        tool="open-loop",
        connections=opened,
        duration_s=round(elapsed, 3),
        requests=n,
        rps=len(latencies) / elapsed if elapsed > 0 else 0.0,
        p50_ms=_percentile(latencies, 50),
        p99_ms=_percentile(latencies, 99),
        errors=sum(errors.values()),
        error_detail=errors,
        extra={
            "target_rate": rate,
            "offered_rate": n / max(sent_by - start, 1e-9),
            "max_connections": max_connections,
            "latency_ms": {"p90": _percentile(latencies, 90), "max": latencies[-1]}
            if latencies else {},
            "client_lateness_ms": {"p50": _percentile(sorted(lateness), 50) * 1000.0,
                                   "max": max(lateness, default=0.0) * 1000.0},
        },
    )


def open_loop(
    url: str,
    bodies: list[bytes],
    *,
    rate: float,
    duration_s: float,
    max_connections: int = 256,
    timeout_s: float = 5.0,
) -> LoadResult:
    """Send ``rate`` requests per second for ``duration_s``, whatever the server does.

    Request ``i`` is sent at ``start + i / rate`` (to the event loop's timer
    resolution, about 1 ms; ``client_lateness_ms`` says how late the client
    was); its latency runs from then, so time spent waiting for a free
    connection counts. Bounded: at most
    ``rate * duration_s`` requests and ``max_connections`` sockets.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    before = resource.getrusage(resource.RUSAGE_SELF)
    result: LoadResult = runner(
        _open_loop(
            parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/", bodies, rate,
            duration_s, max_connections, timeout_s,
        )
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # The whole bench process: the client plus the bench's own sampler threads.
    result.extra["client_cpu_pct"] = round(100.0 * cpu_s / max(result.duration_s, 1e-9), 1)
    return result
