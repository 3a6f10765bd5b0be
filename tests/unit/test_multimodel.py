"""Several models on one cluster, in-process (router/http/multimodel.py): the default
application's /models/<model> alias and a prefixed application, both on the fast path;
the model directory (Serve's details read, cached, named); OIP requests for another
model forwarded through a fake cluster to that model's own app and answered unchanged.

Two real router apps (``assemble`` + ``build_app``) over the fakes of test_http_app.py;
the cluster boundary is ``FakeCluster``, which forwards with the same ``run_asgi`` the
router deployment's ``forward_http`` runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import pytest

from router.dataplane.admission import AdmissionMiddleware, Receive, Scope, Send
from router.dataplane.cache import LocalCache, cache_key
from router.dataplane.upstream import Arms
from router.http.app import CacheSetup, assemble, build_app, cache_backend
from router.http.multimodel import (
    HttpExchange,
    HttpReply,
    ModelDirectory,
    PrefixStep,
    abserve_applications,
    model_of_prefix,
    oip_model_name,
    route_path,
    run_asgi,
)
from router.http.serving import ModelInfo
from serve.config import AbserveConfig, parse_config
from serve.errors import ConfigError
from tests.unit.test_http_app import (
    FEATURES,
    FakeControl,
    FakeHandle,
    FakeMetric,
    FakeRuntime,
    Replica,
    _manifest,
)


def _config(model: str, app_name: str, route_prefix: str = "/",
            cache: dict[str, Any] | None = None) -> AbserveConfig:
    return parse_config({
        "app_name": app_name,
        "model": model,
        "models": [{"version": "v1"}, {"version": "v2"}],
        "experiment": {"baseline": "v1", "arms": [{"version": "v1", "weight": 100},
                                                  {"version": "v2", "weight": 0}]},
        "http": {"route_prefix": route_prefix, "max_body_bytes": 2048},
        "cache": cache or {"enabled": False},
    })


def make_replica(model: str = "activity", app_name: str = "abserve", route_prefix: str = "/",
                 cluster: Any = None, cache: CacheSetup | None = None,
                 key_prefix: str = "abserve") -> Replica:
    config = _config(model, app_name, route_prefix,
                     None if cache is None else {"key_prefix": key_prefix})
    handles = {"v1": FakeHandle(0.9 if model == "activity" else 0.3), "v2": FakeHandle(0.5)}
    manifests = {v: dataclasses.replace(_manifest(v), name=model) for v in handles}
    runtime, control = FakeRuntime(), FakeControl(config)
    parts = assemble(
        config, ModelInfo.from_manifests(model, manifests),
        arms=Arms(handles, runtime, config.models, config.router.batch_in_flight_per_replica),
        control=control, runtime=runtime, metric_factory=FakeMetric,
        cache=cache or cache_backend(config.cache, environ={}), cluster=cluster, environ={},
    )
    return Replica(parts, control, handles, build_app(parts))


def count_fast_calls(r: Replica) -> dict[str, int]:
    """Wrap the admission middleware's fast routes: how often each one served a request."""
    (routes,) = [m.kwargs["routes"] for m in r.app.user_middleware
                 if m.cls is AdmissionMiddleware]
    calls = dict.fromkeys(routes, 0)
    for path, handler in list(routes.items()):
        def counted(scope: Scope, receive: Receive, send: Send, *, _path: str = path,
                    _handler: Any = handler) -> Awaitable[None]:
            calls[_path] += 1
            return _handler(scope, receive, send)

        routes[path] = counted
    return calls


def drive(replicas: list[Replica], scenario: Callable[..., Awaitable[None]],
          root_path: str = "") -> None:
    """One client per replica (the first's ``root_path`` is Serve's for its prefix)."""

    async def main() -> None:
        clients = [httpx.AsyncClient(
            transport=httpx.ASGITransport(app=r.app, root_path=root_path if i == 0 else ""),
            base_url="http://router") for i, r in enumerate(replicas)]
        try:
            await scenario(*clients)
        finally:
            for c in clients:
                await c.aclose()
            for r in replicas:
                await r.parts.follower.close()
        assert all(r.parts.admission.inflight == 0 for r in replicas)

    asyncio.run(main())


# ------------------------------------------------------------------ pure helpers


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ({"path": "/predict"}, "/predict"),
        ({"path": "/models/sales/predict", "root_path": "/models/sales"}, "/predict"),
        ({"path": "/other/predict", "root_path": "/models/sales"}, "/other/predict"),
    ],
)
def test_route_path_is_below_the_root_path(scope: Scope, expected: str) -> None:
    assert route_path(scope) == expected


