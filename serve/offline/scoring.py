"""The Ray Data glue of ``abserve batch-predict`` and ``abserve replay``.

One actor pool (``map_batches`` over ``Scorer``, a callable class) scores the rows: each
actor loads its version(s) through ``deployments.backends.load_backend``, the code the
model deployments serve with, on the device and in the precision of the version's
``ModelConfig`` (its ``num_cpus`` / ``num_gpus`` are the actor's resources too). What
decides anything (decoding, error rows, arms, statistics) is in ``serve.offline.core``.

Ray is imported inside the functions: a driver joining a cluster whose ``ray start``
turned token auth on must opt in before ray is first imported
(``serve.local.ray_head.connect``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.kinds import BINARY, REGRESSION, OutputSpec
from models.registry import Manifest, Registry
from serve.config import AbserveConfig, ModelConfig
from serve.errors import AbserveError, InvalidInput
from serve.offline.core import (
    ROW,
    RowError,
    assign_arms,
    decode_frame,
    decode_tensor,
    output_columns,
    replay_rows,
)

__all__ = [
    "BatchJob",
    "JobResult",
    "Scorer",
    "read_input",
    "ray_session",
    "run_batch",
    "run_replay_scoring",
    "version_config",
]

log = logging.getLogger(__name__)

NODE = "node_id"


# --- the actor ---------------------------------------------------------------------------


def _load(registry_root: str, model: str, settings: Mapping[str, Any]) -> tuple[Manifest, Any]:
    """One version's backend, loaded as ``deployments.model.ModelReplica`` loads it."""
    from deployments.backends import load_backend

    cfg = ModelConfig.model_validate(settings)
    registry = Registry(registry_root)
    manifest = registry.manifest(model, cfg.version)
    artifact = registry.verified_artifact(manifest)
    device = "cuda" if cfg.num_gpus > 0 else "cpu"
    return manifest, load_backend(manifest, artifact, device=device, precision=cfg.precision)


def output_schema(spec: OutputSpec, user_column: str | None) -> pa.Schema:
    """The batch output file's columns (and ``error``, which the driver splits off)."""
    fields: list[pa.Field] = [pa.field(ROW, pa.int64())]
    if user_column:
        fields.append(pa.field(user_column, pa.string()))
    fields += [pa.field("arm", pa.string()), pa.field("version", pa.string()),
               pa.field("label", pa.string())]
    if spec.kind == BINARY:
        fields.append(pa.field("score", pa.float32()))
    elif spec.kind == REGRESSION:
        fields.append(pa.field("values", pa.list_(pa.float32())))
    else:
        fields.append(pa.field("probabilities", pa.list_(pa.float32())))
    fields += [pa.field(NODE, pa.string()), pa.field("error", pa.string())]
    return pa.schema(fields)


REPLAY_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("time", pa.timestamp("us", tz="UTC")),
    ("experiment", pa.string()), ("arm", pa.string()), ("version", pa.string()),
    ("fallback", pa.bool_()), ("cached", pa.bool_()),
    ("served_label", pa.string()), ("replayed_label", pa.string()),
    ("agree", pa.bool_()), ("max_abs_diff", pa.float64()),
    ("served_outputs", pa.list_(pa.float32())), ("replayed_outputs", pa.list_(pa.float32())),
    ("replayed_version", pa.string()), (NODE, pa.string()), ("error", pa.string()),
])


