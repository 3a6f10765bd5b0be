"""`abserve batch-predict` and `abserve replay` on real Ray Data (issue 19 items 4 and 5).

On the session cluster, beside a small application (v1 and v4, both scikit-learn, whose
live weights are changed through the admin API so that the controller's differ from the
config's): batch-predict of a Parquet, a CSV and an .npy file equals the backend's own
outputs and the estimator's predict_proba row by row, bad rows land in the errors file;
`--experiment` gives every row the arm the online router gives its user key (the router
answers for a sample of them); a prediction log written with pyarrow in
router/dataplane/predlog.py's layout from real served answers is replayed, reproducing
v4's own answers, `canary start --require-replay` refuses a candidate below the bar, and a
plan posted with a replay gate waits while the controller replays the log, then starts (or
is refused).
The commands run are the examples of docs/monitoring.md. Then, once, a cluster of its own
(a `ray start --head` and a second `ray start --address` node, one CPU each): a batch job
whose two actors each need a CPU, so that both nodes do work (each output row names the
node that scored it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from models.verify import TOLERANCE
from router.dataplane.policy import RouteContext, WeightedPolicy
from router.dataplane.predlog import (
    FEEDBACK,
    FEEDBACK_SCHEMA,
    PREDICTIONS,
    PREDICTIONS_SCHEMA,
    file_name,
    partition_dir,
)
from serve.cli.parser import main
from serve.offline.core import experiment_arms
from tests.integration.conftest import ADMIN_TOKEN, serve_app, small_app
from tests.integration.test_multinode import TwoNodes, _clean_env

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "monitoring.md"
APP = "batchscore"
PREFIX = f"/{APP}"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Admin-User": "pytest"}
N = 240


def doc_commands(section: str) -> list[list[str]]:
    """The `abserve ...` lines of a section of docs/monitoring.md, as argument lists."""
    text = DOCS.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line.startswith("abserve "):
                lines.append(shlex.split(line)[1:])
    assert lines, f"no abserve examples under ## {section}"
    return lines


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, serve_instance: Any, registry_root: str,
         state_dir: str) -> Iterator[dict[str, Any]]:
    """The application, its config file abserve.yaml and the demo's windows, in a working
    directory named like the docs' examples."""
    from models.activity.data import make_windows

    config = small_app(serve_instance, registry_root, state_dir, APP, ("v1", "v4"), {
        "baseline": "v1", "arms": [{"version": "v1", "weight": 60},
                                   {"version": "v4", "weight": 40}]})
    d = tmp_path_factory.mktemp("batch")
    (d / "abserve.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    x, y = make_windows(N, seed=11)
    x = x.astype(np.float32)
    users = [f"user-{i}" for i in range(N)]
    flat = [r.ravel().tolist() for r in x]
    bad = list(flat)
    bad[3] = [*flat[3][:-1], float("nan")]
    bad[8] = flat[8][:-5]
    pq.write_table(pa.table({"input": bad, "user": users}), d / "windows.parquet")
    pd.DataFrame({"input": [json.dumps(f) for f in flat], "user": users}).to_csv(
        d / "windows.csv", index=False)
    np.save(d / "windows.npy", x)
    apps = serve_app(config, serve_instance, PREFIX)
    url = next(apps)
    cwd = os.getcwd()
    os.chdir(d)
    try:
        yield {"dir": d, "config": config, "url": url, "x": x, "y": y, "users": users,
               "registry": registry_root}
    finally:
        os.chdir(cwd)
        with contextlib.suppress(StopIteration):
            next(apps)


def _backend(registry: str, version: str) -> tuple[Any, Any, Any]:
    from deployments.backends import load_backend
    from models.registry import Registry

    reg = Registry(registry)
    manifest = reg.manifest("activity", version)
    artifact = reg.verified_artifact(manifest)
    return manifest, load_backend(manifest, artifact), joblib.load(artifact)


def test_batch_predict_parquet_csv_npy_equal_the_backends_own_outputs(
    work: dict[str, Any], capsys: pytest.CaptureFixture[str],
) -> None:
    manifest, backend, est = _backend(work["registry"], "v1")
    x = work["x"]
    want = backend.predict(x)
    proba = est.predict_proba(x)  # v1's pipeline takes the (n, 50, 9) windows
    example = doc_commands("Batch scoring")[0]
    assert example[:2] == ["batch-predict", "windows.parquet"] and "--version" in example
    for name in ("windows.parquet", "windows.csv", "windows.npy"):
        out = f"scores-{Path(name).suffix[1:]}.parquet"
        argv = [name if a == "windows.parquet" else out if a == "scores.parquet" else a
                for a in example]
        text = _run(argv, capsys)
        assert f"scored {N - 2 if name.endswith('parquet') else N} of {N} rows" in text, text
        assert "rows/s" in text and "batch-predict [" in text  # the progress bar
        got = pq.read_table(out).to_pandas()
        rows = got["row"].to_numpy()
        probs = np.stack(got["probabilities"].to_numpy())
        np.testing.assert_allclose(probs, want[rows], atol=1e-6, err_msg=name)
        np.testing.assert_allclose(probs, proba[rows], atol=1e-6, err_msg=name)
        labels = [manifest.class_labels[i] for i in np.argmax(want[rows], axis=1)]
        assert got["label"].tolist() == labels
        assert set(got["version"]) == {"v1"} and got["arm"].isna().all()
        errors = pq.read_table(out.replace(".parquet", ".errors.parquet")).to_pandas()
        if name.endswith("parquet"):
            assert errors["row"].tolist() == [3, 8]
            assert errors["reason"][0].startswith("NaN or infinite value")
            assert errors["reason"][1].startswith("wrong shape: expected 450 values")
            assert set(rows) == set(range(N)) - {3, 8}
        else:
            assert len(errors) == 0 and rows.tolist() == list(range(N))


def test_experiment_arms_equal_the_online_routers(
    work: dict[str, Any], capsys: pytest.CaptureFixture[str],
) -> None:
    url = work["url"]
    r = httpx.put(f"{url}/admin/weights", json={"weights": {"v1": 30, "v4": 70}},
                  headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    example = doc_commands("Batch scoring")[1]
    assert "--experiment" in example and "--user-column" in example
    text = _run(example, capsys)
    assert "weights from the controller of application 'batchscore'" in text, text
    assert "v1 30%, v4 70%" in text
    got = pq.read_table("arms.parquet").to_pandas()
    exp = work["config"].experiment
    arms = experiment_arms(exp, {"v1": 30, "v4": 70})
    policy = WeightedPolicy(salt=exp.name)
    want = [policy.choose(RouteContext(user_key=u), arms).version for u in got["user"]]
    assert got["arm"].tolist() == want
    assert (got["version"] == got["arm"]).all()
    assert 0.55 < (got["arm"] == "v4").mean() < 0.85
    # The router itself, for a sample of the users: the same arm, the same answer (once the
    # routers have synced the new weights from the controller).
    probs = {r: np.asarray(p) for r, p in zip(got["row"], got["probabilities"], strict=True)}
    sample = got.sample(40, random_state=0)
    deadline = time.monotonic() + 30
    with httpx.Client(timeout=30) as client:
        while True:
            answers = [client.post(f"{url}/predict",
                                   json={"features": work["x"][row["row"]].tolist()},
                                   headers={"X-User-Id": row["user"]}).json()
                       for _, row in sample.iterrows()]
            if [a["arm"] for a in answers] == sample["arm"].tolist():
                break
            assert time.monotonic() < deadline, "the router's arms differ from the batch's"
            time.sleep(1)
    for answer, (_, row) in zip(answers, sample.iterrows(), strict=True):
        assert answer["version"] == row["version"]
        served = [answer["probabilities"][c] for c in answer["probabilities"]]
        # The router's and the batch job's answers are each held to models/verify.py's
        # TOLERANCE of the estimator's own predict_proba (float32, other batch shapes): they
        # may differ by twice that (1.3e-6 seen once).
        np.testing.assert_allclose(served, probs[row["row"]], atol=2 * TOLERANCE)


def _served_log(work: dict[str, Any], location: Path) -> dict[str, Any]:
    """Real answers of the application (sticky users: both versions answer), written as
    router/dataplane/predlog.py's tables; feedback for every other row."""
    url, x, y = work["url"], work["x"], work["y"]
    from models.activity.data import CLASS_LABELS

    rows: list[dict[str, Any]] = []
    now = datetime.now(UTC).replace(microsecond=0)
    with httpx.Client(timeout=30) as client:
        for i in range(60):
            answer = client.post(f"{url}/predict", json={"features": x[i].tolist()},
                                 headers={"X-User-Id": f"replay-{i}"}).json()
            inp = x[i].ravel()
            rows.append({
                "time": now - timedelta(minutes=i), "request_id": answer["request_id"],
                "experiment": APP, "arm": answer["arm"], "version": answer["version"],
                "fallback": answer["fallback"], "fallback_reason": None,
                "cached": answer["cached"], "latency_ms": 1.0, "label": answer["label"],
                "outputs": [answer["probabilities"][c] for c in CLASS_LABELS],
                "input": inp.tolist(),
                "input_digest": hashlib.sha256(inp.tobytes()).hexdigest(),
                "input_shape": [50, 9],
            })
    rows[5]["input"] = None  # log.inputs: false for this one: skipped, with the reason
    table = pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA)
    for when, part in ((now, table.slice(0, 30)), (now - timedelta(hours=1), table.slice(30))):
        d = Path(partition_dir(str(location), "activity", PREDICTIONS, when))
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, d / file_name("r1", 0))
    fb = [{"time": now, "request_id": r["request_id"], "label": CLASS_LABELS[int(y[i])],
           "value": None} for i, r in enumerate(rows) if i % 2 == 0]
    d = Path(partition_dir(str(location), "activity", FEEDBACK, now))
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(fb, schema=FEEDBACK_SCHEMA), d / file_name("r1", 0))
    return {"rows": rows, "feedback": {f["request_id"]: f["label"] for f in fb}}