def test_names_from_prefixes_and_oip_paths() -> None:
    assert model_of_prefix("/models/sales") == "sales"
    assert [model_of_prefix(p) for p in ("/", "/exp", "/models/", "/models/a/b", None)] == [
        None] * 5
    assert oip_model_name("/v2/models/sales/infer") == "sales"
    assert oip_model_name("/v2/models/sales") == "sales"
    assert [oip_model_name(p) for p in ("/v2/models/", "/v2", "/predict")] == [None] * 3


@pytest.mark.parametrize(
    ("path", "root", "new_root"),
    [
        ("/models/activity/predict", "", "/models/activity"),
        ("/models/activity", "", "/models/activity"),
        ("/gw/models/activity/v2/models/activity", "/gw", "/gw/models/activity"),
        ("/predict", "", ""),
        ("/models/activityx/predict", "", ""),  # another name that starts alike
        ("/models/sales/predict", "", ""),
    ],
)
def test_prefix_step_moves_the_models_prefix_into_the_root_path(
    path: str, root: str, new_root: str
) -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    step = PrefixStep(app, "/models/activity")
    asyncio.run(step({"type": "http", "path": path, "root_path": root}, None, None))  # type: ignore[arg-type]
    assert seen[0]["path"] == path  # the path stays whole, as Serve leaves it
    assert seen[0]["root_path"] == new_root


# ------------------------------------------------------------------ prefixes, fast path


def test_the_default_app_answers_under_its_models_prefix_on_the_fast_path() -> None:
    r = make_replica()
    calls = count_fast_calls(r)

    async def scenario(client: httpx.AsyncClient) -> None:
        plain = await client.post("/predict", json={"features": FEATURES})
        alias = await client.post("/models/activity/predict", json={"features": FEATURES})
        assert plain.status_code == alias.status_code == 200
        assert alias.json()["model"] == "activity" and alias.headers["x-model-version"] == "v1"
        batch = await client.post("/models/activity/predict/batch",
                                  json={"instances": [FEATURES] * 2})
        assert len(batch.json()["predictions"]) == 2
        assert calls == {"/predict": 2, "/predict/batch": 1}  # none fell to FastAPI
        # Every other route answers under the prefix too.
        assert (await client.get("/models/activity/health")).json() == {"status": "ok"}
        assert (await client.get("/models/activity/ready")).status_code == 200
        assert (await client.get("/models/activity/models")).json()["model"] == "activity"
        meta = await client.get("/models/activity/v2/models/activity")
        assert meta.status_code == 200 and meta.json()["name"] == "activity"
        admin = await client.get("/models/activity/admin/experiment")
        assert admin.status_code == 403  # no token here: the admin API is off, not missing
        # Another model's prefix is not this app's: Serve routes it to that application.
        assert (await client.post("/models/sales/predict", json={})).status_code == 404

    drive([r], scenario)


def test_a_prefixed_app_serves_below_serves_root_path_on_the_fast_path() -> None:
    """Serve 2.60 (proxy and direct ingress alike) keeps the whole path and sets
    ``root_path`` to the application's route prefix."""
    r = make_replica("sales", "sales", "/models/sales")
    calls = count_fast_calls(r)
    assert not any(m.cls is PrefixStep for m in r.app.user_middleware)

    async def scenario(client: httpx.AsyncClient) -> None:
        resp = await client.post("/models/sales/predict", json={"features": FEATURES})
        assert resp.status_code == 200 and resp.json()["model"] == "sales"
        assert calls == {"/predict": 1, "/predict/batch": 0}
        assert (await client.get("/models/sales/models")).json()["model"] == "sales"
        infer = await client.post("/models/sales/v2/models/sales/infer", json={
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                        "data": FEATURES}]})
        assert infer.status_code == 200 and infer.json()["model_name"] == "sales"

    drive([r], scenario, root_path="/models/sales")


# ------------------------------------------------------------------ the directory


def _details(*apps: tuple[str, str | None, str, str]) -> dict[str, Any]:
    """Serve's instance details: (application, route prefix, status, ingress)."""
    return {"applications": {
        name: {"name": name, "route_prefix": prefix, "status": status,
               "last_deployed_time_s": 1.0,
               "deployment_topology": {"app_name": name, "ingress_deployment": ingress},
               "deployments": {ingress: {}}}
        for name, prefix, status, ingress in apps}}


