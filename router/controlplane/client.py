"""The router's typed view of the experiment controller.

``ControlPlane`` is what the router's follower and the admin routes need of
the control plane; ``ControlClient`` implements it over the controller
deployment's handle, and the HTTP app's unit tests use a fake with the same
methods instead. Our own errors raised in the controller (``InvalidInput``,
``NotFound``) arrive wrapped by Ray; the client re-raises them unwrapped so
that they keep their HTTP status. Anything else propagates as Ray raised it.

No Ray import at run time: the handle is only a type annotation here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from router.controlplane.experiment import ExperimentState
from router.controlplane.messages import Applied, SyncReply, SyncReport
from router.controlplane.operations import Operation
from router.dataplane.upstream import call, unwrap

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

__all__ = ["Applied", "ControlClient", "ControlPlane", "SyncReply", "SyncReport"]


class ControlPlane(Protocol):
    async def get_state(self, timeout_s: float | None = None) -> ExperimentState: ...

    async def sync(
        self, replica_id: str, report: SyncReport, timeout_s: float | None = None
    ) -> SyncReply: ...

    async def apply(self, op: Operation, who: str) -> Applied: ...

    async def record_feedback(
        self, request_id: str, label: int | list[float], timeout_s: float | None = None
    ) -> dict[str, Any]: ...

    async def report(self) -> dict[str, Any]: ...

    async def audit(self, limit: int) -> list[dict[str, Any]]: ...

    async def canary_status(self) -> dict[str, Any]: ...

    async def start_canary(self, plan: dict[str, Any], who: str) -> dict[str, Any]: ...

    async def canary_action(self, action: str, who: str) -> dict[str, Any]: ...


async def _ask(response: Any, timeout_s: float | None = None) -> Any:
    try:
        return await call(response, timeout_s)
    except Exception as exc:
        inner = unwrap(exc)
        if inner is exc:
            raise
        raise inner from None


class ControlClient:
    """``ControlPlane`` over the ``ExperimentController`` deployment's handle."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def get_state(self, timeout_s: float | None = None) -> ExperimentState:
        return await _ask(self.handle.get_state.remote(), timeout_s)

    async def sync(
        self, replica_id: str, report: SyncReport, timeout_s: float | None = None
    ) -> SyncReply:
        return await _ask(self.handle.sync.remote(replica_id, report), timeout_s)

    async def apply(self, op: Operation, who: str) -> Applied:
        return await _ask(self.handle.apply.remote(op, who))

    async def record_feedback(
        self, request_id: str, label: int | list[float], timeout_s: float | None = None
    ) -> dict[str, Any]:
        return await _ask(self.handle.record_feedback.remote(request_id, label), timeout_s)

    async def report(self) -> dict[str, Any]:
        return await _ask(self.handle.report.remote())

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        return await _ask(self.handle.audit.remote(limit))

    async def canary_status(self) -> dict[str, Any]:
        return await _ask(self.handle.canary_status.remote())

    async def start_canary(self, plan: dict[str, Any], who: str) -> dict[str, Any]:
        return await _ask(self.handle.start_canary.remote(plan, who))

    async def canary_action(self, action: str, who: str) -> dict[str, Any]:
        return await _ask(self.handle.canary_action.remote(action, who))
