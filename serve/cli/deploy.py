"""Commands that change what runs: up, deploy-version, down.

``up`` checks what it can before it starts anything (serve/cli/precheck.py),
starts (or joins) a Ray cluster and a redis-server, deploys, and waits until
every arm answers; when Serve reports the deployment failed it shows the
replica's own error, not only the deployment's name. ``up -c a.yaml -c b.yaml``
deploys each config as its own Serve application at its ``http.route_prefix``,
on the cluster, HTTP proxy and Redis the first one sets up. What it started is
recorded in ``.abserve/state.json`` for ``down``, which deletes every
application and stops exactly those processes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from serve.cli.precheck import check_before_deploy
from serve.cli.state import (
    DEFAULT_CONFIG,
    STATE_DIR,
    app_entry,
    app_for_model,
    merge_apps,
    read_state,
    record_extra_model,
    state_file,
    with_extra_models,
    write_state,
)
from serve.config import AbserveConfig, grpc_options, load_config, side_by_side_problems
from serve.errors import AbserveError
from serve.local.env import ray_env
from serve.local.pids import pid_alive, stop_pid
from serve.local.ports import free_port, port_free
from serve.local.ray_head import connect, start_ray_head, stop_ray_head, wait_for_gcs
from serve.local.redis_server import eviction_warning, start_redis

__all__ = [
    "add_parsers", "apps_to_delete", "cmd_deploy_version", "cmd_down", "cmd_up",
    "config_paths", "deploy_app", "deploy_apps", "failure_text", "http_get", "load_configs",
    "replica_error", "wait_running",
]

# The redis-server `up` starts listens here when the port is free (else on any free one).
DEFAULT_REDIS_PORT = 6390
_FAILED = ("DEPLOY_FAILED", "UNHEALTHY")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET ``url``: its status and its JSON (or its text when it is not JSON)."""
    import httpx

    r = httpx.get(url, timeout=timeout)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


# ---------------------------------------------------------------- deploying and waiting


