"""Offline commands on Ray Data: batch-predict and replay (serve/offline/ does the work).

``batch-predict`` scores a Parquet, CSV or NumPy file with one version, or with the arm
the online router would give each row's user key (``--experiment``). ``replay`` scores the
prediction log's logged inputs with a version and compares with what was served;
``abserve canary start --require-replay`` runs it first (``replay_gate``).
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
from serve.config import AbserveConfig, ModelConfig, load_config
from serve.errors import AbserveError

__all__ = ["add_parsers", "cmd_batch_predict", "cmd_replay", "replay_gate", "run_replay"]

PREDICTION_COLUMNS = ["time", "request_id", "experiment", "arm", "version", "fallback",
                      "cached", "label", "outputs", "input", "input_shape"]


def _config(args: argparse.Namespace) -> tuple[AbserveConfig, str]:
    path = getattr(args, "config", None) or read_state().get("config") or DEFAULT_CONFIG
    return load_config(path), str(path)


def _address(args: argparse.Namespace) -> str | None:
    return (getattr(args, "address", None) or os.environ.get("RAY_ADDRESS")
            or read_state().get("ray_address"))


def _version_config(config: AbserveConfig, version: str) -> ModelConfig:
    """The version's ModelConfig (its CPUs, GPUs and precision); defaults for a version
    the config does not deploy."""
    try:
        return config.model_config_for(version)
    except KeyError:
        return ModelConfig(version=version)


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
    from serve.offline.scoring import BatchJob, ray_session, read_input, run_batch

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
            versions = {a.version: _version_config(config, a.version) for a in live}
            shares = ", ".join(f"{a.version} {a.weight:g}%" for a in arms)
            print(f"experiment {exp.name}: weights from {source}: {shares}")
            job = BatchJob(config, versions, args.input_column, args.user_column,
                           tuple((a.version, a.weight, a.baseline) for a in arms), exp.name,
                           args.batch_size, args.actors)
        else:
            job = BatchJob(config, {args.version: _version_config(config, args.version)},
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


def _table_dir(location: str, model: str, table: str) -> tuple[Any, str]:
    """The filesystem and directory of one table of the prediction log at ``location``
    (router/dataplane/predlog.py's layout: a local directory or any pyarrow URI)."""
    from router.dataplane.predlog import open_location, table_dir

    fs, root = open_location(location)
    return fs, table_dir(root, model, table)


def _time_window(batch: Any, since: Any = None, until: Any = None) -> Any:
    import pyarrow.compute as pc

    mask = None
    if since is not None:
        mask = pc.greater_equal(batch["time"], since)
    if until is not None:
        m2 = pc.less(batch["time"], until)
        mask = m2 if mask is None else pc.and_(mask, m2)
    return batch if mask is None else batch.filter(mask)


def _exists(fs: Any, path: str) -> bool:
    import pyarrow.fs as pafs

    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def run_replay(config: AbserveConfig, location: str, version: str, *,
               since: datetime | None = None, until: datetime | None = None,
               out: Path | None = None, batch_size: int = 256, actors: int | None = None,
               stream: Any = None) -> dict[str, Any]:
    """Replay the log at ``location`` with ``version`` on the connected Ray; the summary
    (``serve.offline.core.replay_summary``) with ``out``, where the per-row results are."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import ray.data

    from models.registry import Registry
    from router.dataplane.predlog import FEEDBACK, PARTITIONING, PREDICTIONS
    from serve.offline.core import join_feedback, replay_summary
    from serve.offline.scoring import BatchJob, run_replay_scoring

    hive = pads.partitioning(PARTITIONING, flavor="hive")
    fs, pred_dir = _table_dir(location, config.model, PREDICTIONS)
    if not _exists(fs, pred_dir):
        raise AbserveError(f"no prediction log at {location}: {pred_dir} does not exist "
                           "(log.location in the config says where the routers write it)")
    dataset = pads.dataset(pred_dir, filesystem=fs, format="parquet", partitioning=hive)
    filt = None
    if since is not None:
        filt = pads.field("time") >= pa.scalar(since, pa.timestamp("us", tz="UTC"))
    if until is not None:
        f2 = pads.field("time") < pa.scalar(until, pa.timestamp("us", tz="UTC"))
        filt = f2 if filt is None else filt & f2
    total = dataset.count_rows(filter=filt)
    columns = [c for c in PREDICTION_COLUMNS if c in dataset.schema.names]
    ds = ray.data.read_parquet(pred_dir, filesystem=fs, columns=columns)
    if since is not None or until is not None:
        ds = ds.map_batches(_time_window, batch_format="pyarrow",
                            fn_kwargs={"since": since, "until": until})
    job = BatchJob(config, {version: _version_config(config, version)}, batch_size=batch_size,
                   actors=actors, mode="replay")
    out = out or Path(f"replay-{version}.parquet")
    frame, errors, result = run_replay_scoring(job, ds, total, out, stream)
    feedback = None
    fs, fb_dir = _table_dir(location, config.model, FEEDBACK)
    if _exists(fs, fb_dir):
        fb = pads.dataset(fb_dir, filesystem=fs, format="parquet", partitioning=hive)
        feedback = fb.to_table(columns=[c for c in ("time", "request_id", "label")
                                        if c in fb.schema.names]).to_pandas()
    frame = join_feedback(frame, feedback)
    spec = Registry(config.registry).manifest(config.model, version).spec
    summary = replay_summary(frame, spec, version, skipped=len(errors))
    reasons: dict[str, int] = {}
    for e in errors:
        reasons[e.reason] = reasons.get(e.reason, 0) + 1
    summary.update(out=str(out), seconds=result.seconds, rows_per_s=result.rows_per_s,
                   nodes=result.nodes, skipped_reasons=reasons)
    return summary


def cmd_replay(args: argparse.Namespace) -> int:
    from serve.offline.core import summary_lines
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


def replay_gate(config: AbserveConfig, location: str, candidate: str, min_agreement: float,
                address: str | None) -> dict[str, Any]:
    """``canary start --require-replay``: the candidate's replay must agree with what was
    served on at least ``min_agreement`` percent of the logged rows; AbserveError otherwise."""
    from serve.offline.scoring import ray_session

    with ray_session(address):
        summary = run_replay(config, location, candidate,
                             out=Path(f"replay-{candidate}.parquet"))
    agreement = summary["agreement"]
    if not agreement["n"]:
        raise AbserveError(f"canary refused: the replay of {candidate} on {location} scored no "
                           "rows (is the log empty, or were inputs not logged?)")
    if agreement["rate"] * 100.0 < min_agreement:
        raise AbserveError(
            f"canary refused: {candidate}'s replay agrees with what was served on "
            f"{agreement['rate'] * 100:.2f}% of {agreement['n']:,} logged rows, below "
            f"--min-agreement {min_agreement:g}% (per-row results in {summary['out']})")
    print(f"replay gate passed: {candidate} agrees on {agreement['rate'] * 100:.2f}% of "
          f"{agreement['n']:,} logged rows (>= {min_agreement:g}%)")
    return summary


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