class Scorer:
    """A ``map_batches`` actor: the backends of ``versions`` loaded once, then batches.

    ``mode`` "predict": rows of an input file (``row`` column); with ``arms`` each row's
    version is its user key's arm. ``mode`` "replay": rows of the prediction log, scored
    by the one version and compared with what was served.
    """

    def __init__(self, registry_root: str, model: str, settings: Mapping[str, Mapping[str, Any]],
                 *, mode: str = "predict", input_column: str = "input",
                 user_column: str | None = None, arms: Sequence[tuple[str, float, bool]] = (),
                 salt: str = "", rtol: float = 0.05, atol: float = 0.0) -> None:
        import ray

        from router.dataplane.policy import Arm

        self.backends = {v: _load(registry_root, model, s) for v, s in settings.items()}
        first = next(iter(self.backends.values()))[0]
        self.spec = first.spec
        self.mode, self.input_column, self.user_column = mode, input_column, user_column
        self.arms = tuple(Arm(v, w, baseline=b) for v, w, b in arms)
        self.salt, self.rtol, self.atol = salt, rtol, atol
        self.node_id = ray.get_runtime_context().get_node_id()
        self.schema = (REPLAY_SCHEMA if mode == "replay"
                       else output_schema(self.spec, user_column))

    def __call__(self, frame: pd.DataFrame) -> pa.Table:
        if self.mode == "replay":
            return self._replay(frame)
        return self._predict(frame)

    def _score(self, version: str, batch: np.ndarray, rows: Sequence[Any]
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[Any, str]]]:
        """Outputs of the rows that scored, their positions in ``batch``, and the rows the
        model refused (a whole-batch failure is retried row by row, so one bad row does
        not fail its neighbours)."""
        backend = self.backends[version][1]
        if len(batch) == 0:
            return np.empty((0, self.spec.width), np.float32), np.empty(0, np.int64), []
        try:
            return np.asarray(backend.predict(batch)), np.arange(len(batch)), []
        except Exception:  # noqa: BLE001 - isolated below, row by row
            pass
        outs, ok, bad = [], [], []
        for i in range(len(batch)):
            try:
                outs.append(np.asarray(backend.predict(batch[i:i + 1]))[0])
                ok.append(i)
            except InvalidInput as exc:
                bad.append((rows[i], exc.message))
            except Exception as exc:  # noqa: BLE001 - the row, not the job, fails
                bad.append((rows[i], f"the model failed on this row ({type(exc).__name__}: "
                                     f"{exc})"))
        out = np.stack(outs) if outs else np.empty((0, self.spec.width), np.float32)
        return out, np.asarray(ok, np.int64), bad

    def _predict(self, frame: pd.DataFrame) -> pa.Table:
        n = len(frame)
        rows = frame[ROW].to_numpy(np.int64) if ROW in frame.columns else np.arange(n)
        users: list[Any] = [None] * n
        if self.user_column and self.user_column in frame.columns:
            users = [None if _missing(u) else str(u) for u in frame[self.user_column]]
        errors: dict[int, str] = {}
        if self.arms:
            if self.user_column not in frame.columns:
                versions: list[str | None] = [None] * n
                for i in range(n):
                    errors[i] = f"missing column {self.user_column!r} (the user key)"
            else:
                versions, missing = assign_arms(users, self.arms, self.salt)
                for i in missing:
                    errors[i] = (f"no user key in column {self.user_column!r}: the router "
                                 "draws a random arm for such a request, a batch cannot "
                                 "reproduce it")
        else:
            versions = [next(iter(self.backends))] * n
        decoded = decode_frame(frame, self.backends[next(iter(self.backends))][0],
                               self.input_column)
        for e in decoded.errors:
            pos = int(np.flatnonzero(rows == e.row)[0])
            errors.setdefault(pos, e.reason)
        out_cols: dict[str, list[Any]] = {name: [None] * n for name in self.schema.names}
        out_cols[ROW] = rows.tolist()
        if self.user_column:
            out_cols[self.user_column] = users
        out_cols["arm"] = versions if self.arms else [None] * n
        out_cols[NODE] = [self.node_id] * n
        good = [(j, int(p)) for j, p in enumerate(decoded.positions) if int(p) not in errors]
        by_version: dict[str, list[tuple[int, int]]] = {}
        for j, p in good:
            v = versions[p]
            assert v is not None
            by_version.setdefault(v, []).append((j, p))
        field_name = [f for f in self.schema.names if f in ("probabilities", "score", "values")][0]
        for v, items in by_version.items():
            batch = decoded.batch[[j for j, _ in items]]
            positions = [p for _, p in items]
            outputs, ok, bad = self._score(v, batch, positions)
            for p, reason in bad:
                errors[p] = reason
            cols = output_columns(self.spec, outputs)
            for k, i in enumerate(ok):
                p = positions[int(i)]
                out_cols["version"][p] = v
                out_cols["label"][p] = cols["label"][k]
                out_cols[field_name][p] = cols[field_name][k]
        out_cols["error"] = [errors.get(i) for i in range(n)]
        return pa.Table.from_pydict(out_cols, schema=self.schema)

    def _replay(self, frame: pd.DataFrame) -> pa.Table:
        version = next(iter(self.backends))
        manifest = self.backends[version][0]
        n = len(frame)
        from deployments.backends.base import expected_shape
        from models.verify import window_dtype

        shape = expected_shape(manifest)
        errors: dict[int, str] = {}
        values: list[Any] = []
        for i, (inp, logged_shape) in enumerate(zip(frame["input"], frame["input_shape"],
                                                     strict=True)):
            values.append(inp)
            if _missing(inp):
                errors[i] = ("no input logged (log.inputs: false keeps only its digest): "
                             "this row cannot be replayed")
            elif logged_shape is not None and not _missing(logged_shape) and (
                    tuple(int(d) for d in logged_shape) != shape):
                errors[i] = (f"logged input_shape {tuple(int(d) for d in logged_shape)} is "
                             f"not {version}'s {shape}")
        decoded = decode_tensor([None if i in errors else v for i, v in enumerate(values)],
                                list(range(n)), shape, window_dtype(manifest))
        for e in decoded.errors:
            errors.setdefault(e.row, e.reason)
        keep = [j for j, p in enumerate(decoded.positions) if int(p) not in errors]
        positions = [int(decoded.positions[j]) for j in keep]
        outputs, ok, bad = self._score(version, decoded.batch[keep], positions)
        for p, reason in bad:
            errors[p] = reason
        scored = [positions[int(i)] for i in ok]
        served = []
        width = self.spec.width
        final: list[int] = []
        rep_rows: list[np.ndarray] = []
        for k, p in enumerate(scored):
            logged = frame["outputs"].iloc[p]
            arr = None if _missing(logged) else np.asarray(logged, np.float64).ravel()
            if arr is None or arr.size != width:
                got = "none" if arr is None else f"{arr.size} values"
                errors[p] = f"logged outputs: expected {width} values, got {got}"
                continue
            served.append(arr)
            rep_rows.append(outputs[k])
            final.append(p)
        cols: dict[str, list[Any]] = {name: [None] * n for name in REPLAY_SCHEMA.names}
        for name in ("request_id", "time", "experiment", "arm", "version", "fallback", "cached"):
            if name in frame.columns:
                cols[name] = [None if _missing(x) else x for x in frame[name].tolist()]
        if "time" in frame.columns:
            cols["time"] = [None if _missing(t) else pd.Timestamp(t).to_pydatetime()
                            for t in frame["time"]]
        cols["replayed_version"] = [version] * n
        cols[NODE] = [self.node_id] * n
        if final:
            stats = replay_rows(self.spec, np.stack(served), np.stack(rep_rows),
                                rtol=self.rtol, atol=self.atol)
            for k, p in enumerate(final):
                cols["agree"][p] = bool(stats["agree"][k])
                cols["max_abs_diff"][p] = float(stats["max_abs_diff"][k])
                cols["served_outputs"][p] = served[k].astype(np.float32).tolist()
                cols["replayed_outputs"][p] = np.asarray(rep_rows[k], np.float32).tolist()
                if self.spec.classifies:
                    cols["served_label"][p] = stats["served_label"][k]
                    cols["replayed_label"][p] = stats["replayed_label"][k]
        cols["error"] = [errors.get(i) for i in range(n)]
        return pa.Table.from_pydict(cols, schema=REPLAY_SCHEMA)


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return value is pd.NA or value is pd.NaT