def replica_error(message: str) -> str:
    """The replica's own exception, from a deployment's status message.

    Serve writes "The deployment failed to start N times in a row. ... Error:"
    and then the replica's traceback; its last unindented line names the
    exception and says what went wrong. Other messages are returned whole.
    """
    _, sep, detail = message.partition("Error:\n")
    if not sep:
        return message.strip()
    lines = [line.rstrip() for line in detail.splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith((" ", "\t")):
            return line.strip()
    return detail.strip()


def failure_text(app_name: str, app: Any) -> str:
    """What to print for a failed application: its status, then each failed deployment's
    own error (``app``: an ``ApplicationStatusOverview`` from ``serve.status()``)."""
    lines = [f"application {app_name} {app.status.value}: {app.message}"]
    for name, dep in sorted(app.deployments.items()):
        if dep.status.value in _FAILED and dep.message:
            lines.append(f"  {name}: {replica_error(dep.message)}")
    if len(lines) > 1:
        lines.append("  (the whole traceback: serve.status() or the Ray dashboard's Serve page)")
    return "\n".join(lines)


def _progress_line(app: Any) -> str:
    parts = []
    for name, dep in sorted(app.deployments.items()):
        states = dep.replica_states or {}
        counts = {str(getattr(k, "value", k)): n for k, n in states.items()}
        parts.append(f"{name} {counts.get('RUNNING', 0)}/{sum(counts.values())} "
                     f"{dep.status.value}")
    return f"  [{app.status.value}] " + "; ".join(parts)


def wait_running(app_name: str, timeout_s: float) -> None:
    """Print progress until ``app_name`` is RUNNING; raise with the replicas' errors if not."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        app = serve.status().applications.get(app_name)
        if app is not None:
            line = _progress_line(app)
            if line != last:
                print(line, flush=True)
                last = line
            if app.status.value == "RUNNING":
                return
            if app.status.value in _FAILED:
                raise AbserveError(failure_text(app_name, app))
        if time.monotonic() > deadline:
            raise AbserveError(f"application {app_name} not running after {timeout_s:.0f}s")
        time.sleep(1)


def deploy_apps(configs: list[AbserveConfig]) -> None:
    """Submit the applications, each at its route prefix, without blocking, so `up` can
    show progress; Serve builds them side by side."""
    from ray import serve

    from serve.app import build_app

    serve.run_many(
        [serve.RunTarget(build_app(c), name=c.app_name, route_prefix=c.http.route_prefix)
         for c in configs],
        wait_for_applications_running=False,
    )


def deploy_app(config: AbserveConfig) -> None:
    deploy_apps([config])


def _replicas_text(m: Any) -> str:
    a = m.autoscaling
    return str(m.num_replicas) if a is None else f"{a.min_replicas}-{a.max_replicas} (autoscaling)"


def _with_cache_url(config: AbserveConfig, redis_url: str) -> AbserveConfig:
    return config.model_copy(
        update={"cache": config.cache.model_copy(update={"redis_url": redis_url})}
    )


# ---------------------------------------------------------------- up


def _cluster_to_use(args: argparse.Namespace,
                    config: AbserveConfig) -> tuple[dict[str, Any], str | None]:
    """The recorded state still valid for this run, and the cluster address (None: start one)."""
    state = read_state()
    if state.get("ray_pid") and pid_alive(int(state["ray_pid"])):
        print(f"a cluster started by abserve is already running (pid {state['ray_pid']}); "
              "redeploying onto it")
        args.address = args.address or state.get("ray_address")
    address = args.address or os.environ.get("RAY_ADDRESS") or config.cluster.address
    kept = ("ray_pid", "redis_pid", "redis_url", "apps")
    same_cluster = address is not None and state.get("ray_address") == address
    return ({k: v for k, v in state.items() if k in kept} if same_cluster else {}), address


def _warn_if_redis_would_not_evict(url: str) -> None:
    """A Redis of the user's own, checked once at `up`: unbounded, or full and refusing
    writes, it is no cache (CONFIG GET maxmemory*; managed services that refuse CONFIG
    are said to be unchecked). Never fails `up`: the routers bypass a Redis they cannot use."""
    from router.dataplane.cache import redact_url

    if "+cluster://" in url:
        return  # each node has its own settings; see docs/serving.md "Redis Cluster"
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                      decode_responses=True)
        try:
            info = dict(client.config_get("maxmemory*"))
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - a check, not a requirement
        print(f"note: could not check {redact_url(url)}'s memory bound ({type(exc).__name__}); "
              "make sure it has a maxmemory and an evicting maxmemory-policy", file=sys.stderr)
        return
    problem = eviction_warning(info)
    if problem is not None:
        print(f"warning: Redis {redact_url(url)}: {problem}", file=sys.stderr)


def _needs_redis(config: AbserveConfig) -> bool:
    return config.cache.enabled and not config.cache.redis_url


def _start_redis_if_needed(configs: list[AbserveConfig], state: dict[str, Any],
                           redis_port: int | None) -> list[AbserveConfig]:
    """Redis first: the router reads its URL from the config it is given. One
    redis-server for every config that names none (their keys carry the model's name)."""
    redis_url = state.get("redis_url")
    if not redis_url and any(_needs_redis(c) for c in configs):
        port = redis_port or (DEFAULT_REDIS_PORT if port_free(DEFAULT_REDIS_PORT)
                              else free_port())
        try:
            managed = [c.cache for c in configs if _needs_redis(c)]
            proc = start_redis(port, STATE_DIR.resolve() / "redis.log",
                               maxmemory_mb=max(c.managed_maxmemory_mb for c in managed),
                               eviction=managed[0].managed_eviction)
        except FileNotFoundError:
            print("warning: redis-server is not installed and cache.redis_url is empty: "
                  "using an in-process LRU cache per router replica", file=sys.stderr)
        else:
            redis_url = f"redis://127.0.0.1:{port}/0"
            state.update(redis_pid=proc.pid, redis_url=redis_url)
            print(f"started redis-server on 127.0.0.1:{port} (pid {proc.pid})")
    if not redis_url:
        return configs
    return [_with_cache_url(c, redis_url) if _needs_redis(c) else c for c in configs]


def _start_head(config: AbserveConfig, state: dict[str, Any]) -> str:
    log_path = STATE_DIR.resolve() / "ray.log"
    proc, address = start_ray_head(config, log_path)
    state["ray_pid"] = proc.pid
    print(f"starting a local Ray cluster at {address} (pid {proc.pid})", flush=True)
    wait_for_gcs(config.cluster.gcs_port, proc, timeout_s=60, log_path=log_path)
    return address


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            status, _ = http_get(f"{url}/ready")
            if status == 200:
                return
        if time.monotonic() > deadline:
            raise AbserveError(f"{url}/ready did not answer 200 within {timeout_s}s")
        time.sleep(1)


def config_paths(args: argparse.Namespace) -> list[str]:
    """The configs of ``up``: every ``-c``, in order; none: abserve.yaml."""
    paths = list(args.config or [DEFAULT_CONFIG])
    dupes = sorted({p for p in paths if paths.count(p) > 1})
    if dupes:
        raise AbserveError(f"config(s) {dupes} given twice; give each -c once")
    return paths


def load_configs(paths: list[str]) -> list[AbserveConfig]:
    """Each config (with the versions ``deploy-version`` added), refused together when
    they cannot run side by side (serve/config.py ``side_by_side_problems``)."""
    configs = [with_extra_models(load_config(p)) for p in paths]
    problems = side_by_side_problems(list(zip(paths, configs, strict=True)))
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise AbserveError(f"not deploying, nothing was started; fix first:\n{listed}")
    return configs


def _start_serve(config: AbserveConfig) -> None:
    """Serve's controller and the cluster's one HTTP proxy (and gRPC ingress, when
    ``http.grpc_port`` is set), as the first config says."""
    from ray import serve

    serve.start(proxy_location=config.http.proxy_location,
                http_options={"host": config.http.host, "port": config.http.port},
                grpc_options=grpc_options(config.http.grpc_port))


def cmd_up(args: argparse.Namespace) -> int:
    from router.dataplane.cache import redact_url

    paths = config_paths(args)
    configs = load_configs(paths)
    first = configs[0]
    state, address = _cluster_to_use(args, first)
    needs_redis = not state.get("redis_url") and any(_needs_redis(c) for c in configs)
    check_before_deploy(
        first, starting_cluster=address is None,
        redis_port=args.redis_port if needs_redis else None,
        others=list(zip(paths[1:], configs[1:], strict=True)), name=paths[0],
    )
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    for url in sorted({c.cache.redis_url for c in configs
                       if c.cache.enabled and c.cache.redis_url}):
        _warn_if_redis_would_not_evict(url)
    configs = _start_redis_if_needed(configs, state, args.redis_port)

    # Serve reads its ingress flags from the environment at import: the driver too.
    os.environ.update(ray_env(first.http.ingress))
    if address is None:
        address = _start_head(first, state)
    state["ray_address"] = address
    write_state(state)

    connect(address)
    _start_serve(first)
    for config in configs:
        at = config.http.route_prefix
        print(f"deploying {config.app_name} at {at}: "
              + ", ".join(f"{config.model}:{m.version} x{_replicas_text(m)}"
                          for m in config.models), flush=True)
    deploy_apps(configs)
    host = "127.0.0.1" if first.http.host in ("0.0.0.0", "::") else first.http.host
    url = f"http://{host}:{first.http.port}"
    apps = [app_entry(c, str(Path(p).resolve()), url)
            for p, c in zip(paths, configs, strict=True)]
    for config, app in zip(configs, apps, strict=True):
        wait_running(config.app_name, args.timeout)
        _wait_ready(app["url"], args.timeout)
    dashboard = f"http://{first.cluster.dashboard_host}:{first.cluster.dashboard_port}"
    state.update(url=url, app_name=first.app_name, dashboard=dashboard,
                 config=apps[0]["config"], apps=merge_apps(state.get("apps") or [], apps))
    write_state(state)
    redis_urls = {c.cache.redis_url for c in configs if c.cache.enabled}
    cache = ", ".join(sorted(redact_url(u) if u else "in-process LRU" for u in redis_urls))
    endpoints = "\n".join(f"  endpoint:  {a['url']}/predict   ({a['model']}; docs: "
                          f"{a['url']}/docs)" for a in apps)
    print(f"ready: every arm answers\n{endpoints}\n"
          f"  dashboard: {dashboard}\n"
          f"  cache:     {cache or 'off'}\n"
          "  stop with: abserve down")
    return 0


# ---------------------------------------------------------------- deploy-version, down


def cmd_deploy_version(args: argparse.Namespace) -> int:
    """Add a registered version to the running application at weight 0."""
    from models.registry import Registry
    from serve.cli.admin import admin_call, print_experiment
    from serve.config import ModelConfig

    state = read_state()
    recorded = app_for_model(state, args.model) if args.model else None
    if args.model and recorded is None and not args.config:
        raise AbserveError(f"no application of model {args.model!r} recorded; run "
                           "`abserve up -c CONFIG` with its config, or pass --config")
    config_path = args.config or (recorded or {}).get("config") or state.get("config")
    if not config_path or not state.get("ray_address"):
        raise AbserveError("no running application recorded; run `abserve up` first")
    config = with_extra_models(load_config(config_path))
    if args.version in {m.version for m in config.models}:
        raise AbserveError(f"version {args.version} is already deployed")
    registry = Registry(config.registry)
    registry.verified_artifact(registry.manifest(config.model, args.version))
    entry = ModelConfig.model_validate({
        "version": args.version, "num_replicas": args.replicas, "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus, "max_batch_size": args.max_batch_size,
    })
    new = config.model_copy(update={"models": [*config.models, entry]})
    if state.get("redis_url") and not new.cache.redis_url:
        new = _with_cache_url(new, state["redis_url"])
    os.environ.update(ray_env(new.http.ingress))
    connect(state["ray_address"])
    print(f"deploying {config.model}:{args.version} beside the running versions", flush=True)
    deploy_app(new)
    wait_running(new.app_name, args.timeout)
    record_extra_model(config, entry.model_dump(mode="json"))
    # Only now, with its replicas ready, does it become an arm (at weight 0), through
    # this model's own admin API.
    args.url = None
    args.model = None if new.http.route_prefix == "/" else new.model
    print_experiment(admin_call(args, "POST", "/admin/candidates",
                                {"version": args.version, "weight": 0}))
    print(f"{args.version} is ready at weight 0; raise it with `abserve traffic`")
    return 0


def apps_to_delete(state: dict[str, Any]) -> list[str]:
    """Every application ``up`` recorded (a state from before ``apps``: its one)."""
    names = [str(a["app_name"]) for a in state.get("apps") or [] if a.get("app_name")]
    if state.get("app_name") and state["app_name"] not in names:
        names.insert(0, str(state["app_name"]))
    return names


def _delete_apps(address: str, names: list[str], *, shutdown_serve: bool = False) -> None:
    """Delete ``names`` (each waits for its replicas' graceful stop); with
    ``shutdown_serve`` (a cluster ``up`` started), then Serve itself, so that the head's
    own stop is quick: with Serve's proxies still up, the node drained for 30 s on SIGTERM
    (``down`` measured 66 s, then 37 s with this)."""
    connect(address)
    import ray
    from ray import serve

    for name in names:
        try:
            serve.delete(name)
        except Exception as exc:  # noqa: BLE001 - delete the others all the same
            print(f"warning: could not delete application {name}: {exc}", file=sys.stderr)
        else:
            print(f"deleted application {name} from {address}")
    if shutdown_serve:
        serve.shutdown()
        ray.shutdown()


def cmd_down(args: argparse.Namespace) -> int:
    state = read_state()
    if not state:
        print("nothing to stop (no .abserve/state.json)")
        return 0
    names = apps_to_delete(state)
    if state.get("ray_address") and names:
        # Delete our applications first, on a cluster we started too: a graceful stop lets
        # each experiment controller save its last second of counters (SIGKILL would not).
        with contextlib.suppress(Exception):
            _delete_apps(state["ray_address"], names, shutdown_serve=bool(state.get("ray_pid")))
    if state.get("ray_pid"):
        stop_ray_head(int(state["ray_pid"]), timeout_s=60)
        print(f"stopped the Ray cluster (pid {state['ray_pid']})")
    if state.get("redis_pid"):
        stop_pid(int(state["redis_pid"]))
        print(f"stopped redis-server (pid {state['redis_pid']})")
    state_file().unlink(missing_ok=True)
    return 0


def add_parsers(sub: Any) -> None:
    u = sub.add_parser("up", help="start (or join) a Ray cluster and deploy the config(s), "
                                  "each as its own application at its http.route_prefix")
    u.add_argument("--config", "-c", action="append", metavar="FILE",
                   help=f"a config to deploy (default {DEFAULT_CONFIG}); repeat it to serve "
                        "several models side by side: the first starts the cluster and Redis")
    u.add_argument("--address", help="existing Ray cluster (or set RAY_ADDRESS)")
    u.add_argument("--redis-port", type=int, help="port of the local redis-server to start")
    u.add_argument("--timeout", type=float, default=300)
    u.set_defaults(func=cmd_up)

    dv = sub.add_parser("deploy-version",
                        help="deploy a registered version into the running app, at weight 0")
    dv.add_argument("version")
    dv.add_argument("--config", "-c")
    dv.add_argument("--model", help="the model whose application gets the version "
                                    "(default: the default model's)")
    dv.add_argument("--replicas", type=int, default=1)
    dv.add_argument("--num-cpus", type=float, default=0.25)
    dv.add_argument("--num-gpus", type=float, default=0.0)
    dv.add_argument("--max-batch-size", type=int, default=64)
    dv.add_argument("--timeout", type=float, default=300)
    dv.set_defaults(func=cmd_deploy_version)

    d = sub.add_parser("down", help="delete every application `abserve up` deployed, then "
                                    "stop what it started, by PID")
    d.set_defaults(func=cmd_down)
