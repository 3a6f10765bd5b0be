"""Offline commands on Ray Data: batch-predict and replay (serve/offline/ does the work).

``batch-predict`` scores a Parquet, CSV or NumPy file with one version, or with the arm
the online router would give each row's user key (``--experiment``). ``replay`` scores the
prediction log's logged inputs with a version and compares with what was served
(serve/offline/replay.py; a canary plan's replay gate runs the same job in the controller).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serve.cli.state import DEFAULT_CONFIG, read_state
from serve.config import AbserveConfig, load_config
from serve.errors import AbserveError

__all__ = ["add_parsers", "cmd_batch_predict", "cmd_replay"]


def _config(args: argparse.Namespace) -> tuple[AbserveConfig, str]:
    path = getattr(args, "config", None) or read_state().get("config") or DEFAULT_CONFIG
    return load_config(path), str(path)


def _address(args: argparse.Namespace) -> str | None:
    return (getattr(args, "address", None) or os.environ.get("RAY_ADDRESS")
            or read_state().get("ray_address"))


def _live_experiment(config: AbserveConfig, config_path: str) -> tuple[Any, Any, str]:
    """The experiment and the weights routers use now: from the application's controller
    when this driver reaches one, else the config's (and says which)."""
    from router.controlplane.experiment import effective_weights
    try:  # the controller's deployment name, where serve/app.py takes it from
        from serve.serve_config import CONTROLLER_DEPLOYMENT
    except ImportError:
        from serve.app import CONTROLLER_DEPLOYMENT

    try:
        from ray import serve

        async def ask() -> Any:  # a handle may route on the caller's loop: give it one
            handle = serve.get_deployment_handle(CONTROLLER_DEPLOYMENT,
                                                 app_name=config.app_name)
            return await asyncio.wait_for(handle.get_state.remote(), 15)

        state = asyncio.run(ask())
    except Exception as exc:  # noqa: BLE001 - no running application: the config decides
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return (config.experiment, None,
                f"the config {config_path} (no controller of application "
                f"{config.app_name!r} reachable: {reason})")
    return (state.experiment, effective_weights(state),
            f"the controller of application {config.app_name!r} (revision {state.revision}"
            f"{', paused: all traffic to the baseline' if state.paused else ''})")


def cmd_batch_predict(args: argparse.Namespace) -> int:
    from serve.offline.core import check_sticky, experiment_arms
    from serve.offline.scoring import (
        BatchJob,
        ray_session,
        read_input,
        run_batch,
        version_config,
    )

    config, config_path = _config(args)
    if bool(args.version) == bool(args.experiment):
        raise AbserveError("batch-predict needs one of --version V or --experiment")
    if args.experiment and not args.user_column:
        raise AbserveError("--experiment needs --user-column COL: the arm of a row is the "
                           "arm of its user key")
    table = read_input(args.input)
    out = Path(args.out)
    errors_out = Path(args.errors) if args.errors else out.with_name(out.stem + ".errors.parquet")
    with ray_session(_address(args), args.num_cpus) as where:
        if args.experiment:
            exp, weights, source = _live_experiment(config, config_path)
            check_sticky(exp)
            arms = experiment_arms(exp, weights)
            live = [a for a in arms if a.weight > 0 or a.baseline]
            versions = {a.version: version_config(config, a.version) for a in live}
            shares = ", ".join(f"{a.version} {a.weight:g}%" for a in arms)
            print(f"experiment {exp.name}: weights from {source}: {shares}")
            job = BatchJob(config, versions, args.input_column, args.user_column,
                           tuple((a.version, a.weight, a.baseline) for a in arms), exp.name,
                           args.batch_size, args.actors)
        else:
            job = BatchJob(config, {args.version: version_config(config, args.version)},
                           args.input_column, args.user_column, batch_size=args.batch_size,
                           actors=args.actors)
        print(f"batch-predict {args.input} ({table.num_rows:,} rows) on {where}")
        result = run_batch(job, table, out, errors_out, stream=sys.stdout)
    print(f"scored {result.scored:,} of {result.rows:,} rows in {result.seconds:.2f} s: "
          f"{result.rows_per_s:,.0f} rows/s on {len(result.nodes)} node(s); "
          f"outputs in {out}, {result.errors:,} bad row(s) in {errors_out}")
    if args.json:
        print(json.dumps({"rows": result.rows, "scored": result.scored,
                          "errors": result.errors, "seconds": result.seconds,
                          "rows_per_s": result.rows_per_s, "nodes": result.nodes,
                          "out": str(out), "errors_file": str(errors_out)}))
    return 0


