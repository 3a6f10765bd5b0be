"""router/dataplane/predlog.py: batching, hour partitions, retention, sampling, inputs off,
the full buffer, and failing stores that never reach the caller. Real Parquet files in a
temporary directory, a fake clock, no thread unless the test is about it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from models.kinds import OutputSpec
from router.dataplane.core import Prediction
from router.dataplane.predlog import (
    FEEDBACK_SCHEMA,
    PARTITIONING,
    PREDICTIONS_SCHEMA,
    TABULAR_PREDICTIONS_SCHEMA,
    PredictionLog,
    file_name,
    partition_dir,
    partition_hour,
    row_ids,
)
from serve.config import LogConfig

SPEC = OutputSpec.of("multiclass", ["walk", "run", "sit"])
T0 = datetime(2026, 12, 2, 10, 30, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def pred(n: int, version: str = "v2", arm: str = "v2", *, fallback: bool = False,
         reason: str | None = None, cached: bool = False, spec: OutputSpec | None = None
         ) -> Prediction:
    spec = spec or SPEC
    rng = np.random.default_rng(n)
    if spec.kind == "multiclass":
        out = rng.dirichlet(np.ones(spec.width), size=n)
    else:
        out = rng.random((n, spec.width))
    return Prediction(outputs=out, version=version, arm=arm, cached=(cached,) * n,
                      cache_status="HIT" if cached else "MISS", fallback=fallback,
                      fallback_reason=reason, spec=spec)


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4, 3)).astype(np.float32)


def make(tmp_path: Path, clock: Clock | None = None, counter: Any = None,
         **cfg: Any) -> PredictionLog:
    config = LogConfig(enabled=True, location=str(tmp_path), **cfg)
    return PredictionLog(config, model="activity", replica="r#1", spec=SPEC,
                         clock=clock or Clock(), counter=counter, start=False)


def read(tmp_path: Path, table: str = "predictions") -> pa.Table:
    return ds.dataset(tmp_path / "activity" / table, format="parquet",
                      partitioning=ds.partitioning(PARTITIONING, flavor="hive")).to_table()


def files(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet"))


def test_a_flush_writes_every_row_with_its_request_and_answer(tmp_path: Path) -> None:
    plog = make(tmp_path)
    x = batch(3)
    p3 = pred(3, "v1", "v2", fallback=True, reason="timeout")
    assert plog.record("req-a", "exp", p3, x, 12.5)
    assert plog.record("req-b", "exp", pred(1, cached=True), batch(1, 1), 0.4)
    assert files(tmp_path) == []  # nothing written before the flush
    plog.flush()
    assert files(tmp_path) == [
        "activity/predictions/date=2026-12-02/hour=10/r_1-000001.parquet"
    ]
    t = read(tmp_path)
    assert t.schema.remove(t.schema.get_field_index("date")).remove(
        t.schema.get_field_index("date")) == PREDICTIONS_SCHEMA  # date, hour appended
    rows = t.to_pylist()
    assert [r["request_id"] for r in rows] == ["req-a/0", "req-a/1", "req-a/2", "req-b"]
    a0 = rows[0]
    assert (a0["arm"], a0["version"], a0["fallback"], a0["fallback_reason"], a0["cached"]) == (
        "v2", "v1", True, "timeout", False)
    assert a0["latency_ms"] == pytest.approx(12.5)
    assert a0["time"] == datetime.fromtimestamp(T0, UTC)
    assert a0["label"] == SPEC.class_labels[int(np.argmax(p3.outputs[0]))]
    assert np.allclose(a0["outputs"], p3.outputs[0], atol=1e-6)
    assert np.array_equal(np.array(a0["input"], np.float32), x[0].ravel())
    assert a0["input_shape"] == [4, 3]
    assert a0["input_digest"] == hashlib.sha256(x[0].tobytes()).hexdigest()
    assert rows[3]["cached"] is True and rows[3]["fallback_reason"] is None
    assert (rows[3]["date"], rows[3]["hour"]) == ("2026-12-02", 10)
    assert plog.counts["predictions"].written == 4 and plog.buffered_rows == 0


def test_rows_go_to_the_hour_they_were_served_in_and_files_rotate(tmp_path: Path) -> None:
    clock = Clock()
    plog = make(tmp_path, clock, max_file_rows=5)
    plog.record("a", "exp", pred(3), batch(3), 1.0)
    clock.t += 3600  # the next hour
    plog.record("b", "exp", pred(4), batch(4), 1.0)
    plog.record("c", "exp", pred(4), batch(4), 1.0)
    clock.t += 24 * 3600 - 10 * 3600  # the next day, 01:30
    plog.record("d", "exp", pred(1), batch(1), 1.0)
    plog.flush()
    assert files(tmp_path) == [
        "activity/predictions/date=2026-12-02/hour=10/r_1-000001.parquet",
        "activity/predictions/date=2026-12-02/hour=11/r_1-000002.parquet",  # 5 rows
        "activity/predictions/date=2026-12-02/hour=11/r_1-000003.parquet",  # 3 rows
        "activity/predictions/date=2026-12-03/hour=01/r_1-000004.parquet",
    ]
    t = read(tmp_path)
    assert t.num_rows == 12
    by_hour = {(r["date"], r["hour"]): r["request_id"] for r in t.to_pylist()}
    assert by_hour[("2026-12-03", 1)] == "d"


def test_max_file_rows_wakes_the_flush_thread(tmp_path: Path) -> None:
    config = LogConfig(enabled=True, location=str(tmp_path), flush_interval_s=3600,
                       max_file_rows=4)
    plog = PredictionLog(config, model="activity", replica="r", spec=SPEC)
    try:
        plog.record("a", "exp", pred(2), batch(2), 1.0)
        time.sleep(0.3)
        assert files(tmp_path) == []  # below max_file_rows: waits for the interval
        plog.record("b", "exp", pred(2), batch(2), 1.0)
        deadline = time.monotonic() + 10
        while not files(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert read(tmp_path).num_rows == 4
    finally:
        plog.close()


def test_close_writes_what_is_buffered_and_takes_no_more(tmp_path: Path) -> None:
    config = LogConfig(enabled=True, location=str(tmp_path), flush_interval_s=3600)
    plog = PredictionLog(config, model="activity", replica="r", spec=SPEC)
    plog.record("a", "exp", pred(2), batch(2), 1.0)
    plog.feedback("a/0", 1)
    plog.close()
    assert read(tmp_path).num_rows == 2 and read(tmp_path, "feedback").num_rows == 1
    assert not plog.record("b", "exp", pred(1), batch(1), 1.0)
    plog.close()  # idempotent


def test_retention_deletes_old_partitions_only(tmp_path: Path) -> None:
    clock = Clock()
    plog = make(tmp_path, clock, retention_hours=2)
    plog.record("old", "exp", pred(1), batch(1), 1.0)  # 10:30 -> partition 10:00-11:00
    plog.feedback("old", 0)
    plog.flush()
    clock.t += 2 * 3600  # 12:30
    plog.record("new", "exp", pred(1), batch(1), 1.0)
    plog.enforce_retention()
    assert len(files(tmp_path)) == 2  # 10:00-11:00 ended 1.5 h ago: kept
    clock.t += 1800  # 13:00: it ended 2 h ago
    deleted = plog.enforce_retention()
    assert sorted(Path(p).name for p in deleted) == ["hour=10", "hour=10"]
    plog.flush()
    assert [r["request_id"] for r in read(tmp_path).to_pylist()] == ["new"]
    assert not (tmp_path / "activity" / "feedback" / "date=2026-12-02").exists()


def test_retention_runs_on_the_flush_at_most_once_a_minute(tmp_path: Path) -> None:
    clock = Clock()
    plog = make(tmp_path, clock, retention_hours=1)
    plog.record("a", "exp", pred(1), batch(1), 1.0)  # 10:30: partition 10:00-11:00
    clock.t += 5400 - 40  # 11:59:20: it ended 59 min ago
    plog.flush()  # writes it; retention runs and keeps it
    assert len(files(tmp_path)) == 1
    clock.t += 50  # 12:00:10: it is due for deletion, but retention ran 50 s ago
    plog.flush()
    assert len(files(tmp_path)) == 1
    clock.t += 11  # 61 s after the last run
    plog.flush()
    assert files(tmp_path) == []


def test_sampling_is_a_deterministic_fraction_per_experiment(tmp_path: Path) -> None:
    plog = make(tmp_path, sample_percent=25, sample_percent_by_experiment={"all": 100})
    ids = [f"req-{i}" for i in range(4000)]
    kept = [rid for rid in ids if plog.sampled(rid, "exp")]
    assert 0.22 < len(kept) / len(ids) < 0.28
    again = make(tmp_path / "other", sample_percent=25)  # another replica decides the same
    assert kept == [rid for rid in ids if again.sampled(rid, "exp")]
    assert all(plog.sampled(rid, "all") for rid in ids)
    for rid in ids[:200]:
        plog.record(rid, "exp", pred(1), batch(1), 1.0)
    plog.flush()
    logged = read(tmp_path).column("request_id").to_pylist()
    assert logged == [rid for rid in ids[:200] if rid in set(kept)]


def test_set_sample_switches_the_log_live_and_back_to_the_config(tmp_path: Path) -> None:
    """The bench's live switch (variant l): 0 keeps nothing, 1 keeps everything in every
    experiment, None restores the config's shares; a share outside [0, 1] is refused."""
    plog = make(tmp_path, sample_percent=25, sample_percent_by_experiment={"all": 100})
    ids = [f"req-{i}" for i in range(2000)]
    configured = [rid for rid in ids if plog.sampled(rid, "exp")]
    plog.set_sample(0.0)
    assert not any(plog.sampled(rid, e) for rid in ids for e in ("exp", "all"))
    assert plog.record("req-0", "all", pred(1), batch(1), 1.0) is False
    plog.set_sample(1.0)
    assert all(plog.sampled(rid, "exp") for rid in ids)
    plog.set_sample(None)
    assert [rid for rid in ids if plog.sampled(rid, "exp")] == configured
    assert all(plog.sampled(rid, "all") for rid in ids)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="lies in"):
            plog.set_sample(bad)


