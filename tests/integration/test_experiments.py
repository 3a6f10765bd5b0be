"""Shadow traffic, feedback and the experiment report against a real deployment."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from models.activity.data import CLASS_LABELS, make_windows
from router.http.auth import report_link
from tests.integration.conftest import ADMIN_TOKEN, ServeInstance, serve_app, small_app

APP, PREFIX = "exp", "/exp"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CAR = CLASS_LABELS.index("Car")


@pytest.fixture(scope="module")
def exp(serve_instance: ServeInstance, registry_root: str, state_dir: str) -> Iterator[str]:
    config = small_app(serve_instance, registry_root, state_dir, APP, ("v1", "v2", "v9"), {
        "baseline": "v1",
        "arms": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
        "shadows": [{"version": "v9", "percent": 100}],
    })
    yield from serve_app(config, serve_instance, PREFIX)

async def _send(url: str, xs: np.ndarray) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=16)) as client:
        sem = asyncio.Semaphore(16)

        async def one(x: np.ndarray) -> httpx.Response:
            async with sem:
                return await client.post(f"{url}/predict", json={"features": x.tolist()})

        return await asyncio.gather(*(one(x) for x in xs))


def test_shadow_agreement_feedback_and_report(exp: str) -> None:
    xs, ys = make_windows(240, seed=55)
    responses = asyncio.run(_send(exp, xs))
    assert [r.status_code for r in responses] == [200] * len(xs)
    answers = [r.json() for r in responses]

    # The client only ever sees the primary's answer: the same as asking that version directly.
    shadowed = list(answers)
    for x, a in list(zip(xs, answers, strict=True))[:20]:
        pinned = httpx.post(f"{exp}/predict", json={"features": x.tolist()},
                            headers={"X-Model-Version": a["version"]}).json()
        # Equal up to float noise: torch's CPU kernels differ slightly with the batch size.
        assert pinned["probabilities"] == pytest.approx(a["probabilities"], abs=1e-5)
        assert a["version"] in ("v1", "v2") and a["label"] == pinned["label"]
        shadowed.append(pinned)

    # v9 always says Car: its agreement is exactly the share of primary answers that are Car.
    expected_agreement = sum(a["label"] == "Car" for a in shadowed) / len(shadowed)
    probs = np.asarray([[a["probabilities"][c] for c in CLASS_LABELS] for a in shadowed])
    onehot = np.zeros_like(probs)
    onehot[:, CAR] = 1.0
    expected_mad = float(np.abs(probs - onehot).mean(axis=1).mean())

    # Feedback with the true labels, for every answer; one duplicate; one unknown id.
    for a, y in zip(answers, ys, strict=True):
        r = httpx.post(f"{exp}/feedback", json={"request_id": a["request_id"],
                                                "label": CLASS_LABELS[int(y)]})
        assert r.status_code == 200 and r.json()["counted"] is True, r.text
    dup = httpx.post(f"{exp}/feedback", json={"request_id": answers[0]["request_id"],
                                              "label": int(ys[0])})
    assert dup.status_code == 200 and dup.json()["status"] == "duplicate"
    assert httpx.post(f"{exp}/feedback", json={"request_id": "no-such-id",
                                               "label": "Car"}).status_code == 404
    assert httpx.post(f"{exp}/feedback", json={"request_id": answers[1]["request_id"],
                                               "label": "Teleport"}).status_code == 422

    report = httpx.get(f"{exp}/admin/report", headers=AUTH, timeout=30).json()
    shadow = report["shadows"]["v9"]
    assert shadow["compared"] == len(shadowed) and shadow["errors"] == 0
    assert shadow["agreement_rate"] == pytest.approx(expected_agreement, abs=1e-9)
    assert shadow["mean_abs_diff"] == pytest.approx(expected_mad, abs=1e-5)
    for version in ("v1", "v2"):
        row = report["arms"][version]
        mine = [a for a in answers if a["version"] == version]
        truth = [CLASS_LABELS[int(y)] for a, y in zip(answers, ys, strict=True)
                 if a["version"] == version]
        accuracy = sum(a["label"] == t for a, t in zip(mine, truth, strict=True)) / len(mine)
        assert row["feedback_n"] == len(mine)
        assert row["accuracy"] == pytest.approx(accuracy)
        lo, hi = row["accuracy_ci95"]
        assert lo <= accuracy <= hi
        assert row["requests"] >= len(mine) and row["p99_ms"] > 0
    # The fixed-horizon p-value is the pooled two-proportion z-test of the two arms'
    # accuracies over the feedback sent here (computed again from this test's own counts).
    from scipy.stats import norm

    counts = {}
    for version in ("v1", "v2"):
        pairs = [(a, CLASS_LABELS[int(y)]) for a, y in zip(answers, ys, strict=True)
                 if a["version"] == version]
        counts[version] = (sum(a["label"] == t for a, t in pairs), len(pairs))
    (s1, n1), (s2, n2) = counts["v1"], counts["v2"]
    pooled = (s1 + s2) / (n1 + n2)
    z = (s2 / n2 - s1 / n1) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert report["arms"]["v2"]["p_value"] == pytest.approx(2 * norm.sf(abs(z)), abs=1e-9)
    # The 50/50 split, over the 240 unpinned requests: within 4.5 standard deviations of
    # 120 (sd = sqrt(240 / 4) = 7.7, so 86..154): a fair split misses that once in 10^5.
    n_v2 = sum(a["version"] == "v2" for a in answers)
    sd = np.sqrt(len(answers) * 0.25)
    assert abs(n_v2 - len(answers) / 2) <= 4.5 * sd, (n_v2, len(answers))
    # The report's share is the arms' request counts (the 20 pinned ones included).
    rows = report["arms"]
    total = sum(rows[v]["requests"] for v in rows if v in ("v1", "v2"))
    assert rows["v2"]["traffic_share"] == pytest.approx(rows["v2"]["requests"] / total)
    assert abs(rows["v2"]["traffic_share"] - 0.5) <= 4.5 * np.sqrt(0.25 / total)

    assert httpx.get(f"{exp}/report").status_code == 401  # the numbers need authorization
    page = httpx.get(f"{exp}/report", headers=AUTH)
    assert page.status_code == 200 and "<svg" in page.text and "v9" in page.text
    link = report_link(ADMIN_TOKEN.encode(), valid_s=60)
    assert "<svg" in httpx.get(f"{exp}/report", params={"link": link}).text
