"""Commands that look at the running application: status, predict, scale-history.

``status`` and ``predict`` need no admin token; ``status`` asks Ray only for
the replica counts (``--no-replicas`` skips even that). ``--model NAME``
addresses that model's application, at ``/models/NAME``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from serve.cli.admin import add_model_option
from serve.cli.deploy import http_get
from serve.cli.state import STATE_DIR, app_for_model, model_url, read_state
from serve.errors import AbserveError
from serve.local.ray_head import connect, enable_token_auth

__all__ = ["add_parsers", "cmd_predict", "cmd_scale_history", "cmd_status", "sample_body"]


def _app_name(state: dict[str, Any], model: str | None) -> str | None:
    """The Serve application of ``model`` (None: the default one), as `up` recorded it."""
    if model is None:
        return state.get("app_name")
    recorded = app_for_model(state, model)
    return None if recorded is None else recorded.get("app_name")


def _replica_counts(state: dict[str, Any], app_name: str | None) -> dict[str, Any]:
    """Running/target replicas per deployment from Serve, or {} when Ray is out of reach."""
    if not state.get("ray_address") or not app_name:
        return {}
    try:
        connect(state["ray_address"], retry_s=0)
        from serve.cli.scaling import replica_counts

        return replica_counts(app_name)
    except Exception as exc:  # noqa: BLE001 - the table still shows what the router knows
        print(f"warning: no replica counts from {state['ray_address']}: {exc!r}",
              file=sys.stderr)
        return {}


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def cmd_status(args: argparse.Namespace) -> int:
    """The experiment at a glance: per version replicas, weight, observed share, error and
    fallback rates (this router replica's counters), and the cache hit rate. No admin token."""
    enable_token_auth()  # before serve.app imports ray
    from serve.app import ROUTER_DEPLOYMENT, model_deployment_name

    state = read_state()
    base = args.url or state.get("url")
    if base is None:
        print("no application recorded in .abserve/state.json; run `abserve up`", file=sys.stderr)
        return 1
    url = model_url(base, args.model)
    try:
        _, models = http_get(f"{url}/models")
        ready_status, ready = http_get(f"{url}/ready")
        _, stats = http_get(f"{url}/stats")
    except Exception as exc:  # noqa: BLE001
        print(f"{url} does not answer: {exc}", file=sys.stderr)
        return 1
    replicas = {} if args.no_replicas else _replica_counts(state, _app_name(state, args.model))

    def replicas_of(deployment: str) -> str:
        c = replicas.get(deployment)
        return "-" if c is None else f"{c.running}/{c.target}"

    print(f"{url}  model {models['model']}  experiment {models['experiment']}  "
          f"baseline {models.get('baseline')}  ready={ready.get('ready')}")
    total = sum(s.get("requests", 0) for s in stats["arms"].values())
    print(f"{'version':<10}{'framework':<12}{'replicas':>9}{'weight':>8}{'share':>8}"
          f"{'requests':>10}{'errors':>8}{'fallbk':>8}{'ready':>7}{'breaker':>11}"
          f"{'accuracy':>10}  drift")
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
              f"{(f'{acc:.3f}' if acc is not None else '-'):>10}"
              f"  {stats.get('drift', {}).get(v['version'], '-')}")
    c = stats["cache"]
    lookups = c["hits"] + c["misses"]
    print(f"router replicas {replicas_of(ROUTER_DEPLOYMENT)}; counters of router replica "
          f"{stats['replica']}  (* baseline; errors: failed calls to the version; fallbk: its "
          "requests the baseline answered; drift: the controller's window, "
          "`abserve report` has the channels)")
    print(f"cache ({c['kind']}): hit rate {_pct(c['hits'], lookups)}  hits {c['hits']} "
          f"misses {c['misses']} bypasses {c['bypasses']}")
    return 0 if ready_status == 200 else 1