def test_inputs_off_keeps_only_the_digest_and_shape(tmp_path: Path) -> None:
    plog = make(tmp_path, inputs=False)
    x = batch(2)
    plog.record("a", "exp", pred(2), x, 1.0)
    plog.flush()
    rows = read(tmp_path).to_pylist()
    assert [r["input"] for r in rows] == [None, None]
    assert rows[1]["input_digest"] == hashlib.sha256(x[1].tobytes()).hexdigest()
    assert rows[1]["input_shape"] == [4, 3]


def test_a_full_buffer_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    counted: list[tuple[str, str, int]] = []
    plog = make(tmp_path, counter=lambda *a: counted.append(a), max_buffer_rows=5)
    assert plog.record("a", "exp", pred(3), batch(3), 1.0)
    assert not plog.record("b", "exp", pred(3), batch(3), 1.0)  # 6 > 5
    assert plog.record("c", "exp", pred(2), batch(2), 1.0)
    assert not plog.feedback("a/0", 1)
    assert plog.counts["predictions"].dropped == 3 and plog.counts["feedback"].dropped == 1
    plog.flush()
    assert read(tmp_path).num_rows == 5
    assert sorted(counted) == [("feedback", "dropped", 1), ("predictions", "dropped", 3),
                               ("predictions", "written", 5)]
    counted.clear()
    plog.flush()
    assert counted == []  # deltas only
    assert plog.record("d", "exp", pred(3), batch(3), 1.0)  # room again after the flush


