"""The prediction log: served rows (or a sample) and feedback as Parquet, off the request path.

Layout, under ``log.location`` (a local directory, or any pyarrow filesystem URI
such as ``s3://bucket/prefix``), Hive-partitioned by the UTC hour of each row so that
``pyarrow.dataset`` and ``ray.data.read_parquet`` read it as one table::

    <location>/<model>/predictions/date=YYYY-MM-DD/hour=HH/<replica>-<seq>.parquet
    <location>/<model>/feedback/date=YYYY-MM-DD/hour=HH/<replica>-<seq>.parquet

``PREDICTIONS_SCHEMA`` (one row per input row; ``TABULAR_PREDICTIONS_SCHEMA`` for a
tabular model, whose ``input`` is the canonical float64 row) and ``FEEDBACK_SCHEMA``
are the contract readers build on (``abserve replay``). Item i of a request R that
carried several rows is ``R/i``; a one-row request is ``R``: the ids the feedback join
uses (router/http/follower.py).

The request path only appends one entry per request to a bounded buffer, under an
uncontended lock (a few hundred nanoseconds); when ``log.max_buffer_rows`` rows wait
(buffered or converted, not yet written), further rows are dropped and counted, never
waited for. A background thread turns the entries into Arrow columns (digests, labels,
flattening) every ``CONVERT_INTERVAL_S`` (so that no single step holds the GIL for
long), writes them every ``log.flush_interval_s`` or as soon as ``log.max_file_rows``
rows wait, one file per hour partition (and per ``max_file_rows`` rows), and deletes
partitions older than ``log.retention_hours``. A write that fails (a full disk, an
unreachable store) drops that file's rows, counts them as failed and logs at most once
per interval; it never reaches a request. What a crash can lose is what was not yet
written: at most one flush interval of rows plus the buffer (``max_buffer_rows``).
``close()`` writes what is buffered.

Memory: the columns are built from numpy buffers (``pa.Array.from_buffers``), never
with ``pa.array``, whose first call imports pandas into the router replica (measured
+32-36 MB of resident memory for a writer that needs none of it; a test keeps it out),
and the files dictionary-encode only the repeated string columns (``DICTIONARY``):
dictionary pages for the float columns doubled pyarrow's peak pool and the write time.

Pure: numpy and pyarrow, no Ray; the clock is injected.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from models.kinds import OutputSpec

if TYPE_CHECKING:
    from router.dataplane.core import Prediction

__all__ = [
    "FEEDBACK",
    "FEEDBACK_SCHEMA",
    "PARTITIONING",
    "PREDICTIONS",
    "PREDICTIONS_SCHEMA",
    "TABULAR_PREDICTIONS_SCHEMA",
    "LogCounts",
    "LogSettings",
    "PredictionLog",
    "file_name",
    "open_location",
    "partition_dir",
    "partition_hour",
    "predictions_schema",
    "row_ids",
    "table_dir",
]

log = logging.getLogger("ray.serve")

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
TABLES = (PREDICTIONS, FEEDBACK)

TIME = pa.timestamp("us", tz="UTC")
# Entries become Arrow tables this often on the writer's thread (writes: log.flush_interval_s).
CONVERT_INTERVAL_S = 1.0
# Dictionary-encoded columns: the repeated strings; not the floats, the ids or the digests.
DICTIONARY = ["experiment", "arm", "version", "fallback_reason", "label"]
# The writer's buffers come from the C allocator, which gives freed pages back: with
# pyarrow's default pool (mimalloc), the first write of 10 s of rows at 950 req/s left
# the process 54 MB larger for good (measured; 24 MB with this one).
_POOL = pa.system_memory_pool()


def predictions_schema(input_type: pa.DataType | None = None) -> pa.Schema:
    """The predictions table; ``input_type`` float32 (tensor models, the default) or
    float64 (tabular models)."""
    input_type = pa.float32() if input_type is None else input_type
    return pa.schema([
        pa.field("time", TIME, nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),  # what the policy (or the pin) chose
        pa.field("version", pa.string(), nullable=False),  # the version that answered
        pa.field("fallback", pa.bool_(), nullable=False),
        pa.field("fallback_reason", pa.string()),
        pa.field("cached", pa.bool_(), nullable=False),
        pa.field("latency_ms", pa.float32(), nullable=False),  # the whole request's
        pa.field("label", pa.string()),  # null for a regression model
        pa.field("outputs", pa.list_(pa.float32()), nullable=False),
        pa.field("input", pa.list_(input_type)),  # null when log.inputs is false
        pa.field("input_digest", pa.string(), nullable=False),  # sha256 of the row's bytes
        pa.field("input_shape", pa.list_(pa.int32()), nullable=False),
    ])


PREDICTIONS_SCHEMA = predictions_schema(pa.float32())
TABULAR_PREDICTIONS_SCHEMA = predictions_schema(pa.float64())
FEEDBACK_SCHEMA = pa.schema([
    pa.field("time", TIME, nullable=False),
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("label", pa.string()),  # null for a regression model
    pa.field("value", pa.list_(pa.float64())),  # null for a classifier
])
# The partition columns a reader gets back (pyarrow.dataset.dataset(..., partitioning=...)).
PARTITIONING = pa.schema([pa.field("date", pa.string()), pa.field("hour", pa.int32())])

_PARTITION_RE = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/?$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


# ---------------------------------------------------------------- paths


def open_location(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path of ``log.location``: a URI (``s3://...``, ``gs://...``,
    ``file:///...``) through pyarrow, anything else a local directory."""
    if "://" in location:
        fs, path = pafs.FileSystem.from_uri(location)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(location)


