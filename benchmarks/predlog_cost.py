"""What the prediction log costs a router replica, measured on the writer alone.

    .venv/bin/python -m benchmarks.predlog_cost [--rate 950] [--seconds 20] [--flush-s 10]

One process, no Ray, a temporary directory: ``--rate`` requests of one [1, 50, 9] float32
window per simulated second go through ``PredictionLog.record`` (the request path), the
writer converts them every second and writes every ``--flush-s`` seconds, as its thread
does. Prints the request path's cost per request, the thread's per row (converting,
writing), the share of one core that makes at ``--rate``, how much the process's
anonymous memory grew, and whether pandas was imported. The end-to-end figures come from
``abserve bench --variants c,e,l`` (docs/monitoring.md, "Measured cost").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

import numpy as np

__all__ = ["measure"]


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(rate: int = 950, seconds: int = 20, flush_s: int = 10) -> dict[str, Any]:
    from models.kinds import OutputSpec
    from router.dataplane.core import Prediction
    from router.dataplane.predlog import PredictionLog
    from serve.config import LogConfig

    spec = OutputSpec.of("multiclass", ["walk", "run", "sit", "stand", "lie", "bike"])
    rng = np.random.default_rng(0)
    windows = rng.standard_normal((rate, 50, 9)).astype(np.float32)
    outputs = rng.dirichlet(np.ones(spec.width), size=rate)
    with tempfile.TemporaryDirectory(prefix="abserve-predlog-cost-") as root:
        plog = PredictionLog(LogConfig(enabled=True, location=root, flush_interval_s=flush_s),
                             model="activity", replica="bench", spec=spec, start=False)
        start_mb = _rss_anon_mb()
        record_s = convert_s = write_s = 0.0
        for second in range(seconds):
            batch = [(windows[i : i + 1].copy(),
                      Prediction(outputs=outputs[i : i + 1], version="v1", arm="v1",
                                 cached=(False,), cache_status="MISS", fallback=False,
                                 fallback_reason=None, spec=spec)) for i in range(rate)]
            t0 = time.perf_counter()
            for i, (x, pred) in enumerate(batch):
                plog.record(f"req-{second}-{i}", "exp", pred, x, 1.0)
            t1 = time.perf_counter()
            plog.convert()
            t2 = time.perf_counter()
            if (second + 1) % flush_s == 0:
                plog.flush()
            t3 = time.perf_counter()
            record_s += t1 - t0
            convert_s += t2 - t1
            write_s += t3 - t2
        plog.close()
        rows = rate * seconds
        written = plog.counts["predictions"].written
    thread_us = (convert_s + write_s) / rows * 1e6
    return {
        "rows": rows, "written": written,
        "record_us_per_request": record_s / rows * 1e6,
        "convert_us_per_row": convert_s / rows * 1e6,
        "write_us_per_row": write_s / rows * 1e6,
        "core_share_at_rate": (record_s / rows * 1e6 + thread_us) * rate / 1e6,
        "rss_anon_growth_mb": _rss_anon_mb() - start_mb,
        "pandas_imported": "pandas" in sys.modules,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.predlog_cost")
    ap.add_argument("--rate", type=int, default=950, help="requests per simulated second")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--flush-s", type=int, default=10, help="log.flush_interval_s")
    args = ap.parse_args(argv)
    r = measure(args.rate, args.seconds, args.flush_s)
    print(f"{r['rows']} requests ({r['written']} rows written), one [1, 50, 9] window each")
    print(f"request path (record): {r['record_us_per_request']:.1f} us per request")
    print(f"log thread: convert {r['convert_us_per_row']:.1f} us/row, "
          f"write {r['write_us_per_row']:.1f} us/row")
    print(f"at {args.rate} req/s: {100 * r['core_share_at_rate']:.1f} % of one core")
    print(f"anonymous memory grew {r['rss_anon_growth_mb']:.0f} MB "
          f"(flush every {args.flush_s} s); pandas imported: {r['pandas_imported']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