def test_replay_reproduces_the_served_answers_of_its_own_version(
    work: dict[str, Any], capsys: pytest.CaptureFixture[str],
) -> None:
    log = _served_log(work, work["dir"] / "prediction-log")
    served_by = {r["version"] for r in log["rows"]}
    assert served_by == {"v1", "v4"}, served_by
    example = doc_commands("Replay")[0]
    assert example[:3] == ["replay", "--log", "prediction-log"]
    argv = [*example, "--json"]
    argv[argv.index("--version") + 1] = "v4"
    text = _run(argv, capsys)
    assert "replay [" in text  # the progress bar
    summary = json.loads(text.strip().splitlines()[-1])
    own = [r for i, r in enumerate(log["rows"]) if r["version"] == "v4" and i != 5]
    assert summary["rows"] == 59 and summary["skipped"] == 1
    assert "log.inputs: false" in next(iter(summary["skipped_reasons"]))
    assert summary["agreement_own"]["n"] == len(own)
    assert summary["agreement_own"]["rate"] == 1.0
    assert summary["abs_diff"]["max_own"] <= 1e-6  # the answers' JSON keeps 6 decimals
    # Accuracy against the joined feedback, counted here from the answers themselves.
    results = pq.read_table(summary["out"]).to_pandas()
    assert len(results) == 59 and set(results["replayed_version"]) == {"v4"}
    fb = log["feedback"]
    with_fb = results[results["request_id"].isin(fb)]
    hits = int((with_fb["replayed_label"] == with_fb["request_id"].map(fb)).sum())
    assert summary["feedback"]["rows"] == len(with_fb) == 30
    assert summary["feedback"]["accuracy_replayed"]["hits"] == hits
    served_hits = sum(r["label"] == fb[r["request_id"]] for i, r in enumerate(log["rows"])
                      if r["request_id"] in fb and i != 5)
    assert summary["feedback"]["accuracy_served"]["hits"] == served_hits
    confusion = summary["feedback"]["confusion"]
    assert sum(sum(v.values()) for v in confusion.values()) == 30
    # --since: only the last hour's partition (rows 0..29, less the skipped one)
    since = (datetime.now(UTC) - timedelta(minutes=35)).isoformat()
    text = _run(["replay", "--log", "prediction-log", "--version", "v1", "--since", since,
                 "--json", "--out", "since.parquet"], capsys)
    recent = json.loads(text.strip().splitlines()[-1])
    assert recent["rows"] + recent["skipped"] <= 36 and recent["rows"] >= 20