# --- the driver --------------------------------------------------------------------------


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[str]:
    """Ray for the job: the driver's own connection if it has one, the cluster at
    ``address``, else a throwaway local Ray (free ports, stopped afterwards). Yields
    where the job runs, in words."""
    if address:
        from serve.local.ray_head import connect

        connect(address)
    import ray

    if ray.is_initialized():
        yield f"the Ray cluster at {ray.get_runtime_context().gcs_address}"
        return
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield "a local Ray started for this job"
    finally:
        ray.shutdown()


def read_input(path: str) -> pa.Table:
    """The input rows with their ``row`` index: Parquet (a file or a directory), CSV (read
    by pandas) or NumPy ``.npy`` (an ``[n, *input_shape]`` array, as an ``input`` column
    of flattened rows)."""
    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            table = pa.Table.from_pandas(pd.read_csv(p), preserve_index=False)
        elif suffix == ".npy":
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
            if arr.ndim < 2:
                raise AbserveError(f"{path}: a .npy input must be shaped [n, *input_shape], "
                                   f"got {arr.shape}")
            flat = np.ascontiguousarray(arr.reshape(arr.shape[0], -1))
            values = pa.array(flat.ravel())
            table = pa.table({"input": pa.FixedSizeListArray.from_arrays(values,
                                                                         flat.shape[1])})
        elif suffix in (".parquet", ".pq") or p.is_dir():
            table = pq.read_table(p)
        else:
            raise AbserveError(f"{path}: unknown input format; give a .parquet, .csv or .npy "
                               "file (or a directory of Parquet files)")
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise AbserveError(f"cannot read {path}: {exc}") from None
    if ROW in table.column_names:
        table = table.drop_columns([ROW])
    return table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))


