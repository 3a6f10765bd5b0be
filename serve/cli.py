"""The ``abserve`` command: train | register | validate | up | status | predict | down.

``up`` leaves a running application behind and records what it started (Ray
head PID, redis-server PID, URLs) in ``.abserve/state.json``; ``down`` stops
exactly those processes, by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router.dataplane.cache import redact_url
from serve.config import AbserveConfig, load_config
from serve.errors import AbserveError
from serve.local.env import ray_env

__all__ = ["main"]

DEFAULT_CONFIG = "abserve.yaml"
STATE_DIR = Path(os.environ.get("ABSERVE_STATE_DIR", ".abserve"))


# ---------------------------------------------------------------- helpers


def _state_file() -> Path:
    return STATE_DIR / "state.json"


def _read_state() -> dict[str, Any]:
    try:
        return dict(json.loads(_state_file().read_text()))
    except (OSError, ValueError):
        return {}


def _write_state(state: dict[str, Any]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = _state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(_state_file())


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# Listening ports are drawn below Linux's ephemeral range (32768-60999) and above
# Ray's worker ports (10002-19999): a port the kernel hands out for outgoing
# connections (Ray opens many) can be taken between the pick and the bind.
LISTEN_PORTS = (20000, 32000)


def free_port() -> int:
    """A port free on 127.0.0.1 now, outside the ephemeral and Ray worker ranges."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*LISTEN_PORTS)
        if _port_free(port):
            return port
    with socket.socket() as s:  # the range is full: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_pid(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL: one process we started, by PID."""
    if not _pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not _pid_alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def redis_command(
    binary: str, port: int, log_path: Path, *, password: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """redis-server bound to loopback only; ``password`` adds ``--requirepass``."""
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
           "no", "--daemonize", "no", "--logfile", str(log_path)]
    if password is not None:
        cmd += ["--requirepass", password]
    return [*cmd, *extra]


def start_redis(
    port: int, log_path: Path, *, password: str | None = None
) -> subprocess.Popen[bytes]:
    """A throwaway redis-server on loopback: no persistence, no protected-mode surprises."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        redis_command(binary, port, log_path, password=password),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as c:
            c.sendall(b"PING\r\n")
            if c.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # up (NOAUTH: a password is set)
                return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_pid(proc.pid)
    raise RuntimeError(f"redis-server did not start on port {port}; see {log_path}")


def _ray_binary() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def ray_head_command(config: AbserveConfig) -> list[str]:
    """``ray start --head``: node IP and dashboard on loopback unless the config says so."""
    c = config.cluster
    cmd = [
        _ray_binary(), "start", "--head", "--block", "--disable-usage-stats",
        f"--port={c.gcs_port}", "--node-ip-address=127.0.0.1",
        f"--dashboard-host={c.dashboard_host}", f"--dashboard-port={c.dashboard_port}",
        "--include-dashboard=true",
    ]
    if c.num_cpus:
        cmd.append(f"--num-cpus={c.num_cpus}")
    return cmd


def start_ray_head(config: AbserveConfig, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``ray start --head --block`` as a child we can stop by PID (it stops its own children)."""
    c = config.cluster
    if not _port_free(c.gcs_port):
        raise AbserveError(
            f"port {c.gcs_port} (cluster.gcs_port) is taken: is a Ray cluster already running? "
            "Run `abserve down`, or deploy onto it with `abserve up --address 127.0.0.1:PORT`."
        )
    cmd = ray_head_command(config)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ray_env(config.http.ingress)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )
    return proc, f"127.0.0.1:{c.gcs_port}"


def _ray_auth_env() -> None:
    """`ray start` (2.60) turns on token auth and writes ~/.ray/auth_token; a driver
    connecting to such a cluster must opt in, before ray is first imported."""
    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _port_open(port):
        if proc.poll() is not None:
            raise AbserveError(f"ray start exited with {proc.returncode}; see .abserve/ray.log")
        if time.monotonic() > deadline:
            raise AbserveError(f"Ray's GCS did not open port {port} in {timeout_s:.0f}s")
        time.sleep(0.5)
    time.sleep(2)  # the head writes its auth token and address file right after


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _connect(address: str) -> None:
    _ray_auth_env()
    import ray

    deadline = time.monotonic() + 90
    while True:
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            return
        except Exception:  # noqa: BLE001 - the head may still be starting
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    import httpx

    r = httpx.get(url, timeout=timeout)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