class FakeCluster:
    """The ClusterSource: Serve's details, each router's model, in-process forwarding."""

    def __init__(self, details: dict[str, Any], names: Mapping[str, str] | None = None) -> None:
        self.details_value = details
        self.names = dict(names or {})
        self.targets: dict[str, Replica] = {}
        self.reads = 0
        self.asked: list[str] = []
        self.forwarded: list[tuple[str, HttpExchange]] = []
        self.fail: BaseException | None = None
        self.forward_error: BaseException | None = None
        self.gate: asyncio.Event | None = None

    async def details(self) -> Mapping[str, Any]:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.details_value

    async def model_of(self, application: str) -> str | None:
        self.asked.append(application)
        return self.names[application]

    async def forward(self, application: str, request: HttpExchange) -> HttpReply:
        self.forwarded.append((application, request))
        if self.forward_error is not None:
            raise self.forward_error
        return await run_asgi(self.targets[application].app, request)


def test_abserve_applications_are_those_whose_ingress_is_the_router() -> None:
    details = _details(("sales", "/models/sales", "RUNNING", "router"),
                       ("abserve", "/", "RUNNING", "router"),
                       ("other", "/other", "RUNNING", "Ingress"))
    details["applications"]["old"] = {"route_prefix": "/old", "status": "DEPLOYING",
                                      "deployments": {"router": {}, "controller": {}}}
    apps = abserve_applications(details)
    assert [(a.application, a.route_prefix, a.status) for a in apps] == [
        ("abserve", "/", "RUNNING"), ("sales", "/models/sales", "RUNNING"),
        ("old", "/old", "DEPLOYING")]
    assert abserve_applications({}) == []


def test_the_directory_names_each_model_caches_and_reads_once_for_many() -> None:
    now = [0.0]
    cluster = FakeCluster(
        _details(("abserve", "/", "RUNNING", "router"),
                 ("sales", "/models/sales", "DEPLOYING", "router"),
                 ("exp", "/exp", "RUNNING", "router")),
        names={"exp": "activity"})
    directory = ModelDirectory(cluster, model="activity", application="abserve",
                               route_prefix="/", ttl_s=3.0, clock=lambda: now[0])

    async def main() -> None:
        cluster.gate = asyncio.Event()
        readers = [asyncio.ensure_future(directory.models()) for _ in range(5)]
        await asyncio.sleep(0)
        cluster.gate.set()
        lists = await asyncio.gather(*readers)
        assert cluster.reads == 1 and all(x == lists[0] for x in lists)
        assert [e.to_dict() for e in lists[0]] == [
            {"name": "activity", "application": "abserve", "route_prefix": "/",
             "status": "RUNNING"},
            {"name": "activity", "application": "exp", "route_prefix": "/exp",
             "status": "RUNNING"},
            {"name": "sales", "application": "sales", "route_prefix": "/models/sales",
             "status": "DEPLOYING"},
        ]
        assert cluster.asked == ["exp"]  # only a prefix that names no model is asked
        now[0] = 2.9
        await directory.models()
        assert cluster.reads == 1
        now[0] = 3.0
        await directory.models()
        assert cluster.reads == 2 and cluster.asked == ["exp"]  # its name is kept
        found = await directory.find("activity")  # its own application before /exp
        assert found is not None and found.application == "abserve"
        assert await directory.find("nope") is None

    asyncio.run(main())


def test_a_failed_read_keeps_the_last_list_and_says_why() -> None:
    now = [0.0]
    cluster = FakeCluster(_details(("abserve", "/", "RUNNING", "router"),
                                   ("sales", "/models/sales", "RUNNING", "router")))
    directory = ModelDirectory(cluster, model="activity", application="abserve",
                               route_prefix="/", clock=lambda: now[0])

    async def main() -> None:
        cluster.fail = ConnectionError("controller gone")
        alone = await directory.models()
        assert [e.name for e in alone] == ["activity"] and alone[0].status == "UNKNOWN"
        assert directory.error == "ConnectionError: controller gone"
        now[0] = 10
        cluster.fail = None
        assert [e.name for e in await directory.models()] == ["activity", "sales"]
        assert directory.error is None
        now[0] = 20
        cluster.fail = TimeoutError()
        assert [e.name for e in await directory.models()] == ["activity", "sales"]
        assert directory.error == "TimeoutError"

    asyncio.run(main())