@dataclass
class JobResult:
    rows: int = 0
    scored: int = 0
    errors: int = 0
    seconds: float = 0.0
    nodes: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """A one-line progress bar on stderr (rows, rows/s), redrawn at most every 0.5 s."""

    def __init__(self, total: int | None, what: str, stream: Any = None) -> None:
        self.total, self.what, self.done = total, what, 0
        self.started = self.last = time.perf_counter()
        self.stream = stream or sys.stderr

    def add(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        if not force and now - self.last < 0.5:
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-9)
        if self.total:
            filled = int(30 * self.done / self.total)
            bar = "#" * filled + "." * (30 - filled)
            self.stream.write(f"\r{self.what} [{bar}] {self.done:,}/{self.total:,} rows "
                              f"{rate:,.0f} rows/s")
        else:
            self.stream.write(f"\r{self.what} {self.done:,} rows {rate:,.0f} rows/s")
        self.stream.flush()

    def close(self) -> None:
        self.add(0, force=True)
        self.stream.write("\n")


POOL_START_TIMEOUT_S = 600  # how long a job waits for its actor pool before it fails


def version_config(config: AbserveConfig, version: str) -> ModelConfig:
    """The version's ModelConfig (its CPUs, GPUs and precision); defaults for a version
    the config does not deploy."""
    try:
        return config.model_config_for(version)
    except KeyError:
        return ModelConfig(version=version)