def sample_body(models: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """A /predict body for the model GET /models describes: a demo record or window, or
    for another model an input its schema (or input shape) accepts."""
    schema = models.get("input_schema")
    if schema:
        if models.get("model") == "sales":
            from models.sales.data import records

            return {"record": records(1, seed)[0]}
        record: dict[str, Any] = {}
        for f in schema:
            if f.get("default") is not None or not f.get("required", True):
                continue  # an optional field: its default
            values = {"float": 1.0, "int": 1, "bool": False}
            record[f["name"]] = (f["categories"][0] if f["dtype"] == "category"
                                 else values.get(f["dtype"], 1.0))
        return {"record": record}
    shape = [int(n) for n in models.get("input_shape") or []]
    if models.get("model", "activity") == "activity" and shape in ([], [50, 9]):
        from models.activity.data import sample_window

        return {"features": sample_window(seed)}
    import numpy as np

    return {"features": np.random.default_rng(seed).normal(size=shape).round(4).tolist()}


def cmd_predict(args: argparse.Namespace) -> int:
    import httpx

    state = read_state()
    url = model_url(args.url or state.get("url") or "http://127.0.0.1:8000", args.model)
    headers = {}
    if args.user:
        headers["X-User-Id"] = args.user
    if args.version:
        headers["X-Model-Version"] = args.version
    described = httpx.get(f"{url}/models", timeout=30)
    if described.status_code != 200:
        raise AbserveError(f"{url}/models answered {described.status_code}: "
                           f"{described.text[:200]}")
    r = httpx.post(f"{url}/predict", json=sample_body(described.json(), args.seed),
                   headers=headers, timeout=30)
    print(json.dumps(r.json(), indent=2))
    print(" ".join(f"{k}: {r.headers.get(k)}" for k in ("X-Model-Version", "X-Cache",
                                                         "X-Fallback")))
    return 0 if r.status_code == 200 else 1


def _scale_history_file() -> Path:
    return STATE_DIR / "scale-history.jsonl"


def cmd_scale_history(args: argparse.Namespace) -> int:
    """Scale steps of every deployment: recorded ones, then live ones while watching.

    Serve 2.60 keeps no history of its autoscaling decisions; `--watch S` samples
    the replica counts (serve/cli/scaling.py) and appends each finished step to
    .abserve/scale-history.jsonl, which later calls print.
    """
    from serve.cli.scaling import ScaleStep, format_step, replica_counts, watch

    state = read_state()
    address = args.address or state.get("ray_address") or os.environ.get("RAY_ADDRESS")
    app_name = args.app or _app_name(state, args.model)
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
    connect(address)

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


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("status", help="per version: replicas, weight, observed share, error and "
                                      "fallback rates; cache hit rate")
    s.add_argument("--url")
    s.add_argument("--no-replicas", action="store_true",
                   help="do not connect to Ray for the replica counts (faster)")
    add_model_option(s)
    s.set_defaults(func=cmd_status)

    pr = sub.add_parser("predict", help="send a sample input (a sensor window; a record for "
                                        "a tabular model) to /predict")
    pr.add_argument("--url")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--user", help="sticky user key (X-User-Id)")
    pr.add_argument("--version", help="pin a version (X-Model-Version)")
    add_model_option(pr)
    pr.set_defaults(func=cmd_predict)

    sh = sub.add_parser("scale-history",
                        help="every scale step of every deployment: from N to M replicas, "
                             "when requested, when finished, how long it took")
    sh.add_argument("--watch", type=float, default=0.0, metavar="S",
                    help="sample the replica counts for S seconds, printing each step")
    sh.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    sh.add_argument("--app", help="Serve application (default: the one `up` deployed)")
    sh.add_argument("--model", metavar="NAME",
                    help="the application of this model, as `up` recorded it")
    sh.add_argument("--address", help="Ray cluster (default: the one `up` used)")
    sh.set_defaults(func=cmd_scale_history)