def _parse_time(text: str | None, what: str) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise AbserveError(f"{what}: {text!r} is not an ISO 8601 time, e.g. "
                           "2026-12-02T10:00:00Z") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def cmd_replay(args: argparse.Namespace) -> int:
    from serve.offline.core import summary_lines
    from serve.offline.replay import run_replay
    from serve.offline.scoring import ray_session

    config, _ = _config(args)
    since, until = _parse_time(args.since, "--since"), _parse_time(args.until, "--until")
    with ray_session(_address(args), args.num_cpus) as where:
        print(f"replay of {args.log} with {args.version} on {where}")
        summary = run_replay(config, args.log, args.version, since=since, until=until,
                             out=Path(args.out) if args.out else None,
                             batch_size=args.batch_size, actors=args.actors, stream=sys.stdout)
    for line in summary_lines(summary):
        print(line)
    for reason, count in summary["skipped_reasons"].items():
        print(f"  skipped {count:,}: {reason}")
    print(f"  per-row results in {summary['out']} ({summary['rows_per_s']:,.0f} rows/s)")
    if args.json:
        print(json.dumps(summary))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE",
                   help="the abserve config (model, registry, each version's CPUs, GPUs and "
                        "precision; default: the one `up` used, else abserve.yaml)")
    p.add_argument("--address", help="Ray cluster to run on (default: RAY_ADDRESS, the one "
                                     "`up` started, else a local Ray for this job)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (no --address)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per actor call")
    p.add_argument("--actors", type=int, help="actors in the pool (default: as many as the "
                                              "free CPUs hold, one per CPU at most)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")


def add_parsers(sub: Any) -> None:
    b = sub.add_parser("batch-predict", help="score a Parquet, CSV or .npy file on Ray Data "
                                             "with one version or the experiment's arms")
    b.add_argument("input", help="a .parquet file (or directory), .csv or .npy")
    b.add_argument("--out", required=True, help="the output Parquet file")
    b.add_argument("--errors", help="the bad rows' Parquet file (row, reason; default: "
                                    "OUT's name with .errors.parquet)")
    which = b.add_mutually_exclusive_group()
    which.add_argument("--version", help="score every row with this version")
    which.add_argument("--experiment", action="store_true",
                       help="each row gets the arm the router would give its user key")
    b.add_argument("--user-column", metavar="COL", help="the column of user keys")
    b.add_argument("--input-column", default="input", metavar="COL",
                   help="tensor models: the column of flattened input rows (default: input)")
    _common(b)
    b.set_defaults(func=cmd_batch_predict)

    r = sub.add_parser("replay", help="score the prediction log's inputs with a version: "
                                      "agreement with what was served, |dp|, accuracy, "
                                      "confusion matrix")
    r.add_argument("--log", required=True, metavar="LOCATION",
                   help="the log's location (log.location: a directory or a pyarrow URI)")
    r.add_argument("--version", required=True)
    r.add_argument("--since", metavar="TIME", help="ISO 8601, UTC when no zone is given")
    r.add_argument("--until", metavar="TIME", help="ISO 8601 (exclusive)")
    r.add_argument("--out", help="per-row results (default: replay-VERSION.parquet)")
    _common(r)
    r.set_defaults(func=cmd_replay)