def test_converted_rows_wait_for_the_write_and_still_count_against_the_buffer(
    tmp_path: Path,
) -> None:
    plog = make(tmp_path, max_buffer_rows=5)
    assert plog.record("a", "exp", pred(3), batch(3), 1.0)
    assert plog.feedback("a/0", 2)
    plog.convert()  # what the thread does every CONVERT_INTERVAL_S
    assert files(tmp_path) == []  # converted, not written
    assert plog.buffered_rows == 4
    assert not plog.record("b", "exp", pred(2), batch(2), 1.0)  # 4 + 2 > 5: still bounded
    assert plog.record("c", "exp", pred(1), batch(1), 1.0)
    plog.flush()  # one file per table and hour, however many conversions fed it
    assert files(tmp_path) == [
        "activity/feedback/date=2026-12-02/hour=10/r_1-000002.parquet",
        "activity/predictions/date=2026-12-02/hour=10/r_1-000001.parquet",
    ]
    assert [r["request_id"] for r in read(tmp_path).to_pylist()] == ["a/0", "a/1", "a/2", "c"]
    assert read(tmp_path, "feedback").to_pylist()[0]["label"] == "sit"
    assert plog.buffered_rows == 0 and plog.counts["predictions"].dropped == 2


def test_the_writer_never_imports_pandas(tmp_path: Path) -> None:
    """pa.array imports pandas (+32-36 MB in a router replica); the writer must not."""
    code = f"""
import sys
import numpy as np
from models.kinds import OutputSpec
from router.dataplane.core import Prediction
from router.dataplane.predlog import PredictionLog
from serve.config import LogConfig
spec = OutputSpec.of("multiclass", ["walk", "run", "sit"])
plog = PredictionLog(LogConfig(enabled=True, location={str(tmp_path)!r}), model="m",
                     replica="r", spec=spec, start=False)
x = np.zeros((2, 4, 3), np.float32)
p = Prediction(outputs=np.full((2, 3), 1 / 3), version="v1", arm="v1", cached=(False, True),
               cache_status="MISS", fallback=True, fallback_reason="timeout", spec=spec)
plog.record("a", "exp", p, x, 1.0)
plog.feedback("a/0", 1)
plog.flush()
assert plog.counts["predictions"].written == 2 and plog.counts["feedback"].written == 1
print("pandas" in sys.modules)
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr


class BrokenFs(pafs.PyFileSystem):
    """A store that refuses every write (an unreachable bucket)."""

    def __init__(self) -> None:
        super().__init__(Handler())


class Handler(pafs.FileSystemHandler):
    calls = 0

    def _fail(self, *_: Any, **__: Any) -> Any:
        Handler.calls += 1
        raise OSError("connection refused: the store is unreachable")

    def get_type_name(self) -> str:
        return "broken"

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    get_file_info = get_file_info_selector = create_dir = delete_dir = _fail
    delete_dir_contents = delete_root_dir_contents = delete_file = move = copy_file = _fail
    open_input_stream = open_input_file = open_output_stream = open_append_stream = _fail

    def normalize_path(self, path: str) -> str:
        return path


def test_an_unreachable_store_counts_failures_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: list[tuple[str, str, int]] = []
    clock = Clock()
    config = LogConfig(enabled=True, location="s3://nowhere", flush_interval_s=10)
    plog = PredictionLog(config, model="activity", replica="r", spec=SPEC, clock=clock,
                         filesystem=BrokenFs(), root="bucket/log", start=False,
                         counter=lambda *a: counted.append(a))
    caplog.set_level("WARNING", logger="ray.serve")
    for i in range(3):
        assert plog.record(f"r{i}", "exp", pred(2), batch(2), 1.0)
        plog.feedback(f"r{i}", 0)
        plog.flush()  # never raises
        clock.t += 1
    assert plog.counts["predictions"].failed == 6 and plog.counts["feedback"].failed == 3
    assert plog.counts["predictions"].written == 0
    assert ("predictions", "failed", 2) in counted
    warnings = [r for r in caplog.records if "prediction log" in r.getMessage()]
    assert len(warnings) == 1  # at most once per flush interval
    clock.t += 10
    plog.record("later", "exp", pred(1), batch(1), 1.0)
    plog.flush()
    assert len([r for r in caplog.records if "prediction log" in r.getMessage()]) == 2
    assert Handler.calls > 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_counts_failures(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        plog = make(tmp_path)
        plog.record("a", "exp", pred(2), batch(2), 1.0)
        plog.flush()
        assert plog.counts["predictions"].failed == 2
    finally:
        tmp_path.chmod(0o700)


def test_a_full_disk_never_reaches_the_thread_or_the_caller(tmp_path: Path) -> None:
    """A directory where a file is expected: every write fails as on a full disk
    (OSError from the filesystem); the running thread keeps going and close returns."""
    (tmp_path / "activity").write_text("not a directory")
    config = LogConfig(enabled=True, location=str(tmp_path), flush_interval_s=0.05)
    plog = PredictionLog(config, model="activity", replica="r", spec=SPEC)
    try:
        for i in range(5):
            assert plog.record(f"r{i}", "exp", pred(1), batch(1), 1.0)
            time.sleep(0.06)
        deadline = time.monotonic() + 5
        while plog.counts["predictions"].failed < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert plog.counts["predictions"].failed == 5
        assert plog._thread is not None and plog._thread.is_alive()
    finally:
        plog.close()


def test_feedback_rows_join_the_predictions_by_request_id(tmp_path: Path) -> None:
    plog = make(tmp_path)
    plog.record("R", "exp", pred(3), batch(3), 1.0)
    plog.feedback("R/1", 2)
    plog.flush()
    fb = read(tmp_path, "feedback")
    assert fb.schema.remove(fb.schema.get_field_index("date")).remove(
        fb.schema.get_field_index("date")) == FEEDBACK_SCHEMA
    served = read(tmp_path).select(["request_id", "version", "label"])
    joined = served.join(fb.select(["request_id", "label"]), "request_id",
                         right_suffix="_true", join_type="inner").to_pylist()
    assert [(r["request_id"], r["label_true"]) for r in joined] == [("R/1", "sit")]


def test_a_regression_model_logs_values_and_no_label(tmp_path: Path) -> None:
    spec = OutputSpec.of("regression", [], outputs=["d1", "d2"])
    config = LogConfig(enabled=True, location=str(tmp_path))
    plog = PredictionLog(config, model="sales", replica="r", spec=spec, tabular=True,
                         clock=Clock(), start=False)
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    plog.record("R", "exp", pred(2, spec=spec), x, 1.0)
    plog.feedback("R/0", [1.5, 2.5])
    plog.flush()
    root = tmp_path / "sales"
    part = ds.partitioning(PARTITIONING, flavor="hive")
    t = ds.dataset(root / "predictions", partitioning=part).to_table()
    assert t.schema.field("input").type == TABULAR_PREDICTIONS_SCHEMA.field("input").type
    rows = t.to_pylist()
    assert rows[0]["label"] is None and rows[1]["input"] == [3.0, 4.0, 5.0]
    assert rows[1]["input_digest"] == hashlib.sha256(x[1].tobytes()).hexdigest()
    fb = ds.dataset(root / "feedback", partitioning=part).to_table().to_pylist()
    assert (fb[0]["label"], fb[0]["value"]) == (None, [1.5, 2.5])


def test_path_helpers() -> None:
    when = datetime(2026, 1, 5, 7, 59, tzinfo=UTC)
    assert partition_dir("/x/", "m", "feedback", when) == "/x/m/feedback/date=2026-01-05/hour=07"
    assert partition_hour("/x/m/feedback/date=2026-01-05/hour=07") == when.replace(minute=0)
    assert partition_hour("/x/m/feedback/other") is None
    assert file_name("SERVE_REPLICA::app#Router#ab12", 7) == (
        "SERVE_REPLICA__app_Router_ab12-000007.parquet")
    assert row_ids("R", 1) == ["R"] and row_ids("R", 2) == ["R/0", "R/1"]


def test_the_monitoring_pages_reading_example_runs(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """docs/monitoring.md's pyarrow example, run on a log this writer produced."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text()
    section = text.split("## Prediction log", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    plog = make(tmp_path)
    p = pred(4)
    plog.record("R", "exp", p, batch(4), 2.0)
    truth = [int(i) for i in SPEC.labels_of(p.outputs.astype(np.float32))]
    plog.feedback("R/0", truth[0])
    plog.feedback("R/1", (truth[1] + 1) % 3)
    plog.flush()
    assert 'LOG = ".abserve/log/activity"' in code
    exec(code.replace(".abserve/log/activity", str(tmp_path / "activity")), {})  # noqa: S102
    out = capsys.readouterr().out
    assert "v2    0.5" in out, out  # one of the two labelled rows was right


def test_the_cost_benchmark_runs_and_writes_every_row() -> None:
    """benchmarks/predlog_cost.py, the command docs/monitoring.md quotes, at a small size."""
    from benchmarks.predlog_cost import measure

    r = measure(rate=40, seconds=3, flush_s=1)
    assert r["rows"] == r["written"] == 120
    assert r["record_us_per_request"] > 0 and r["convert_us_per_row"] > 0