def _actors(settings: Mapping[str, ModelConfig], wanted: int | None, blocks: int) -> int:
    """How many actors: ``wanted``, else as many as the free CPUs (GPUs) hold, one per CPU
    at most, no more than there are blocks."""
    if wanted:
        return wanted
    import ray

    free = ray.available_resources()
    cpus = max(cfg.num_cpus for cfg in settings.values())
    gpus = max(cfg.num_gpus for cfg in settings.values())
    n = min(int(free.get("CPU", 1) // cpus), int(free.get("CPU", 1)))
    if gpus > 0:
        n = min(n, int(free.get("GPU", 0) // gpus))
    return max(1, min(n, blocks, 16))


@dataclass
class BatchJob:
    """What one ``batch-predict`` run scores, and with what."""

    config: AbserveConfig
    versions: dict[str, ModelConfig]
    input_column: str = "input"
    user_column: str | None = None
    arms: tuple[tuple[str, float, bool], ...] = ()
    salt: str = ""
    batch_size: int = 256
    actors: int | None = None
    mode: str = "predict"

    def scorer_args(self) -> dict[str, Any]:
        exp = self.config.experiment
        return {
            "fn_constructor_args": (self.config.registry, self.config.model,
                                    {v: c.model_dump(mode="json")
                                     for v, c in self.versions.items()}),
            "fn_constructor_kwargs": {
                "mode": self.mode, "input_column": self.input_column,
                "user_column": self.user_column, "arms": self.arms, "salt": self.salt,
                "rtol": exp.agreement_rtol, "atol": exp.agreement_atol,
            },
        }


MAX_BATCHES_PER_BLOCK = 16


def block_rows(n: int, batch_size: int, actors: int) -> int:
    """Rows per block the driver hands to Ray Data: whole batches, up to 16 of them (each
    block is a task and an object: measured on 100,000 rows of the demo, 4,096-row blocks
    scored 1.45x the rows/s of 256-row ones), but at least 4 blocks per actor so that
    every actor, on every node, gets work."""
    per_actor = -(-n // max(1, 4 * actors))
    batches = max(1, min(MAX_BATCHES_PER_BLOCK, per_actor // max(1, batch_size)))
    return batches * batch_size


def _map(ds: Any, job: BatchJob, actors: int) -> Any:
    settings = job.versions
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        Scorer, batch_format="pandas", batch_size=job.batch_size,
        compute=ActorPoolStrategy(size=actors),
        num_cpus=max(c.num_cpus for c in settings.values()),
        num_gpus=max(c.num_gpus for c in settings.values()) or None,
        **job.scorer_args())


def _data_context() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the output in the input's order
    ctx.enable_progress_bars = False  # ours counts rows and rows/s
    ctx.print_on_execution_start = False
    # Start scoring once the whole actor pool is up: otherwise the first actor (often the
    # one on the driver's node) takes every batch of a short job while the others still
    # load their models, and a pool that cannot be placed fails here instead of waiting.
    ctx.wait_for_min_actors_s = POOL_START_TIMEOUT_S


def _split(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    import pyarrow.compute as pc

    bad = pc.is_valid(table["error"])
    return table.filter(pc.invert(bad)).drop_columns(["error"]), table.filter(bad)


def run_batch(job: BatchJob, table: pa.Table, out: Path, errors_out: Path,
              stream: Any = None) -> JobResult:
    """Score ``table`` (``read_input``'s rows) on the connected Ray cluster; write the
    outputs to ``out`` and the refused rows (row, reason) to ``errors_out``, streaming."""
    import ray.data

    _data_context()
    n = table.num_rows
    actors = _actors(job.versions, job.actors, max(1, -(-n // job.batch_size)))
    block = block_rows(n, job.batch_size, actors)
    chunks = [table.slice(i, block) for i in range(0, n, block)] or [table]
    ds = _map(ray.data.from_arrow(chunks), job, actors)
    stream = stream or sys.stderr
    stream.write(f"scoring {n:,} rows with {', '.join(job.versions)} on {actors} actor(s)\n")
    result = JobResult(rows=n)
    spec_schema: pa.Schema | None = None
    err_fields = [ROW, *([job.user_column] if job.user_column else []), "reason"]
    writer = err_writer = None
    progress = Progress(n, "batch-predict", stream)
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    errors_out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            good, bad = _split(batch)
            if spec_schema is None:
                spec_schema = good.schema
                writer = pq.ParquetWriter(out, spec_schema)
                err_schema = pa.schema([batch.schema.field(ROW),
                                        *([batch.schema.field(job.user_column)]
                                          if job.user_column else []),
                                        pa.field("reason", pa.string())])
                err_writer = pq.ParquetWriter(errors_out, err_schema)
            assert writer is not None and err_writer is not None
            writer.write_table(good)
            err = bad.rename_columns([("reason" if c == "error" else c)
                                      for c in bad.column_names]).select(err_fields)
            err_writer.write_table(err)
            result.scored += good.num_rows
            result.errors += bad.num_rows
            for node in batch[NODE].to_pylist():
                result.nodes[node] = result.nodes.get(node, 0) + 1
            progress.add(batch.num_rows)
    finally:
        if writer is not None:
            writer.close()
        if err_writer is not None:
            err_writer.close()
    progress.close()
    result.seconds = time.perf_counter() - started
    return result


def run_replay_scoring(job: BatchJob, ds: Any, total: int | None, out: Path,
                       stream: Any = None) -> tuple[pd.DataFrame, list[RowError], JobResult]:
    """Score the prediction log's rows (a Ray dataset) with the job's one version; write
    the per-row results to ``out``; return them (and the rows that could not be replayed)
    for the summary."""
    _data_context()
    actors = _actors(job.versions, job.actors, max(1, -(-(total or 1) // job.batch_size)))
    ds = _map(ds, job, actors)
    stream = stream or sys.stderr
    stream.write(f"replaying with {', '.join(job.versions)} on {actors} actor(s)\n")
    progress = Progress(total, "replay", stream)
    started = time.perf_counter()
    parts: list[pa.Table] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        parts.append(batch)
        progress.add(batch.num_rows)
    progress.close()
    table = pa.concat_tables(parts) if parts else REPLAY_SCHEMA.empty_table()
    good, bad = _split(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(good, out)
    result = JobResult(rows=table.num_rows, scored=good.num_rows, errors=bad.num_rows,
                       seconds=time.perf_counter() - started)
    for node in table[NODE].to_pylist():
        result.nodes[node] = result.nodes.get(node, 0) + 1
    errors = [RowError(i, str(r)) for i, r in enumerate(bad["error"].to_pylist())]
    frame = good.to_pandas()
    frame.attrs["bad_request_ids"] = bad["request_id"].to_pylist()
    return frame, errors, result