def table_dir(root: str, model: str, table: str) -> str:
    return f"{root.rstrip('/')}/{model}/{table}"


def partition_dir(root: str, model: str, table: str, when: datetime) -> str:
    """The hour partition a row written at ``when`` (UTC) belongs to."""
    when = when.astimezone(UTC)
    return f"{table_dir(root, model, table)}/date={when:%Y-%m-%d}/hour={when:%H}"


def partition_hour(path: str) -> datetime | None:
    """The start of the hour a partition directory holds (UTC); None if not one."""
    m = _PARTITION_RE.search(path)
    if m is None:
        return None
    day = datetime.strptime(m.group(1), "%Y-%m-%d").replace(tzinfo=UTC)
    return day + timedelta(hours=int(m.group(2)))


def file_name(replica: str, seq: int) -> str:
    """``<replica>-<seq>.parquet``: a replica's files never collide with another's."""
    return f"{_UNSAFE.sub('_', replica) or 'replica'}-{seq:06d}.parquet"


def row_ids(request_id: str, n: int) -> list[str]:
    """The id of each row of a request: ``R`` for one row, ``R/i`` for several."""
    if n == 1:
        return [request_id]
    return [f"{request_id}/{i}" for i in range(n)]


# ---------------------------------------------------------------- the writer


class LogSettings(Protocol):
    """What the writer reads of serve/config.py's ``LogConfig`` (the ``log:`` section)."""

    @property
    def location(self) -> str: ...
    @property
    def sample(self) -> float: ...
    @property
    def sample_by_experiment(self) -> Mapping[str, float]: ...
    @property
    def inputs(self) -> bool: ...
    @property
    def flush_interval_s(self) -> float: ...
    @property
    def max_buffer_rows(self) -> int: ...
    @property
    def max_file_rows(self) -> int: ...
    @property
    def retention_hours(self) -> float | None: ...


@dataclass
class LogCounts:
    """Rows per table: written to a file, dropped (buffer full), failed (the write did)."""

    written: int = 0
    dropped: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"written": self.written, "dropped": self.dropped, "failed": self.failed}


# (wall time s, request id, experiment, prediction, input batch, latency ms)
_PredEntry = tuple[float, str, str, "Prediction", np.ndarray, float]
# (wall time s, request id, truth: a label index or the values)
_FeedEntry = tuple[float, str, "int | list[float]"]

Counter = Callable[[str, str, int], None]  # (table, written|dropped|failed, rows)