# ---------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from models.activity.train import train_all

    train_all(args.registry, seed=args.seed)
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from models.register import register_user_model
    from models.registry import Registry

    manifest = register_user_model(
        Registry(args.registry),
        args.name,
        args.version,
        args.framework,
        args.artifact,
        input_shape=tuple(int(x) for x in args.input_shape.split(",")),
        class_labels=tuple(args.labels.split(",")),
        torch_class=args.torch_class,
        init_kwargs=json.loads(args.init_kwargs) if args.init_kwargs else None,
        output=args.output,
        description=args.description,
        overwrite=args.overwrite,
    )
    print(f"registered {manifest.name}:{manifest.version} ({manifest.framework}) "
          f"sha256 {manifest.sha256[:12]}... under {args.registry}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from models.registry import Registry

    registry = Registry(config.registry)
    problems = []
    for m in config.models:
        try:
            registry.verified_artifact(registry.manifest(config.model, m.version))
        except AbserveError as exc:
            problems.append(f"models[{m.version}]: {exc.message}")
    if problems and args.check_registry:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 1
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    weights = ", ".join(f"{a.version}={a.weight:g}%" for a in config.experiment.arms)
    print(f"{args.config}: ok ({len(config.models)} versions; {weights}; "
          f"baseline {config.experiment.baseline})")
    return 0


def _wait_running(app_name: str, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        app = serve.status().applications.get(app_name)
        if app is not None:
            parts = []
            for name, dep in sorted(app.deployments.items()):
                states = dep.replica_states or {}
                counts = {str(getattr(k, "value", k)): n for k, n in states.items()}
                running = counts.get("RUNNING", 0)
                total = sum(counts.values())
                parts.append(f"{name} {running}/{total} {dep.status.value}")
            line = f"  [{app.status.value}] " + "; ".join(parts)
            if line != last:
                print(line, flush=True)
                last = line
            if app.status.value == "RUNNING":
                return
            if app.status.value in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise AbserveError(f"application {app_name} {app.status.value}: {app.message}")
        if time.monotonic() > deadline:
            raise AbserveError(f"application {app_name} not running after {timeout_s:.0f}s")
        time.sleep(1)


def _extra_models_file(config: AbserveConfig) -> Path:
    return Path(config.state.dir) / f"{config.app_name}.models.json"


def with_extra_models(config: AbserveConfig) -> AbserveConfig:
    """The config plus the versions added by `abserve deploy-version` (kept in state.dir)."""
    from serve.config import ModelConfig

    try:
        extra = json.loads(_extra_models_file(config).read_text())
    except FileNotFoundError:
        return config
    known = {m.version for m in config.models}
    added = [ModelConfig.model_validate(m) for m in extra if m["version"] not in known]
    return config.model_copy(update={"models": [*config.models, *added]}) if added else config


def cmd_up(args: argparse.Namespace) -> int:
    config = with_extra_models(load_config(args.config))
    state = _read_state()
    if state.get("ray_pid") and _pid_alive(int(state["ray_pid"])):
        print(f"a cluster started by abserve is already running (pid {state['ray_pid']}); "
              "redeploying onto it")
        args.address = args.address or state.get("ray_address")
    address = args.address or os.environ.get("RAY_ADDRESS") or config.cluster.address
    state = {k: v for k, v in state.items() if k in ("ray_pid", "redis_pid", "redis_url")
             and state.get("ray_address") == address} if address else {}
    STATE_DIR.mkdir(parents=True, exist_ok=True)

    # Redis first: the router reads its URL from the config it is given.
    redis_url = config.cache.redis_url or state.get("redis_url")
    if config.cache.enabled and not redis_url:
        port = args.redis_port or (6390 if _port_free(6390) else free_port())
        try:
            proc = start_redis(port, STATE_DIR.resolve() / "redis.log")
        except FileNotFoundError:
            print("warning: redis-server is not installed and cache.redis_url is empty: "
                  "using an in-process LRU cache per router replica", file=sys.stderr)
        else:
            redis_url = f"redis://127.0.0.1:{port}/0"
            state.update(redis_pid=proc.pid, redis_url=redis_url)
            print(f"started redis-server on 127.0.0.1:{port} (pid {proc.pid})")
    if redis_url:
        config = config.model_copy(
            update={"cache": config.cache.model_copy(update={"redis_url": redis_url})}
        )

    # Serve reads its ingress flags from the environment at import: the driver too.
    os.environ.update(ray_env(config.http.ingress))
    if address is None:
        proc, address = start_ray_head(config, STATE_DIR.resolve() / "ray.log")
        state["ray_pid"] = proc.pid
        print(f"starting a local Ray cluster at {address} (pid {proc.pid})", flush=True)
        _wait_for_port(config.cluster.gcs_port, proc, timeout_s=60)
    state["ray_address"] = address
    _write_state(state)

    _connect(address)
    from ray import serve

    serve.start(proxy_location=config.http.proxy_location,
                http_options={"host": config.http.host, "port": config.http.port})
    print(f"deploying {config.app_name}: "
          + ", ".join(f"{config.model}:{m.version} x{_replicas_text(m)}" for m in config.models),
          flush=True)
    _deploy(config)
    _wait_running(config.app_name, args.timeout)
    host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::") else config.http.host
    url = f"http://{host}:{config.http.port}"
    deadline = time.monotonic() + args.timeout
    while True:
        with contextlib.suppress(Exception):
            status, body = _http_get(f"{url}/ready")
            if status == 200:
                break
        if time.monotonic() > deadline:
            raise AbserveError(f"{url}/ready did not answer 200 within {args.timeout}s")
        time.sleep(1)
    dashboard = f"http://{config.cluster.dashboard_host}:{config.cluster.dashboard_port}"
    state.update(url=url, app_name=config.app_name, dashboard=dashboard,
                 config=str(Path(args.config).resolve()))
    _write_state(state)
    print(f"ready: every arm answers\n  endpoint:  {url}/predict   (docs: {url}/docs)\n"
          f"  dashboard: {dashboard}\n"
          f"  cache:     {redact_url(redis_url) if redis_url else 'in-process LRU'}\n"
          "  stop with: abserve down")
    return 0


def _replicas_text(m: Any) -> str:
    a = m.autoscaling
    return str(m.num_replicas) if a is None else f"{a.min_replicas}-{a.max_replicas} (autoscaling)"


def _deploy(config: AbserveConfig) -> None:
    """Submit the application without blocking, so `up` can show progress."""
    from ray import serve

    from serve.app import build_app

    serve.run_many(
        [serve.RunTarget(build_app(config), name=config.app_name, route_prefix="/")],
        wait_for_applications_running=False,
    )


def cmd_deploy_version(args: argparse.Namespace) -> int:
    """Add a registered version to the running application at weight 0."""
    from models.registry import Registry
    from serve.config import ModelConfig

    state = _read_state()
    config_path = args.config or state.get("config")
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
        new = new.model_copy(
            update={"cache": new.cache.model_copy(update={"redis_url": state["redis_url"]})}
        )
    os.environ.update(ray_env(new.http.ingress))
    _connect(state["ray_address"])
    print(f"deploying {config.model}:{args.version} beside the running versions", flush=True)
    _deploy(new)
    _wait_running(new.app_name, args.timeout)
    path = _extra_models_file(config)
    extra = json.loads(path.read_text()) if path.exists() else []
    extra.append(entry.model_dump(mode="json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(extra, indent=1))
    # Only now, with its replicas ready, does it become an arm (at weight 0).
    args.url = None
    _print_experiment(_admin_call(args, "POST", "/admin/candidates",
                                  {"version": args.version, "weight": 0}))
    print(f"{args.version} is ready at weight 0; raise it with `abserve traffic`")
    return 0


def _replica_counts(state: dict[str, Any], app_name: str | None) -> dict[str, Any]:
    """Running/target replicas per deployment from Serve, or {} when Ray is out of reach."""
    if not state.get("ray_address") or not app_name:
        return {}
    try:
        _connect_quietly(state["ray_address"])
        from serve.scaling import replica_counts

        return replica_counts(app_name)
    except Exception as exc:  # noqa: BLE001 - the table still shows what the router knows
        print(f"warning: no replica counts from {state['ray_address']}: {exc!r}",
              file=sys.stderr)
        return {}


def _connect_quietly(address: str) -> None:
    _ray_auth_env()
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def cmd_status(args: argparse.Namespace) -> int:
    """The experiment at a glance: per version replicas, weight, observed share, error and
    fallback rates (this router replica's counters), and the cache hit rate. No admin token."""
    _ray_auth_env()  # before serve.app imports ray
    from serve.app import ROUTER_DEPLOYMENT, model_deployment_name

    state = _read_state()
    url = args.url or state.get("url")
    if url is None:
        print("no application recorded in .abserve/state.json; run `abserve up`", file=sys.stderr)
        return 1
    try:
        _, models = _http_get(f"{url}/models")
        ready_status, ready = _http_get(f"{url}/ready")
        _, stats = _http_get(f"{url}/stats")
    except Exception as exc:  # noqa: BLE001
        print(f"{url} does not answer: {exc}", file=sys.stderr)
        return 1
    replicas = {} if args.no_replicas else _replica_counts(state, state.get("app_name"))

    def replicas_of(deployment: str) -> str:
        c = replicas.get(deployment)
        return "-" if c is None else f"{c.running}/{c.target}"

    print(f"{url}  model {models['model']}  experiment {models['experiment']}  "
          f"baseline {models.get('baseline')}  ready={ready.get('ready')}")
    total = sum(s.get("requests", 0) for s in stats["arms"].values())
    print(f"{'version':<10}{'framework':<12}{'replicas':>9}{'weight':>8}{'share':>8}"
          f"{'requests':>10}{'errors':>8}{'fallbk':>8}{'ready':>7}{'breaker':>11}"
          f"{'accuracy':>10}")
    for v in models["versions"]:
        s = stats["arms"].get(v["version"], {})
        n = s.get("requests", 0)
        acc = v.get("accuracy")
        mark = "*" if v.get("baseline") else ""
        print(f"{v['version'] + mark:<10}{v['framework']:<12}"
              f"{replicas_of(model_deployment_name(models['model'], v['version'])):>9}"
              f"{v['weight']:>7g}%{_pct(n, total):>8}{n:>10}"
              f"{_pct(s.get('failures', 0), n):>8}{_pct(s.get('fallbacks', 0), n):>8}"
              f"{str(ready['arms'].get(v['version'])):>7}{v['breaker']:>11}"
              f"{(f'{acc:.3f}' if acc is not None else '-'):>10}")
    c = stats["cache"]
    lookups = c["hits"] + c["misses"]
    print(f"router replicas {replicas_of(ROUTER_DEPLOYMENT)}; counters of router replica "
          f"{stats['replica']}  (* baseline; errors: failed calls to the version; fallbk: its "
          "requests the baseline answered)")
    print(f"cache ({c['kind']}): hit rate {_pct(c['hits'], lookups)}  hits {c['hits']} "
          f"misses {c['misses']} bypasses {c['bypasses']}")
    return 0 if ready_status == 200 else 1


def cmd_predict(args: argparse.Namespace) -> int:
    import httpx

    from models.activity.data import sample_window

    state = _read_state()
    url = args.url or state.get("url") or "http://127.0.0.1:8000"
    headers = {}
    if args.user:
        headers["X-User-Id"] = args.user
    if args.version:
        headers["X-Model-Version"] = args.version
    r = httpx.post(f"{url}/predict", json={"features": sample_window(args.seed)},
                   headers=headers, timeout=30)
    print(json.dumps(r.json(), indent=2))
    print(" ".join(f"{k}: {r.headers.get(k)}" for k in ("X-Model-Version", "X-Cache",
                                                         "X-Fallback")))
    return 0 if r.status_code == 200 else 1


def _admin_token(args: argparse.Namespace, state: dict[str, Any]) -> str:
    from router.http.auth import TOKEN_ENV, load_admin_token
    from serve.config import AdminConfig

    config_path = getattr(args, "config", None) or state.get("config")
    admin = load_config(config_path).admin if config_path else AdminConfig()
    token = load_admin_token(admin)
    if token is None:
        raise AbserveError(f"no admin token: set {TOKEN_ENV} (or admin.token_file in the config)")
    return token.decode()


def _admin_call(args: argparse.Namespace, method: str, path: str,
                body: dict[str, Any] | None = None) -> dict[str, Any]:
    import getpass

    import httpx

    state = _read_state()
    url = args.url or state.get("url") or "http://127.0.0.1:8000"
    headers = {"Authorization": f"Bearer {_admin_token(args, state)}",
               "X-Admin-User": getpass.getuser()}
    r = httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)
    data = r.json()
    if r.status_code != 200:
        raise AbserveError(f"{r.status_code}: {data.get('error', data)}")
    return dict(data)


def _print_experiment(data: dict[str, Any]) -> None:
    exp = data["experiment"]
    paused = "  PAUSED (all traffic to the baseline)" if data.get("paused") else ""
    print(f"experiment {exp['name']}  revision {data['revision']}  baseline {exp['baseline']}"
          f"  by {data.get('updated_by')}{paused}")
    eff = data.get("effective_weights", {})
    for s in exp.get("shadows", []):
        print(f"  shadow {s['version']}: {s['share'] * 100:g}% of requests copied")
    for arm in exp["arms"]:
        mark = " (baseline)" if arm["version"] == exp["baseline"] else ""
        effective = eff.get(arm["version"], 0)
        print(f"  {arm['version']:<10}{arm['weight']:>7g}%  effective {effective:g}%{mark}")


def _parse_weights(pairs: list[str]) -> dict[str, float]:
    weights = {}
    for pair in pairs:
        version, sep, value = pair.partition("=")
        if not sep:
            raise AbserveError(f"expected VERSION=PERCENT, got {pair!r}")
        try:
            weights[version] = float(value)
        except ValueError:
            raise AbserveError(f"{pair!r}: {value!r} is not a number") from None
    return weights


def cmd_admin(args: argparse.Namespace) -> int:
    op = args.command
    if op == "experiment":
        _print_experiment(_admin_call(args, "GET", "/admin/experiment"))
    elif op == "traffic":
        _print_experiment(_admin_call(args, "PUT", "/admin/weights",
                                      {"weights": _parse_weights(args.weights)}))
    elif op == "shadow":
        shares = _parse_weights(args.shares)  # VERSION=SHARE, share in 0..1
        shadows = [{"version": v, "share": s} for v, s in shares.items()]
        _print_experiment(_admin_call(args, "PUT", "/admin/shadows", {"shadows": shadows}))
    elif op == "add-candidate":
        _print_experiment(_admin_call(args, "POST", "/admin/candidates",
                                      {"version": args.version, "weight": args.weight}))
    elif op == "remove-arm":
        _print_experiment(_admin_call(args, "DELETE", f"/admin/candidates/{args.version}"))
    elif op in ("promote", "rollback"):
        body = {"version": args.version} if args.version else {}
        _print_experiment(_admin_call(args, "POST", f"/admin/{op}", body))
    elif op in ("pause", "resume"):
        _print_experiment(_admin_call(args, "POST", f"/admin/{op}"))
    elif op == "audit":
        for e in _admin_call(args, "GET", f"/admin/audit?limit={args.limit}")["entries"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
            before = (e.get("before") or {}).get("weights")
            print(f"{when}  r{e['revision']:<4} {e['who']:<12} {e['operation']:<14} "
                  f"{before} -> {e['after']['weights']}")
    return 0


def _print_canary(data: dict[str, Any]) -> None:
    plan, state = data.get("plan"), data.get("state")
    if not plan or not state:
        print("no canary plan")
        return
    steps = ", ".join(f"{s:g}" for s in plan["steps"])
    print(f"canary {plan['candidate']} vs {plan['baseline']}: {state['status']}, "
          f"step {state['step'] + 1}/{len(plan['steps'])} at {state['weight']:g}%  "
          f"(steps {steps}; every {plan['interval_s']:g}s, >= {plan['min_requests']} requests)")
    for d in state.get("history", [])[-10:]:
        when = time.strftime("%H:%M:%S", time.localtime(d["time"]))
        print(f"  {when} {d['action']:<9} {d['verdict']:<7} {d['weight']:g}% -> "
              f"{d['new_weight']:g}%  {'; '.join(d['reasons'])}")


def cmd_canary(args: argparse.Namespace) -> int:
    if args.action == "start":
        if not args.candidate:
            raise AbserveError("canary start needs the candidate version")
        plan: dict[str, Any] = {"candidate": args.candidate, "interval_s": args.interval,
                                "min_requests": args.min_requests,
                                "steps": [float(s) for s in args.steps.split(",")]}
        if args.gates:
            plan["gates"] = json.loads(args.gates)
        _print_canary(_admin_call(args, "POST", "/admin/canary", plan))
    elif args.action == "status":
        _print_canary(_admin_call(args, "GET", "/admin/canary"))
    else:
        _print_canary(_admin_call(args, "POST", f"/admin/canary/{args.action}"))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    report = _admin_call(args, "GET", "/admin/report")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"experiment {report.get('experiment')}  revision {report.get('revision')}  "
          f"baseline {report['baseline']}  alpha {report['alpha']}")
    head = (f"{'arm':<8}{'requests':>9}{'share':>8}{'weight':>8}{'errors':>8}{'fallbk':>8}"
            f"{'p50ms':>8}{'p99ms':>8}{'accuracy':>10}{'95% CI':>16}{'n':>6}{'p-value':>9}"
            f"{'n ok':>6}")
    print(head)

    def pct(x: Any) -> str:
        return "-" if x is None else f"{x * 100:.1f}%"

    def num(x: Any, spec: str = ".1f") -> str:
        return "-" if x is None else format(x, spec)

    for arm, r in report["arms"].items():
        ci = r.get("accuracy_ci95")
        ci_txt = f"[{ci[0] * 100:.1f},{ci[1] * 100:.1f}]" if ci and r.get("accuracy") else "-"
        reached = "-" if r.get("sample_size_reached") is None else str(r["sample_size_reached"])
        print(f"{arm + ('*' if r.get('baseline') else ''):<8}{r['requests']:>9}"
              f"{pct(r.get('traffic_share')):>8}{num(r.get('weight'), 'g'):>8}"
              f"{pct(r.get('error_rate')):>8}{pct(r.get('fallback_rate')):>8}"
              f"{num(r.get('p50_ms')):>8}{num(r.get('p99_ms')):>8}{pct(r.get('accuracy')):>10}"
              f"{ci_txt:>16}{r.get('feedback_n', 0):>6}{num(r.get('p_value'), '.4f'):>9}"
              f"{reached:>6}")
    for version, s in report.get("shadows", {}).items():
        print(f"shadow {version}: compared {s['compared']}, agreement {pct(s['agreement_rate'])},"
              f" mean |dp| {num(s['mean_abs_diff'], '.4f')}, errors {s['errors']}, "
              f"p99 {num(s['p99_ms'])} ms")
    print("* baseline; p-value: two-proportion z-test of accuracy against the baseline")
    return 0


def _scale_history_file() -> Path:
    return STATE_DIR / "scale-history.jsonl"


def cmd_scale_history(args: argparse.Namespace) -> int:
    """Scale steps of every deployment: recorded ones, then live ones while watching.

    Serve 2.60 keeps no history of its autoscaling decisions; `--watch S` samples
    the replica counts (serve/scaling.py) and appends each finished step to
    .abserve/scale-history.jsonl, which later calls print.
    """
    from serve.scaling import ScaleStep, format_step, replica_counts, watch

    state = _read_state()
    address = args.address or state.get("ray_address") or os.environ.get("RAY_ADDRESS")
    app_name = args.app or state.get("app_name")
    if not address or not app_name:
        raise AbserveError("no running application recorded; run `abserve up` or pass "
                           "--address and --app")
    print(f"{'deployment':<24}{'from -> to':<12}{'dir':<6}{'requested':>12}{'finished':>12}"
          f"{'took':>9}  outcome", flush=True)
    with contextlib.suppress(FileNotFoundError), open(_scale_history_file()) as f:
        for line in f:
            entry = json.loads(line)
            if entry.pop("app", None) == app_name:
                entry.pop("duration_s", None)
                entry.pop("direction", None)
                print(format_step(ScaleStep(**entry)))
    _connect(address)

    def record(step: ScaleStep) -> None:
        print(format_step(step), flush=True)
        if step.outcome != "pending":
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            with open(_scale_history_file(), "a") as f:
                f.write(json.dumps({"app": app_name, **step.to_dict()}) + "\n")

    if args.watch:
        watch(app_name, args.watch, args.interval, on_step=record)
    print("now: " + "; ".join(f"{name} {c.running}/{c.target}"
                              for name, c in sorted(replica_counts(app_name).items())))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state = _read_state()
    if not state:
        print("nothing to stop (no .abserve/state.json)")
        return 0
    if state.get("ray_address") and not state.get("ray_pid") and state.get("app_name"):
        # A cluster we did not start: remove only our application from it.
        with contextlib.suppress(Exception):
            _connect(state["ray_address"])
            from ray import serve

            serve.delete(state["app_name"])
            print(f"deleted application {state['app_name']} from {state['ray_address']}")
    if state.get("ray_pid"):
        stop_pid(int(state["ray_pid"]), timeout_s=60)
        print(f"stopped the Ray cluster (pid {state['ray_pid']})")
    if state.get("redis_pid"):
        stop_pid(int(state["redis_pid"]))
        print(f"stopped redis-server (pid {state['redis_pid']})")
    _state_file().unlink(missing_ok=True)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.runner import run_from_args

    return run_from_args(args)


def cmd_soak(args: argparse.Namespace) -> int:
    from benchmarks.soak import run_from_args

    return run_from_args(args)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="abserve", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the demo models v1 (sklearn), v2 (torch), v3 (keras)")
    t.add_argument("--registry", default="registry")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("register", help="register your own model file as a new version")
    r.add_argument("name")
    r.add_argument("version")
    r.add_argument("--framework", required=True, choices=["sklearn", "torch", "tensorflow"])
    r.add_argument("--artifact", required=True, help="joblib file, torch state_dict or .keras")
    r.add_argument("--input-shape", default="50,9", help="per-instance shape, e.g. 50,9")
    r.add_argument("--labels", default="Still,Walking,Running,Biking,Car,Bus,Train,Subway")
    r.add_argument("--torch-class", help="pkg.module:Class of the nn.Module (torch only)")
    r.add_argument("--init-kwargs", help="JSON keyword arguments for the torch class")
    r.add_argument("--output", default="probabilities", choices=["probabilities", "logits"])
    r.add_argument("--description", default="")
    r.add_argument("--registry", default="registry")
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(func=cmd_register)

    v = sub.add_parser("validate", help="check a config file; non-zero exit on error")
    v.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    v.add_argument("--check-registry", action="store_true",
                   help="also fail when a version's artifact is missing or tampered with")
    v.set_defaults(func=cmd_validate)

    u = sub.add_parser("up", help="start (or join) a Ray cluster and deploy the config")
    u.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    u.add_argument("--address", help="existing Ray cluster (or set RAY_ADDRESS)")
    u.add_argument("--redis-port", type=int, help="port of the local redis-server to start")
    u.add_argument("--timeout", type=float, default=300)
    u.set_defaults(func=cmd_up)

    s = sub.add_parser("status", help="per version: replicas, weight, observed share, error and "
                                      "fallback rates; cache hit rate")
    s.add_argument("--url")
    s.add_argument("--no-replicas", action="store_true",
                   help="do not connect to Ray for the replica counts (faster)")
    s.set_defaults(func=cmd_status)

    pr = sub.add_parser("predict", help="send a sample sensor window to /predict")
    pr.add_argument("--url")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--user", help="sticky user key (X-User-Id)")
    pr.add_argument("--version", help="pin a version (X-Model-Version)")
    pr.set_defaults(func=cmd_predict)

    sh = sub.add_parser("scale-history",
                        help="every scale step of every deployment: from N to M replicas, "
                             "when requested, when finished, how long it took")
    sh.add_argument("--watch", type=float, default=0.0, metavar="S",
                    help="sample the replica counts for S seconds, printing each step")
    sh.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    sh.add_argument("--app", help="Serve application (default: the one `up` deployed)")
    sh.add_argument("--address", help="Ray cluster (default: the one `up` used)")
    sh.set_defaults(func=cmd_scale_history)

    d = sub.add_parser("down", help="stop what `abserve up` started, by PID")
    d.set_defaults(func=cmd_down)

    dv = sub.add_parser("deploy-version",
                        help="deploy a registered version into the running app, at weight 0")
    dv.add_argument("version")
    dv.add_argument("--config", "-c")
    dv.add_argument("--replicas", type=int, default=1)
    dv.add_argument("--num-cpus", type=float, default=0.25)
    dv.add_argument("--num-gpus", type=float, default=0.0)
    dv.add_argument("--max-batch-size", type=int, default=64)
    dv.add_argument("--timeout", type=float, default=300)
    dv.set_defaults(func=cmd_deploy_version)

    admin_help = {
        "experiment": "show the live experiment (weights, baseline, revision)",
        "traffic": "set weights: abserve traffic v1=80 v2=20",
        "shadow": "set shadow versions: abserve shadow v3=0.2 (no arguments: shadows off)",
        "add-candidate": "add a deployed version as an arm",
        "remove-arm": "remove a candidate; its weight returns to the baseline",
        "promote": "the candidate becomes the baseline",
        "rollback": "a candidate's weight to 0 at once (every candidate if none named)",
        "pause": "send all traffic to the baseline, keeping the weights",
        "resume": "resume the weights after a pause",
        "audit": "the audit log: time, who, operation, before, after",
    }
    c = sub.add_parser("canary", help="automated canary analysis: start | status | pause | "
                                      "resume | abort (admin API)")
    c.add_argument("action", choices=["start", "status", "pause", "resume", "abort"])
    c.add_argument("candidate", nargs="?")
    c.add_argument("--steps", default="5,10,25,50,100")
    c.add_argument("--interval", type=float, default=300.0, help="seconds per step, at least")
    c.add_argument("--min-requests", type=int, default=500, help="candidate requests per step")
    c.add_argument("--gates", help='JSON, e.g. \'{"max_fallback_rate": 0.02}\'')
    c.add_argument("--url")
    c.add_argument("--config")
    c.set_defaults(func=cmd_canary)

    rp = sub.add_parser("report", help="the experiment report: per-arm traffic, errors, latency, "
                                       "accuracy with 95% CI, significance (admin API)")
    rp.add_argument("--json", action="store_true")
    rp.add_argument("--url")
    rp.add_argument("--config")
    rp.set_defaults(func=cmd_report)

    for name, text in admin_help.items():
        a = sub.add_parser(name, help=f"{text} (admin API; needs ABSERVE_ADMIN_TOKEN)")
        a.add_argument("--url")
        a.add_argument("--config", help="config whose admin.token_file to use")
        if name == "traffic":
            a.add_argument("weights", nargs="+", metavar="VERSION=PERCENT")
        elif name == "shadow":
            a.add_argument("shares", nargs="*", metavar="VERSION=SHARE")
        elif name in ("add-candidate", "remove-arm", "promote"):
            a.add_argument("version")
        elif name == "rollback":
            a.add_argument("version", nargs="?")
        if name == "add-candidate":
            a.add_argument("--weight", type=float, default=0.0)
        if name == "audit":
            a.add_argument("--limit", type=int, default=20)
        a.set_defaults(func=cmd_admin)

    b = sub.add_parser("bench", help="naive server vs plain Ray Serve vs abserve: table, JSON, PNG")
    b.add_argument("--duration", type=float, default=20, help="seconds per variant")
    b.add_argument("--connections", type=int, default=32)
    b.add_argument("--short", action="store_true", help="3 s per variant, 1 s warm-up")
    b.add_argument("--ingress", choices=["throughput", "default"], default="throughput")
    b.add_argument("--registry", help="existing registry with activity v1, v2 (default: train)")
    b.add_argument("--out", default="bench-results")
    b.add_argument("--variants", default="a,b,c,d,e")
    b.set_defaults(func=cmd_bench)

    sk = sub.add_parser("soak", help="steady load with a random fault every minute: success "
                                     "rate, router RSS and fds, Redis keys (own local cluster)")
    sk.add_argument("--duration", type=float, default=1800, help="seconds of load")
    sk.add_argument("--rate", type=float, default=20, help="requests per second (fixed)")
    sk.add_argument("--fault-interval", type=float, default=60, help="seconds between faults")
    sk.add_argument("--ttl", type=int, default=60, help="cache TTL, so the key count is bounded")
    sk.add_argument("--seed", type=int, default=0)
    sk.add_argument("--registry", help="registry with activity v1, v2 (default: ./registry)")
    sk.add_argument("--ingress", choices=["throughput", "default"], default="throughput")
    sk.add_argument("--out", default="soak-results")
    sk.set_defaults(func=cmd_soak)

    from benchmarks import precision as bench_precision

    bp = sub.add_parser("bench-precision",
                        help="fp32 vs fp16/bf16 rows/s and drift per framework on this device")
    bench_precision.add_arguments(bp)
    bp.set_defaults(func=lambda a: bench_precision.run_from_args(a))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AbserveError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
