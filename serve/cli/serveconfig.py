"""``abserve serve-config``: Ray Serve's config file for abserve configs, for Ray's own tools.

``serve deploy FILE`` onto a cluster started with plain ``ray start``, ``serve run FILE``,
or KubeRay's ``serveConfigV2``: each config becomes one ``serve.app:app`` application at
its ``http.route_prefix`` (serve/serve_config.py). The configs are checked here as ``up``
checks them, but nothing is started and no cluster is needed.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from serve.cli.state import DEFAULT_CONFIG
from serve.config import load_config
from serve.errors import AbserveError
from serve.serve_config import cluster_path, render_serve_config, serve_config

__all__ = ["add_parsers", "cmd_serve_config", "command_line", "config_text"]

# The options that shape the file, in the order the header's command lists them.
_OVERRIDES = (("cluster_dir", "--cluster-dir"), ("host", "--host"),
              ("redis_url", "--redis-url"), ("registry", "--registry"),
              ("state_dir", "--state-dir"), ("working_dir", "--working-dir"))


def _paths(args: argparse.Namespace) -> list[str]:
    paths = list(args.config or [DEFAULT_CONFIG])
    dupes = sorted({p for p in paths if paths.count(p) > 1})
    if dupes:
        raise AbserveError(f"config(s) {dupes} given twice; give each -c once")
    return paths


def command_line(args: argparse.Namespace) -> str:
    """The command that writes this file, for its header: the same options, in one order."""
    words = ["abserve", "serve-config"]
    for path in _paths(args):
        words += ["-c", path]
    for attr, flag in _OVERRIDES:
        value = getattr(args, attr)
        if value is not None:
            words += [flag, value]
    if args.output:
        words += ["-o", args.output]
    return shlex.join(words)


def config_text(args: argparse.Namespace) -> str:
    """The file's text: each config loaded and checked here, its path written as the
    cluster will read it."""
    paths = _paths(args)
    configs = [(cluster_path(p, args.cluster_dir), load_config(p)) for p in paths]
    doc = serve_config(configs, redis_url=args.redis_url, registry=args.registry,
                       state_dir=args.state_dir, host=args.host,
                       working_dir=args.working_dir)
    return render_serve_config(doc, command_line(args))


def cmd_serve_config(args: argparse.Namespace) -> int:
    text = config_text(args)
    if not args.output:
        print(text, end="")
        return 0
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}; deploy it with: serve deploy {shlex.quote(str(out))}")
    return 0


def add_parsers(sub: Any) -> None:
    s = sub.add_parser(
        "serve-config",
        help="write Ray Serve's config file (serve deploy / serve run / KubeRay "
             "serveConfigV2): each config one serve.app:app application at its route_prefix")
    s.add_argument("--config", "-c", action="append", metavar="FILE",
                   help=f"a config (default {DEFAULT_CONFIG}); repeat it for several models "
                        "side by side: the first sets the HTTP proxy")
    s.add_argument("--output", "-o", metavar="FILE", help="write here (default: stdout)")
    s.add_argument("--cluster-dir", metavar="DIR",
                   help="where the relative config paths are on the cluster's nodes (the "
                        "image's /app); default: the paths as given")
    s.add_argument("--host", help="the HTTP proxy's bind address instead of the first "
                                  "config's http.host (0.0.0.0 in a pod)")
    s.add_argument("--redis-url", metavar="URL",
                   help="the Redis every router reaches, for each config whose "
                        "cache.redis_url is empty (Ray's tools start no redis-server)")
    s.add_argument("--registry", metavar="DIR", help="the registry path on the cluster")
    s.add_argument("--state-dir", metavar="DIR",
                   help="state.dir on the cluster (the head node's disk)")
    s.add_argument("--working-dir", metavar="URI",
                   help="a runtime_env working_dir the cluster fetches (a .zip URI); "
                        "relative paths are then resolved in it")
    s.set_defaults(func=cmd_serve_config)