class PredictionLog:
    """One router replica's writer. ``record``/``feedback`` on the request path (cheap,
    never blocking, never raising); ``flush`` on the writer's own thread."""

    def __init__(
        self,
        config: LogSettings,
        *,
        model: str,
        replica: str,
        spec: OutputSpec,
        tabular: bool = False,
        filesystem: pafs.FileSystem | None = None,
        root: str | None = None,
        clock: Callable[[], float] = time.time,
        counter: Counter | None = None,
        start: bool = True,
    ) -> None:
        """``clock``: wall time in seconds since the epoch (the rows' time and their hour
        partition). ``filesystem``/``root``: where to write (default: ``config.location``).
        ``counter``: told of the rows written, dropped and failed, from the flush thread
        (the Ray metric). ``start=False``: no thread; the caller calls ``flush`` (tests)."""
        self.config = config
        # The sampling fractions, read once: the request path looks them up per request.
        self._sample = config.sample
        self._sample_by_experiment = dict(config.sample_by_experiment)
        self.model, self.replica, self.spec = model, replica, spec
        self.input_dtype = np.float64 if tabular else np.float32
        self.schema = TABULAR_PREDICTIONS_SCHEMA if tabular else PREDICTIONS_SCHEMA
        if filesystem is None or root is None:
            filesystem, root = open_location(config.location)
        self.fs, self.root = filesystem, root
        self._local = isinstance(filesystem, pafs.LocalFileSystem)
        self.clock = clock
        self.counter = counter
        self.counts = {t: LogCounts() for t in TABLES}
        self._reported = {t: LogCounts() for t in TABLES}
        self._lock = threading.Lock()
        self._preds: list[_PredEntry] = []
        self._feedback: list[_FeedEntry] = []
        self._rows = 0  # rows not yet written (buffered or converted, both tables)
        # Converted and waiting for the next write: (table, hour) -> tables.
        self._converted: dict[tuple[str, datetime], list[pa.Table]] = {}
        self._seq = 0
        self._last_warning: float | None = None
        self._last_retention: float | None = None
        self._write_lock = threading.Lock()  # one flush at a time (the thread, close)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="abserve-predlog",
                                            daemon=True)
            self._thread.start()

    def set_sample(self, fraction: float | None) -> None:
        """Measurement only (``abserve bench`` variant l switches the log off and on in
        the same processes): log ``fraction`` of every experiment's requests from now on;
        None: the config's fractions again. Not persisted: a new replica reads the config."""
        if fraction is None:
            self._sample = self.config.sample
            self._sample_by_experiment = dict(self.config.sample_by_experiment)
            return
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"a sample fraction lies in [0, 1], not {fraction}")
        # Two plain assignments: the request path reads either the old or the new share.
        self._sample_by_experiment = {}
        self._sample = float(fraction)

    # ------------------------------------------------------------ request path

    def sampled(self, request_id: str, experiment: str) -> bool:
        """Whether a request is logged: a hash of its id against the experiment's fraction,
        so every replica (and a replay) decides the same."""
        fraction = self._sample_by_experiment.get(experiment, self._sample)
        if fraction >= 1.0:
            return True
        return zlib.crc32(request_id.encode()) < fraction * 4294967296.0

    def record(
        self, request_id: str, experiment: str, pred: Prediction, batch: np.ndarray,
        latency_ms: float,
    ) -> bool:
        """Buffer one served request (``batch``: its input rows, not modified afterwards).
        False when it was not kept (not sampled, or the buffer is full)."""
        if self._closed or not self.sampled(request_id, experiment):
            return False
        n = len(batch)
        entry = (self.clock(), request_id, experiment, pred, batch, latency_ms)
        with self._lock:
            if self._rows + n > self.config.max_buffer_rows:
                self.counts[PREDICTIONS].dropped += n
                return False
            self._preds.append(entry)
            self._rows += n
            full = self._rows >= self.config.max_file_rows
        if full:
            self._wake.set()
        return True

    def feedback(self, request_id: str, truth: int | list[float]) -> bool:
        """Buffer one accepted feedback (a label index, or a regression model's values)."""
        if self._closed:
            return False
        entry = (self.clock(), request_id, truth)
        with self._lock:
            if self._rows + 1 > self.config.max_buffer_rows:
                self.counts[FEEDBACK].dropped += 1
                return False
            self._feedback.append(entry)
            self._rows += 1
        return True

    @property
    def buffered_rows(self) -> int:
        return self._rows

    def stats(self) -> dict[str, Any]:
        """For /stats: rows per table and what waits in the buffer."""
        return {"buffered": self._rows, **{t: c.as_dict() for t, c in self.counts.items()}}

    # ------------------------------------------------------------ the flush thread

    def _run(self) -> None:
        interval = self.config.flush_interval_s
        step = min(CONVERT_INTERVAL_S, interval)
        due = time.monotonic() + interval
        while not self._stop.is_set():
            woken = self._wake.wait(step)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if woken or time.monotonic() >= due:
                    self.flush()
                    due = time.monotonic() + interval
                else:
                    self.convert()
            except Exception:  # noqa: BLE001 - the thread must outlive any bug in a flush
                log.exception("prediction log: flush failed")

    def convert(self) -> None:
        """Turn the buffered entries into Arrow tables, kept until the next write."""
        with self._write_lock:
            self._convert()

    def flush(self) -> None:
        """Write what is buffered, then enforce retention (at most once a minute)."""
        with self._write_lock:
            self._convert()
            converted, self._converted = self._converted, {}
            for (table_name, hour), tables in converted.items():
                table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
                self._write(table_name, hour, table)
            now = self.clock()
            if self.config.retention_hours is not None and (
                self._last_retention is None or now - self._last_retention >= 60.0
            ):
                self._last_retention = now
                self.enforce_retention(now)
            self._report()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the thread and write what is buffered (idempotent)."""
        if self._closed:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._closed = True
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - shutting down: say so, never raise
            log.exception("prediction log: the last flush failed")

    # ------------------------------------------------------------ converting

    def _forget(self, rows: int) -> None:
        """Rows written or failed no longer count against ``max_buffer_rows``."""
        with self._lock:
            self._rows -= rows

    def _convert(self) -> None:
        with self._lock:
            preds, self._preds = self._preds, []
            feedback, self._feedback = self._feedback, []
        tables: tuple[tuple[str, list[Any], Callable[[list[Any]], Any]], ...] = (
            (PREDICTIONS, preds, self._predictions_table),
            (FEEDBACK, feedback, self._feedback_table),
        )
        for table_name, entries, build in tables:
            if not entries:
                continue
            for hour, idx in self._by_hour([e[0] for e in entries]).items():
                group = [entries[i] for i in idx]
                rows = sum(len(e[4]) for e in group) if table_name == PREDICTIONS else len(group)
                try:
                    table = build(group)
                except Exception:  # noqa: BLE001 - a malformed entry must not stop the log
                    log.exception("prediction log: could not build %d %s rows", rows,
                                  table_name)
                    self.counts[table_name].failed += rows
                    self._forget(rows)
                    continue
                self._converted.setdefault((table_name, hour), []).append(table)

    def _by_hour(self, times: Sequence[float]) -> dict[datetime, list[int]]:
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(times):
            groups.setdefault(int(t // 3600), []).append(i)  # UTC hours have 3600 s
        return {datetime.fromtimestamp(h * 3600, UTC): idx for h, idx in groups.items()}

    def _feedback_table(self, group: list[_FeedEntry]) -> pa.Table:
        n = len(group)
        times = _numbers([round(e[0] * 1e6) for e in group], np.int64, TIME)
        rids = _strings([e[1] for e in group])
        if self.spec.classifies:
            names = self.spec.class_labels
            labels = _strings([names[e[2]] if isinstance(e[2], int) else None for e in group])
            values = pa.nulls(n, FEEDBACK_SCHEMA.field("value").type)
        else:
            labels = pa.nulls(n, pa.string())
            values = _ragged([np.asarray(e[2], dtype=np.float64).reshape(-1) for e in group],
                             FEEDBACK_SCHEMA.field("value").type)
        return pa.Table.from_arrays([times, rids, labels, values], schema=FEEDBACK_SCHEMA)

    def _predictions_table(self, group: list[_PredEntry]) -> pa.Table:
        spec = self.spec
        counts = np.fromiter((len(e[4]) for e in group), np.int64, len(group))
        n = int(counts.sum())
        inputs = [np.ascontiguousarray(e[4], dtype=self.input_dtype).reshape(len(e[4]), -1)
                  for e in group]
        outputs = [np.asarray(e[3].outputs, dtype=np.float32).reshape(len(e[4]), -1)
                   for e in group]
        rids: list[str] = []
        cached: list[bool] = []
        digests: list[str] = []
        for (_, rid, _, pred, _, _), rows in zip(group, inputs, strict=True):
            k = len(rows)
            rids += row_ids(rid, k)
            cached += [bool(c) for c in pred.cached] if len(pred.cached) == k else [False] * k
            digests += [hashlib.sha256(r.tobytes()).hexdigest() for r in rows]

        def each(values: Sequence[Any]) -> list[Any]:  # one value per request -> per row
            return [v for v, k in zip(values, counts.tolist(), strict=True) for _ in range(k)]

        if spec.classifies:
            names = spec.class_labels
            if len({o.shape[1] for o in outputs}) == 1:
                index = spec.labels_of(np.concatenate(outputs)).tolist()
            else:
                index = [int(i) for o in outputs for i in spec.labels_of(o)]
            labels = _strings([names[i] for i in index])
        else:
            labels = pa.nulls(n, pa.string())
        input_type = self.schema.field("input").type
        input_col = (_lists(inputs, input_type) if self.config.inputs
                     else pa.nulls(n, input_type))
        shapes = [np.asarray(e[4].shape[1:], dtype=np.int32) for e in group]
        return pa.Table.from_arrays([
            _numbers(np.repeat(np.round(np.array([e[0] for e in group]) * 1e6), counts),
                     np.int64, TIME),
            _strings(rids),
            _strings(each([e[2] for e in group])),
            _strings(each([e[3].arm for e in group])),
            _strings(each([e[3].version for e in group])),
            _bools(np.repeat(np.array([e[3].fallback for e in group], dtype=bool), counts)),
            _strings(each([e[3].fallback_reason for e in group])),
            _bools(np.array(cached, dtype=bool)),
            _numbers(np.repeat(np.array([e[5] for e in group]), counts), np.float32,
                     pa.float32()),
            labels,
            _lists(outputs, pa.list_(pa.float32())),
            input_col,
            _strings(digests),
            _ragged(each(shapes), pa.list_(pa.int32())),
        ], schema=self.schema)

    # ------------------------------------------------------------ writing

    def _write(self, table_name: str, hour: datetime, table: pa.Table) -> None:
        """One file per ``max_file_rows`` rows of one hour partition; failures counted."""
        directory = partition_dir(self.root, self.model, table_name, hour)
        step = self.config.max_file_rows
        for start in range(0, table.num_rows, step):
            part = table.slice(start, step)
            self._seq += 1
            name = file_name(self.replica, self._seq)
            try:
                self.fs.create_dir(directory, recursive=True)
                if self._local:  # readers skip dot files: a half-written file is never read
                    tmp = f"{directory}/.{name}.tmp"
                    pq.write_table(part, tmp, filesystem=self.fs, use_dictionary=DICTIONARY,
                                   memory_pool=_POOL)
                    self.fs.move(tmp, f"{directory}/{name}")
                else:  # an object store's PUT is atomic
                    pq.write_table(part, f"{directory}/{name}", filesystem=self.fs,
                                   use_dictionary=DICTIONARY, memory_pool=_POOL)
            except Exception as exc:  # noqa: BLE001 - full disk, no store, no permission
                self.counts[table_name].failed += part.num_rows
                self._warn(f"could not write {part.num_rows} {table_name} rows to "
                           f"{directory}: {exc}")
                if self._local:
                    _quietly(self.fs.delete_file, f"{directory}/.{name}.tmp")
            else:
                self.counts[table_name].written += part.num_rows
            finally:
                self._forget(part.num_rows)

    def _warn(self, message: str) -> None:
        now = self.clock()
        if self._last_warning is None or now - self._last_warning >= self.config.flush_interval_s:
            self._last_warning = now
            log.warning("prediction log: %s (failed rows so far: %s)", message,
                        {t: c.failed for t, c in self.counts.items()})

    def _report(self) -> None:
        """Hand the counts since the last report to the metric."""
        if self.counter is None:
            return
        for table, counts in self.counts.items():
            seen = self._reported[table]
            for result in ("written", "dropped", "failed"):
                delta = getattr(counts, result) - getattr(seen, result)
                if delta:
                    setattr(seen, result, getattr(seen, result) + delta)
                    try:
                        self.counter(table, result, delta)
                    except Exception:  # noqa: BLE001 - a metric must not stop the log
                        log.exception("prediction log: metric failed")

    # ------------------------------------------------------------ retention

    def enforce_retention(self, now: float | None = None) -> list[str]:
        """Delete the hour partitions that ended more than ``retention_hours`` ago; the
        paths deleted. Every replica may do it: deleting is idempotent."""
        hours = self.config.retention_hours
        if hours is None:
            return []
        cutoff = datetime.fromtimestamp(self.clock() if now is None else now, UTC) - timedelta(
            hours=hours
        )
        deleted: list[str] = []
        for table in TABLES:
            base = table_dir(self.root, self.model, table)
            try:
                days = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
                for day in days:
                    if day.type != pafs.FileType.Directory or not day.base_name.startswith("date="):
                        continue
                    parts = self.fs.get_file_info(pafs.FileSelector(day.path))
                    left = 0
                    for part in parts:
                        start = partition_hour(part.path)
                        if start is None or start + timedelta(hours=1) > cutoff:
                            left += 1
                            continue
                        self.fs.delete_dir(part.path)
                        deleted.append(part.path)
                    if left == 0:
                        self.fs.delete_dir(day.path)
            except FileNotFoundError:
                continue  # another replica deleted it first
            except Exception as exc:  # noqa: BLE001
                self._warn(f"retention could not clean {base}: {exc}")
        return deleted


# ---------------------------------------------------------------- Arrow columns from numpy
# pa.Array.from_buffers over numpy memory: no per-value Python objects, and no pandas
# (pa.array imports it on first use; see the module's docstring).

_NUMPY = {pa.int32(): np.int32, pa.int64(): np.int64, pa.float32(): np.float32,
          pa.float64(): np.float64}


def _bitmap(valid: np.ndarray) -> pa.Buffer | None:
    """An Arrow validity (or boolean) bitmap; None when every value is valid."""
    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def _numbers(values: Any, dtype: type, arrow_type: pa.DataType) -> pa.Array:
    data: np.ndarray = np.ascontiguousarray(values, dtype=dtype)
    return pa.Array.from_buffers(arrow_type, len(data), [None, pa.py_buffer(data)])


def _bools(values: np.ndarray) -> pa.Array:
    bits = pa.py_buffer(np.packbits(values.astype(bool), bitorder="little"))
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, bits])


def _offsets(lengths: Sequence[int] | np.ndarray) -> pa.Buffer:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.py_buffer(offsets)


def _strings(values: Sequence[str | None]) -> pa.Array:
    encoded = [b"" if v is None else v.encode() for v in values]
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    return pa.Array.from_buffers(pa.string(), len(values), [
        _bitmap(valid), _offsets(np.fromiter(map(len, encoded), np.int64, len(encoded))),
        pa.py_buffer(b"".join(encoded)),
    ])


def _list_array(flat: np.ndarray, lengths: Sequence[int] | np.ndarray,
                list_type: pa.DataType) -> pa.Array:
    """``flat``'s values cut into lists of ``lengths``."""
    dtype = _NUMPY[list_type.value_type]
    offsets = pa.Array.from_buffers(pa.int32(), len(lengths) + 1, [None, _offsets(lengths)])
    return pa.ListArray.from_arrays(offsets, _numbers(flat, dtype, list_type.value_type),
                                    type=list_type)


def _ragged(rows: Sequence[np.ndarray], list_type: pa.DataType) -> pa.Array:
    """One list per 1-d array (of any lengths)."""
    flat = np.concatenate(rows) if rows else np.empty(0, _NUMPY[list_type.value_type])
    return _list_array(flat, [len(r) for r in rows], list_type)


def _lists(blocks: Sequence[np.ndarray], list_type: pa.DataType) -> pa.Array:
    """The rows of several (n_i, width_i) arrays as one list array, without a Python loop
    over the rows."""
    flat = np.concatenate([b.reshape(-1) for b in blocks])
    lengths = np.repeat([b.shape[1] if b.ndim > 1 else 1 for b in blocks],
                        [len(b) for b in blocks])
    return _list_array(flat, lengths, list_type)


def _quietly(fn: Callable[[str], Any], path: str) -> None:
    with contextlib.suppress(Exception):
        fn(path)
