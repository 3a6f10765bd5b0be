"""Steady traffic against a running canary until it ends: the canary tests' one driver."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from models.activity.data import make_windows
from tests.integration.conftest import ADMIN_TOKEN

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Admin-User": "pytest"}


@dataclass
class CanaryRun:
    status: dict[str, Any]  # GET /admin/canary when the canary ended (or at the deadline)
    predict: list[int] = field(default_factory=list)  # every /predict status code
    feedback: list[int] = field(default_factory=list)  # every /feedback status code


async def drive_canary(url: str, *, timeout_s: float, workers: int = 4, labelled: bool = False,
                       seed: int = 8) -> CanaryRun:
    """``workers`` clients post windows (and, when ``labelled``, each answer's true label)
    until the canary is no longer running; the admin API is polled every 0.5 s."""
    xs, ys = make_windows(256, seed=seed)
    run = CanaryRun({})
    stop = asyncio.Event()

    async def client_loop(k: int) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            i = k
            while not stop.is_set():
                r = await client.post(f"{url}/predict", json={"features": xs[i % 256].tolist()})
                run.predict.append(r.status_code)
                if labelled and r.status_code == 200:
                    f = await client.post(f"{url}/feedback", json={
                        "request_id": r.json()["request_id"], "label": int(ys[i % 256])})
                    run.feedback.append(f.status_code)
                i += workers

    tasks = [asyncio.create_task(client_loop(k)) for k in range(workers)]
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=10) as admin:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            run.status = (await admin.get(f"{url}/admin/canary", headers=AUTH)).json()
            if run.status["state"]["status"] != "running":
                break
    stop.set()
    await asyncio.gather(*tasks)
    return run
