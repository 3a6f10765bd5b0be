"""Measuring commands: bench, soak, bench-precision.

The benchmarks are imported when one of these commands runs, never when the
parser is built: ``abserve --help`` or ``abserve up`` load none of them (nor
numpy, nor wrk's helpers), and the benchmarks never import the CLI back.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parsers", "cmd_bench", "cmd_bench_precision", "cmd_soak"]


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.runner import run_from_args

    return run_from_args(args)


def cmd_soak(args: argparse.Namespace) -> int:
    from benchmarks.soak import run_from_args

    return run_from_args(args)


def cmd_bench_precision(args: argparse.Namespace) -> int:
    from benchmarks.precision import run_from_args

    return run_from_args(args)


def cmd_bench_batch(args: argparse.Namespace) -> int:
    from benchmarks.batch import run_from_args

    return run_from_args(args)


def _ingress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ingress", choices=["throughput", "default"], default="throughput")


def add_parsers(sub: Any) -> None:
    b = sub.add_parser("bench", help="naive server, plain Ray Serve, a no-op Serve replica "
                                     "and MLServer vs abserve: table, JSON, PNG")
    b.add_argument("--duration", type=float, default=20, help="seconds per variant")
    b.add_argument("--connections", type=int, default=32)
    b.add_argument("--short", action="store_true", help="3 s per variant, 1 s warm-up")
    _ingress_option(b)
    b.add_argument("--registry", help="existing registry with activity v1, v2 (default: train)")
    b.add_argument("--out", default="bench-results")
    b.add_argument("--variants", default="a,b,c,d,e,f,n",
                   help="comma-separated, of a,b,c,d,e,f,l,n (f: MLServer, in a virtualenv the "
                        "bench builds; n: a no-op Serve replica, the ceiling; l: the prediction "
                        "log's cost on (c) and (e), one deployment with the log switched "
                        "off and on in alternating windows, ABSERVE_BENCH_LOG_PAIRS pairs, "
                        "default 2)")
    b.add_argument("--mlserver-venv", metavar="PATH",
                   help="(f)'s MLServer virtualenv, built there when absent or broken "
                        "(default: ~/.cache/abserve/mlserver-1.7.1-sklearn-<version>)")
    b.set_defaults(func=cmd_bench)

    sk = sub.add_parser("soak", help="steady load with a random fault every minute: success "
                                     "rate, router RSS and fds, Redis keys (own local cluster)")
    sk.add_argument("--duration", type=float, default=1800, help="seconds of load")
    sk.add_argument("--rate", type=float, default=20, help="requests per second (fixed)")
    sk.add_argument("--fault-interval", type=float, default=60, help="seconds between faults")
    sk.add_argument("--ttl", type=int, default=60, help="cache TTL, so the key count is bounded")
    sk.add_argument("--seed", type=int, default=0)
    sk.add_argument("--registry", help="registry with activity v1, v2 (default: ./registry)")
    _ingress_option(sk)
    sk.add_argument("--out", default="soak-results")
    sk.set_defaults(func=cmd_soak)

    # Declared here, not in benchmarks/precision.py, so that building the parser imports
    # no benchmark.
    bp = sub.add_parser("bench-precision",
                        help="fp32 vs fp16/bf16 rows/s and drift per framework on this device")
    bp.add_argument("--registry", default="registry")
    bp.add_argument("--model", default="activity")
    bp.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    bp.add_argument("--batch", type=int, default=64)
    bp.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row")
    bp.add_argument("--out", default="bench-results")
    bp.set_defaults(func=cmd_bench_precision)

    bb = sub.add_parser("bench-batch",
                        help="batch-predict on Ray Data vs a plain loop over the same backend "
                             "in one process: rows/s and the ratio")
    bb.add_argument("-c", "--config", default="abserve.yaml")
    bb.add_argument("--version", default="v1")
    bb.add_argument("--rows", type=int, default=20_000)
    bb.add_argument("--batch-size", type=int, default=256)
    bb.add_argument("--actors", type=int, help="actor pool size (default: the free CPUs)")
    bb.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (no --address)")
    bb.add_argument("--address", help="a Ray cluster to score on (default: a local Ray)")
    bb.add_argument("--out", default="bench-results")
    bb.set_defaults(func=cmd_bench_batch)
