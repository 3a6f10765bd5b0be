"""Ray Serve's own config file for abserve configs: what ``serve deploy``, ``serve run`` and
KubeRay's RayService (``serveConfigV2``) read.

One application per abserve config, each ``serve.app:app`` with the config's path as
``args.config``: the applications ``abserve up -c a.yaml -c b.yaml`` deploys, for clusters
that Ray's own tools manage. The format is ``serve build``'s (Ray's ``ServeDeploySchema``):
the HTTP proxy (``proxy_location``, ``http_options``, and ``grpc_options`` when
``http.grpc_port`` is set) is the cluster's one, so it comes from the first config, as with
``up``. Nothing here reads a file or imports Ray: the paths are
written as given, because the node that builds the application reads them (``serve run``'s
driver, or for ``serve deploy`` the cluster, relative to the runtime_env's working_dir), not
the machine that writes this file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import yaml

from router.controlplane.experiment import Declaration
from serve.config import AbserveConfig, grpc_options, side_by_side_problems
from serve.errors import ConfigError

__all__ = ["IMPORT_PATH", "cluster_path", "render_serve_config", "serve_config"]

# serve/app.py's builder; its arguments are the fields of serve.app.AppArgs.
IMPORT_PATH = "serve.app:app"
CONTROLLER_DEPLOYMENT = "controller"  # serve/app.py's name for the experiment controller


def cluster_path(path: str, cluster_dir: str | None) -> str:
    """``path`` as the cluster sees it: under ``cluster_dir`` (e.g. the image's /app) when
    one is given and ``path`` is relative; else unchanged."""
    if cluster_dir is None:
        return path
    return str(PurePosixPath(cluster_dir) / path)


def _needs_redis(config: AbserveConfig) -> bool:
    return config.cache.enabled and not config.cache.redis_url


def serve_config(
    configs: Sequence[tuple[str, AbserveConfig]],
    *,
    redis_url: str | None = None,
    registry: str | None = None,
    state_dir: str | None = None,
    host: str | None = None,
    working_dir: str | None = None,
) -> dict[str, Any]:
    """Ray Serve's config-file dict for ``configs`` (each with the path the cluster reads it
    from).

    ``redis_url`` goes to every config whose cache names no Redis (as ``abserve up``'s
    redis-server does); ``registry`` and ``state_dir`` override every config's; ``host``
    replaces the first config's ``http.host`` for the proxy (a pod's 0.0.0.0); a
    ``working_dir`` (a URI the cluster can fetch) becomes each application's runtime_env,
    the only reason to give one. Configs that cannot run side by side are refused, naming
    why, as ``abserve up`` refuses them.
    """
    if not configs:
        raise ConfigError("serve config: give at least one abserve config")
    problems = side_by_side_problems(list(configs))
    if problems:
        raise ConfigError("; ".join(problems))
    first = configs[0][1]
    applications = []
    for path, config in configs:
        args: dict[str, str] = {"config": path}
        if redis_url is not None and _needs_redis(config):
            args["redis_url"] = redis_url
        if registry is not None:
            args["registry"] = registry
        if state_dir is not None:
            args["state_dir"] = state_dir
        app: dict[str, Any] = {
            "name": config.app_name,
            "route_prefix": config.http.route_prefix,
            "import_path": IMPORT_PATH,
        }
        if working_dir is not None:
            app["runtime_env"] = {"working_dir": working_dir}
        app["args"] = args
        # What the config declares of the live experiment, as the controller's user_config:
        # a file that changes only the experiment or the canary plan keeps args, so `serve
        # deploy` of it is Serve's lightweight update, reaching every router through the
        # controller without restarting any replica (docs/operations.md).
        app["deployments"] = [{"name": CONTROLLER_DEPLOYMENT,
                               "user_config": Declaration.of(config).to_user_config()}]
        applications.append(app)
    doc: dict[str, Any] = {
        "proxy_location": first.http.proxy_location,
        "http_options": {"host": host or first.http.host, "port": first.http.port},
    }
    grpc = grpc_options(first.http.grpc_port)
    if grpc is not None:
        doc["grpc_options"] = grpc
    doc["applications"] = applications
    return doc


def render_serve_config(doc: dict[str, Any], command: str | None = None) -> str:
    """The YAML text of ``doc``, in its own key order; with ``command``, a header that says
    how it was made, so an edited copy is regenerated rather than patched."""
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)
    if command is None:
        return body
    header = (
        "# Ray Serve config file (`serve deploy FILE`, `serve run FILE`; Ray 2.60) for abserve,\n"
        f"# generated by:\n#   {command}\n"
        "# Regenerate it instead of editing it. Paths are read by the node that builds each\n"
        "# application (docs/operations.md, \"Deploy with Ray's tools\").\n"
    )
    return header + body
