"""The experiment controller: one Serve deployment that owns the live experiment.

It is the single writer of the experiment state: admin operations arrive
here (through any router replica), are validated and applied one at a time
under a lock, persisted (``router/store.py``) and given a new revision.
Routers poll ``revision()`` and fetch ``get_state()`` when it moves, so a
change reaches every router replica within ``state.poll_interval_s`` plus
one call. On start it loads the persisted state, so weights survive router
restarts, controller restarts and a full ``abserve down`` / ``abserve up``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve

from router.experiment import ExperimentState, apply_operation, effective_weights
from router.ledger import Ledger
from router.store import FileStore
from serve.config import AbserveConfig, parse_config

__all__ = ["ExperimentController"]

log = logging.getLogger("ray.serve")


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=1000)
class ExperimentController:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config: AbserveConfig = parse_config(config)
        self.deployed = frozenset(m.version for m in self.config.models)
        self.store = FileStore(self.config.state.dir, self.config.app_name)
        self.lock = asyncio.Lock()
        self.state = self._initial_state()
        self.ledger = Ledger(
            versions=sorted(self.deployed),
            ttl_s=self.config.feedback.ttl_s,
            max_entries=self.config.feedback.max_entries,
        )

    def _initial_state(self) -> ExperimentState:
        saved = self.store.load()
        if saved is not None:
            try:
                state = ExperimentState.from_dict(saved)
            except Exception as exc:  # noqa: BLE001 - a bad file must not stop the service
                log.warning("ignoring unreadable experiment state %s: %r",
                            self.store.state_path, exc)
            else:
                missing = {a.version for a in state.experiment.arms} - self.deployed
                if not missing:
                    log.info("experiment state revision %d loaded from %s",
                             state.revision, self.store.state_path)
                    return state
                log.warning("saved experiment state names versions %s that are not deployed; "
                            "starting from the config", sorted(missing))
        state = ExperimentState(self.config.experiment, revision=1, updated_at=time.time())
        self.store.save(state.to_dict(), {
            "time": state.updated_at, "who": "config", "operation": "init",
            "params": {}, "revision": state.revision, "before": None,
            "after": {"weights": state.weights(), "baseline": state.experiment.baseline,
                      "paused": False},
        })
        return state

    def revision(self) -> int:
        return self.state.revision

    def get_state(self) -> dict[str, Any]:
        return self.state.to_dict()

    async def apply(self, op: str, params: dict[str, Any], who: str) -> dict[str, Any]:
        """Validate and apply one operation atomically; raises InvalidInput/NotFound."""
        async with self.lock:
            new, entry = apply_operation(self.state, op, params, deployed=self.deployed, who=who)
            self.store.save(new.to_dict(), entry)  # durable before it is visible
            self.state = new
        log.info("experiment revision %d: %s by %s", new.revision, op, who)
        return new.to_dict()

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.store.audit(limit)

    # ------------------------------------------------------------ metrics and feedback

    def sync(self, replica: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A router replica's report in; the revision and the bandit's counts back."""
        self.ledger.update(replica, payload)
        return {"revision": self.state.revision, "bandit": self.ledger.bandit_counts()}

    def record_feedback(self, request_id: str, label: int) -> dict[str, Any]:
        return self.ledger.record_feedback(request_id, label)

    def report(self) -> dict[str, Any]:
        report = self.ledger.report(self.state.experiment.baseline, effective_weights(self.state))
        report["experiment"] = self.state.experiment.name
        report["revision"] = self.state.revision
        return report