def test_get_models_lists_every_model_on_the_cluster() -> None:
    cluster = FakeCluster(_details(("abserve", "/", "RUNNING", "router"),
                                   ("sales", "/models/sales", "RUNNING", "router")))
    r = make_replica(cluster=cluster)

    async def scenario(client: httpx.AsyncClient) -> None:
        body = (await client.get("/models")).json()
        assert body["model"] == "activity" and {v["version"] for v in body["versions"]} == {
            "v1", "v2"}  # today's body, unchanged
        assert body["models"] == [
            {"name": "activity", "application": "abserve", "route_prefix": "/",
             "status": "RUNNING"},
            {"name": "sales", "application": "sales", "route_prefix": "/models/sales",
             "status": "RUNNING"}]
        for _ in range(20):
            await client.post("/predict", json={"features": FEATURES})
        assert cluster.reads == 1  # the predict path never reads the cluster

    drive([r], scenario)


def test_without_a_cluster_the_listing_is_this_model() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/models")).json()["models"] == [
            {"name": "activity", "application": "abserve", "route_prefix": "/",
             "status": "UNKNOWN"}]

    drive([make_replica()], scenario)


# ------------------------------------------------------------------ OIP forwarding


def _pair() -> tuple[Replica, Replica, FakeCluster]:
    cluster = FakeCluster(_details(("abserve", "/", "RUNNING", "router"),
                                   ("sales", "/models/sales", "RUNNING", "router")))
    default = make_replica(cluster=cluster)
    sales = make_replica("sales", "sales", "/models/sales")
    cluster.targets["sales"] = sales
    return default, sales, cluster