def _canary(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/admin/canary", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _weights(url: str) -> dict[str, float]:
    r = httpx.get(f"{url}/admin/experiment", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return {a["version"]: a["weight"] for a in r.json()["experiment"]["arms"]}


def _replay_verdict(url: str, timeout_s: float = 300) -> dict[str, Any]:
    """The canary status once the controller's replay gate has its verdict."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = _canary(url)
        if (status.get("replay") or {}).get("status") not in ("waiting", "running"):
            return status
        assert time.monotonic() < deadline, f"no replay verdict after {timeout_s}s: {status}"
        time.sleep(1)


def test_canary_start_refuses_a_candidate_below_the_replay_bar(
    work: dict[str, Any], capsys: pytest.CaptureFixture[str],
) -> None:
    """`canary start --require-replay` puts the replay gate in the plan it posts; the
    controller replays the log and refuses the plan (here: too few rows for --min-rows), the
    command waits for that verdict and fails with it, and no weight moved."""
    url = work["url"]
    assert (work["dir"] / "prediction-log").exists()  # the test above wrote it
    before = _weights(url)
    example = next(c for c in doc_commands("Replay") if c[0] == "canary")
    assert "--require-replay" in example
    argv = [*example, "--url", url, "--config", "abserve.yaml", "--min-rows", "100000"]
    argv[2] = "v4"  # this application's candidate
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "canary refused" in err and "fewer than min_rows 100,000" in err, err
    status = _canary(url)
    assert status["state"]["status"] == "refused" and status["state"]["weight"] == 0, status
    replay = status["replay"]
    assert replay["status"] == "refused" and replay["rows"] == 59, replay  # 60 less 1 skipped
    assert status["plan"]["replay"]["log"] == str((work["dir"] / "prediction-log").resolve())
    assert _weights(url) == before


def test_a_plans_replay_gate_runs_in_the_controller(work: dict[str, Any]) -> None:
    """A plan posted to the admin API with `replay:` waits, its candidate at 0 %, while the
    controller replays the log with it on the cluster (serve/offline/replay.py, handed to the
    controller by serve/app.py); passed, the plan starts at its first step. A gate no replay
    can meet (min_rows) refuses the plan, and no weight moves."""
    url = work["url"]
    location = work["dir"] / "gate-log"
    _served_log(work, location)  # 60 rows served just now, one without its input
    before = _weights(url)
    plan = {"candidate": "v4", "steps": [5, 50, 100], "interval_s": 3600, "min_requests": 10}

    r = httpx.post(f"{url}/admin/canary", headers=AUTH, timeout=30, json={
        **plan, "replay": {"log": str(location), "min_rows": 1_000_000}})
    assert r.status_code == 200, r.text
    assert r.json()["state"]["status"] == "pending", r.json()
    assert r.json()["replay"]["status"] in ("waiting", "running"), r.json()
    assert _weights(url) == before  # waiting: nothing moved
    status = _replay_verdict(url)
    assert status["state"]["status"] == "refused", status
    assert status["replay"]["verdict"] == "refused" and status["replay"]["rows"] == 59, status
    assert "fewer than min_rows 1,000,000" in status["replay"]["reason"]
    assert _weights(url) == before
    audit = httpx.get(f"{url}/admin/audit?limit=20", headers=AUTH, timeout=30).json()["entries"]
    verdicts = [e for e in audit if e["operation"] == "canary_replay"
                and e["params"].get("verdict") == "refused"]
    assert verdicts and "min_rows" in verdicts[-1]["reason"], audit

    r = httpx.post(f"{url}/admin/canary", headers=AUTH, timeout=30, json={
        **plan, "replay": {"log": str(location), "min_rows": 20,
                           "min_agreement_percent": 10, "since_hours": 2}})
    assert r.status_code == 200, r.text
    try:
        status = _replay_verdict(url)
        replay = status["replay"]
        assert replay["status"] == replay["verdict"] == "passed", status
        assert replay["rows"] == 59 and replay["agreement_percent"] >= 10, replay
        assert replay["out"] and Path(replay["out"]).exists(), replay  # under state.dir
        assert status["state"]["status"] == "running" and status["state"]["weight"] == 5
        weights = _weights(url)
        assert weights["v4"] == 5 and weights["v1"] == 95, weights
    finally:
        httpx.post(f"{url}/admin/canary/abort", headers=AUTH, timeout=30)


def test_bench_batch_scores_both_ways(work: dict[str, Any]) -> None:
    """`abserve bench-batch` (benchmarks/batch.py) runs the plain loop and the command's Ray
    Data path over the same rows and reports both, with the ratio of the two (not timed
    here: the figures are the bench's, on an idle machine)."""
    from benchmarks.batch import markdown, run

    r = run("abserve.yaml", "v1", rows=300, batch_size=64, address=None, actors=1,
            num_cpus=None)
    assert r["rows"] == 300 and sum(r["ray_data"]["nodes"].values()) == 300
    assert r["plain"]["rows_per_s"] > 0 and r["ray_data"]["rows_per_s"] > 0
    # The ratio is the whole job's rows/s over the plain loop's (the table's figures are
    # rounded: 0.1 rows/s and 1e-4 of the ratio).
    assert r["ratio"] == pytest.approx(r["ray_data"]["rows_per_s"] / r["plain"]["rows_per_s"],
                                       abs=2e-4)
    text = markdown(r)
    assert "plain loop over the backend" in text and "batch-predict on Ray Data" in text


# --- two nodes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    nodes = TwoNodes(tmp_path_factory.mktemp("batch-nodes"))
    try:
        nodes.start_head()
        nodes.start_node2()
        yield nodes
    finally:
        nodes.stop_all()


def test_batch_scoring_runs_on_both_nodes(work: dict[str, Any], two_nodes: TwoNodes) -> None:
    d = work["dir"]
    cfg = yaml.safe_load((d / "abserve.yaml").read_text())
    cfg["models"] = [{"version": "v1", "num_cpus": 1}]  # one actor fills a node's CPU
    cfg["experiment"] = {"name": "two", "baseline": "v1", "arms": [{"version": "v1",
                                                                    "weight": 100}]}
    (d / "two.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "serve.cli", "batch-predict", "windows.npy", "--out",
         "two.parquet", "--version", "v1", "-c", "two.yaml", "--address", two_nodes.address,
         "--actors", "2", "--batch-size", "20", "--json"],
        cwd=d, env=_clean_env(ABSERVE_STATE_DIR=str(d / ".abserve-two")),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["scored"] == N and len(result["nodes"]) == 2, result
    got = pq.read_table(d / "two.parquet").to_pandas()
    per_node = got["node_id"].value_counts()
    assert len(per_node) == 2 and per_node.min() >= 20, per_node
    _, backend, _ = _backend(work["registry"], "v1")
    np.testing.assert_array_equal(np.stack(got["probabilities"].to_numpy()),
                                  backend.predict(work["x"])[got["row"].to_numpy()])
