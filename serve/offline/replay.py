"""Replay: the prediction log's logged inputs scored again with a version, on Ray Data.

``run_replay`` is ``abserve replay``'s job (serve/cli/offline.py prints it). A canary plan's
replay gate (serve.config's ``ReplayGateConfig``) runs it in the experiment controller:
serve/app.py hands ``replay_gate_result`` to the controller, which calls it in a thread
and starts the plan only on a ``passed`` verdict (router/controlplane/service.py). The
controller cannot import this module (tests/unit/test_layers.py: it sits above the planes),
hence the injection. ``replay_verdict`` is the gate's decision, pure.

Ray, pyarrow and the scoring glue are imported inside the functions, as in
serve/offline/scoring.py.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from serve.config import AbserveConfig, ReplayGateConfig
from serve.errors import AbserveError

__all__ = ["PREDICTION_COLUMNS", "replay_gate_result", "replay_verdict", "run_replay"]

PREDICTION_COLUMNS = ["time", "request_id", "experiment", "arm", "version", "fallback",
                      "cached", "label", "outputs", "input", "input_shape"]


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
    from serve.offline.scoring import BatchJob, run_replay_scoring, version_config

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
    job = BatchJob(config, {version: version_config(config, version)}, batch_size=batch_size,
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


def _gate(gate: Mapping[str, Any] | ReplayGateConfig) -> ReplayGateConfig:
    return gate if isinstance(gate, ReplayGateConfig) else ReplayGateConfig.model_validate(
        dict(gate))


def replay_verdict(gate: Mapping[str, Any] | ReplayGateConfig, candidate: str,
                   summary: Mapping[str, Any], since: datetime | None = None
                   ) -> dict[str, Any]:
    """The gate's verdict on a replay's summary: refused with fewer than ``min_rows`` rows
    replayed or an agreement below ``min_agreement_percent``, else passed."""
    g = _gate(gate)
    agreement = summary["agreement"]
    rows = int(agreement["n"])
    percent = None if not rows else float(agreement["rate"]) * 100.0
    window = f" logged since {since:%Y-%m-%d %H:%M} UTC" if since is not None else ""
    out = summary.get("out")
    verdict: dict[str, Any] = {
        "verdict": "refused", "candidate": candidate, "agreement_percent": percent,
        "rows": rows, "skipped": int(summary.get("skipped", 0)), "out": out,
        "since": None if since is None else since.isoformat(),
        "seconds": summary.get("seconds"),
    }
    if rows < g.min_rows:
        verdict["reason"] = (
            f"{candidate}'s replay of {g.log} scored {rows:,} rows{window}, fewer than "
            f"min_rows {g.min_rows:,} (is the log empty or too young, or were inputs not "
            "logged? log.inputs: false keeps none)")
    elif percent is None or percent < g.min_agreement_percent:
        verdict["reason"] = (
            f"{candidate}'s replay agrees with what was served on {percent or 0:.2f}% of "
            f"{rows:,} rows{window}, below min_agreement_percent "
            f"{g.min_agreement_percent:g}% (per-row results in {out})")
    else:
        verdict["verdict"] = "passed"
        verdict["reason"] = (
            f"{candidate} agrees with what was served on {percent:.2f}% of {rows:,} rows"
            f"{window} (>= {g.min_agreement_percent:g}%, >= {g.min_rows:,} rows)")
    return verdict


def replay_gate_result(config: AbserveConfig, gate: Mapping[str, Any] | ReplayGateConfig,
                       candidate: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Run a canary plan's replay gate: the rows logged in the last ``since_hours`` replayed
    with ``candidate`` on the Ray this process is connected to (the controller's cluster),
    the per-row results under ``state.dir``/replays; ``replay_verdict``'s verdict. Blocking:
    the controller calls it in a thread. A replay that cannot run for a reason of ours (no
    log there, say) is refused with that reason; anything else raises."""
    from serve.offline.scoring import ray_session

    g = _gate(gate)
    now = now or datetime.now(UTC)
    since = now - timedelta(hours=g.since_hours)
    out = Path(config.state.dir) / "replays" / f"replay-{candidate}-{now:%Y%m%dT%H%M%SZ}.parquet"
    try:
        with ray_session(None):
            # The progress bar is for a terminal; the controller's log gets the verdict.
            summary = run_replay(config, g.log, candidate, since=since, out=out,
                                 stream=io.StringIO())
    except AbserveError as exc:
        return {"verdict": "refused", "candidate": candidate, "reason": exc.message,
                "agreement_percent": None, "rows": 0, "skipped": 0, "out": None,
                "since": since.isoformat(), "seconds": None}
    return replay_verdict(g, candidate, summary, since)