def _infer_body() -> dict[str, Any]:
    return {"id": "q1", "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                    "data": FEATURES}]}


def test_oip_for_another_model_is_answered_by_its_router_unchanged() -> None:
    default, sales, cluster = _pair()

    async def scenario(root: httpx.AsyncClient, direct: httpx.AsyncClient) -> None:
        meta = await root.get("/v2/models/sales")
        assert meta.status_code == 200 and meta.json()["name"] == "sales"
        assert meta.json() == (await direct.get("/v2/models/sales")).json()
        ready = await root.get("/v2/models/sales/versions/v2/ready")
        assert ready.json() == {"name": "sales", "ready": True}
        resp = await root.post("/v2/models/sales/infer?x=1", json=_infer_body(),
                               headers={"X-User-Id": "alice"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["model_name"], body["model_version"], body["id"]) == ("sales", "v1", "q1")
        assert resp.headers["x-model-version"] == "v1" and resp.headers["x-cache"]
        assert body["outputs"][0]["data"] == pytest.approx([0.3, 0.7])
        application, request = cluster.forwarded[-1]
        assert (application, request.method, request.path, request.query_string) == (
            "sales", "POST", "/v2/models/sales/infer", b"x=1")
        assert (b"x-user-id", b"alice") in request.headers
        assert sales.parts.core.stats["v1"].requests == 1  # sales' own router served it
        assert default.parts.core.stats["v1"].requests == 0
        # Its errors come back as it gave them: the protocol's 404 for a version it lacks.
        missing = await root.get("/v2/models/sales/versions/v9")
        assert missing.status_code == 404 and "v9" in missing.json()["error"]
        # This model's own OIP routes are served here, not forwarded.
        n = len(cluster.forwarded)
        assert (await root.get("/v2/models/activity")).json()["name"] == "activity"
        assert len(cluster.forwarded) == n

    drive([default, sales], scenario)


def test_an_unknown_model_is_404_listing_the_models() -> None:
    default, sales, cluster = _pair()

    async def scenario(root: httpx.AsyncClient, _: httpx.AsyncClient) -> None:
        for path in ("/v2/models/nope", "/v2/models/nope/infer"):
            resp = await (root.get(path) if path.endswith("nope") else
                          root.post(path, json=_infer_body()))
            assert resp.status_code == 404
            assert resp.json() == {"error": "unknown model 'nope'; the models on this "
                                            "cluster: ['activity', 'sales']"}
        assert cluster.forwarded == []

    drive([default, sales], scenario)


def test_forwarding_failures_are_plain_503s_and_body_limits_hold() -> None:
    default, sales, cluster = _pair()

    async def scenario(root: httpx.AsyncClient, _: httpx.AsyncClient) -> None:
        big = await root.post("/v2/models/sales/infer", content=b"x" * 5000,
                              headers={"content-type": "application/json"})
        assert big.status_code == 413 and set(big.json()) == {"error"}
        assert cluster.forwarded == []  # refused here, before any call
        cluster.forward_error = RuntimeError("replica died")
        down = await root.post("/v2/models/sales/infer", json=_infer_body())
        assert down.status_code == 503
        assert down.json() == {"error": "model 'sales' (application 'sales') did not "
                                        "answer: RuntimeError; retry shortly"}

    drive([default, sales], scenario)


def test_an_unlisted_cluster_is_503_not_a_false_404() -> None:
    default, sales, cluster = _pair()
    cluster.fail = ConnectionError("no controller")

    async def scenario(root: httpx.AsyncClient, _: httpx.AsyncClient) -> None:
        resp = await root.get("/v2/models/sales")
        assert resp.status_code == 503 and "could not be listed" in resp.json()["error"]

    drive([default, sales], scenario)


def test_run_asgi_answers_as_the_http_client_gets_it() -> None:
    r = make_replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        over_http = await client.post("/predict", json={"features": FEATURES},
                                      headers={"X-Model-Version": "v2"})
        reply = await run_asgi(r.app, HttpExchange(
            "POST", "/predict", b"",
            ((b"content-type", b"application/json"), (b"x-model-version", b"v2")),
            b'{"features": [0.1, 0.2, 0.3, 0.4]}'))
        assert reply.status == over_http.status_code == 200
        headers = {k.lower(): v for k, v in reply.headers}
        assert headers[b"x-model-version"] == b"v2" and headers[b"content-type"] == (
            b"application/json")
        assert httpx.Response(200, content=reply.body).json()["version"] == "v2"
        missing = await run_asgi(r.app, HttpExchange("GET", "/nowhere"))
        assert missing.status == 404

    drive([r], scenario)


# ------------------------------------------------------------------ one cache for all


def test_two_models_on_one_cache_never_share_a_key_and_keep_the_prefix() -> None:
    """Both routers write to one backend (one Redis on the cluster): the same input to the
    same version name under two models is two keys, each under its config's key_prefix."""
    shared = LocalCache()
    setup = CacheSetup(shared, "local", None)
    activity = make_replica(cache=setup)
    sales = make_replica("sales", "sales", "/models/sales", cache=setup, key_prefix="shop")

    async def scenario(a: httpx.AsyncClient, s: httpx.AsyncClient) -> None:
        body = {"features": FEATURES}
        first_a = await a.post("/predict", json=body)
        first_s = await s.post("/predict", json=body)
        assert first_a.headers["x-cache"] == first_s.headers["x-cache"] == "MISS"
        for _ in range(100):  # the writes land in the background
            if len(shared._data) == 2:
                break
            await asyncio.sleep(0.01)
        keys = sorted(shared._data)
        assert [k.rsplit(":", 1)[0] for k in keys] == ["abserve:activity:v1", "shop:sales:v1"]
        # Each model reads back its own answer, never the other's.
        again_a = await a.post("/predict", json=body)
        again_s = await s.post("/predict", json=body)
        assert again_a.headers["x-cache"] == again_s.headers["x-cache"] == "HIT"
        assert again_a.json()["probabilities"] == first_a.json()["probabilities"]
        assert again_s.json()["probabilities"] == first_s.json()["probabilities"]
        assert again_a.json()["probabilities"] != again_s.json()["probabilities"]

    drive([activity, sales], scenario)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("abserve", "activity", "v1"), ("abserve", "sales", "v1")),
        (("a:b", "c", "v1"), ("a", "b", "v1")),  # a prefix may hold colons
        (("x", "m", "v1"), ("x:m", "v1", "v1")),
    ],
)
def test_keys_of_different_models_or_prefixes_never_collide(
    a: tuple[str, str, str], b: tuple[str, str, str]
) -> None:
    """A key is ``prefix:model:version:digest``; model and version hold no colon and the
    digest is fixed-width hex, so a key parses back from the right into exactly one
    (prefix, model, version): equal keys mean equal triples."""
    import numpy as np

    x = np.asarray(FEATURES, dtype=np.float32)
    ka, kb = cache_key(a[1], a[2], x, a[0]), cache_key(b[1], b[2], x, b[0])
    assert ka != kb
    for key, (prefix, model, version) in ((ka, a), (kb, b)):
        assert key.startswith(f"{prefix}:")
        head, digest = key.rsplit(":", 1)
        assert len(digest) == 32 and all(c in "0123456789abcdef" for c in digest)
        assert head.rsplit(":", 2) == [prefix, model, version]


def test_model_and_version_names_hold_no_colon() -> None:
    """What the key's parse from the right rests on: the config refuses a colon there."""
    with pytest.raises(ConfigError, match="model"):
        _config("a:b", "app")
    with pytest.raises(ConfigError, match="version"):
        parse_config({"models": [{"version": "v:1"}], "experiment": {
            "baseline": "v:1", "arms": [{"version": "v:1", "weight": 100}]}})
