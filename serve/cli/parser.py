"""The ``abserve`` parser, assembled from the command modules, and ``main``.

Every command module adds its own sub-parsers (``add_parsers``); the order
here is the order of ``abserve --help``.
"""

from __future__ import annotations

import argparse
import sys

from serve.cli import admin, bench, deploy, models, observe, offline, serveconfig
from serve.errors import AbserveError

__all__ = ["build_parser", "main"]

DESCRIPTION = "A/B tests and canary rollouts of ML models on Ray Serve."
COMMAND_MODULES = (models, deploy, serveconfig, observe, admin, offline, bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="abserve", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AbserveError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2

