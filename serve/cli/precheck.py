"""What ``abserve up`` checks before it starts anything, so a newcomer reads one clear
list of what to fix instead of a failed deployment minutes later.

Each check returns problems (a sentence that says what to do), never raises:
``check_before_deploy`` shows them all at once. The config itself is already
valid here (``load_config`` refused it otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from serve.config import AbserveConfig
from serve.errors import AbserveError, ConfigError
from serve.local.ports import port_free

__all__ = [
    "admin_token_problems", "check_before_deploy", "port_problems", "registry_problems",
]


def registry_problems(config: AbserveConfig) -> list[str]:
    """Every configured version must be registered, its artifact intact (sha256)."""
    from models.registry import Registry

    registry = Registry(config.registry)
    problems = []
    for m in config.models:
        try:
            registry.verified_artifact(registry.manifest(config.model, m.version))
        except AbserveError as exc:
            problems.append(f"models[{m.version}]: {exc.message}")
    return problems


def admin_token_problems(config: AbserveConfig,
                         environ: Mapping[str, str] | None = None) -> list[str]:
    """The router refuses a short or unreadable admin token at start: say so first."""
    from router.http.auth import TOKEN_ENV, load_admin_token

    try:
        load_admin_token(config.admin, None if environ is None else dict(environ))
    except ConfigError as exc:
        source = "admin.token_file" if config.admin.token_file else TOKEN_ENV
        return [f"{source}: {exc.message}"]
    return []


def port_problems(config: AbserveConfig, *, starting_cluster: bool,
                  redis_port: int | None = None) -> list[str]:
    """The ports a fresh local cluster (and an explicit ``--redis-port``) will bind."""
    wanted: dict[str, int] = {}
    if starting_cluster:
        wanted = {"http.port": config.http.port, "cluster.gcs_port": config.cluster.gcs_port,
                  "cluster.dashboard_port": config.cluster.dashboard_port}
        if config.http.grpc_port is not None:
            wanted["http.grpc_port"] = config.http.grpc_port
    if redis_port is not None:
        wanted["--redis-port"] = redis_port
    problems = []
    by_port: dict[int, list[str]] = {}
    for name, port in wanted.items():
        by_port.setdefault(port, []).append(name)
    for port, names in by_port.items():
        if len(names) > 1:
            problems.append(f"{' and '.join(names)} share port {port}: give each its own")
    hints = {
        "http.port": "is another `abserve up` running? Run `abserve down`, or set another "
                     "http.port in the config",
        "cluster.gcs_port": "is a Ray cluster already running? Run `abserve down`, or deploy "
                            "onto it with `abserve up --address 127.0.0.1:PORT`",
        "cluster.dashboard_port": "set another cluster.dashboard_port in the config",
        "http.grpc_port": "set another http.grpc_port in the config, or null for no gRPC",
        "--redis-port": "pick another, or leave --redis-port out to get a free one",
    }
    for name, port in wanted.items():
        if not port_free(port):
            problems.append(f"port {port} ({name}) is taken: {hints[name]}")
    return problems


def check_before_deploy(config: AbserveConfig, *, starting_cluster: bool,
                        redis_port: int | None = None,
                        others: Sequence[tuple[str, AbserveConfig]] = (),
                        name: str = "") -> None:
    """Raise one AbserveError listing every problem found; nothing has been started yet.

    ``others``: the further configs of ``up -c a.yaml -c b.yaml`` (file, config), checked
    alike but for the ports, which the first config binds; with them, each problem names
    its file (``name`` is the first config's)."""
    problems = [
        *registry_problems(config),
        *admin_token_problems(config),
        *port_problems(config, starting_cluster=starting_cluster, redis_port=redis_port),
    ]
    if others:
        problems = [f"{name}: {p}" for p in problems]
        for other_name, other in others:
            problems += [f"{other_name}: {p}"
                         for p in (*registry_problems(other), *admin_token_problems(other))]
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise AbserveError(f"not deploying, nothing was started; fix first:\n{listed}")
