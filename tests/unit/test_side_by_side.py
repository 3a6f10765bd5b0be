"""Several model configs side by side, without Ray: ``http.route_prefix`` and its
validation, what ``side_by_side_problems`` refuses, ``abserve up -c a.yaml -c b.yaml``'s
arguments and state, and ``--model NAME`` on the admin and observe commands (the URL
and the admin token they use)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve.cli import build_parser
from serve.cli import state as cli_state
from serve.cli.admin import admin_call
from serve.cli.deploy import apps_to_delete, config_paths, load_configs
from serve.cli.observe import sample_body
from serve.cli.precheck import check_before_deploy
from serve.cli.state import app_entry, app_for_model, merge_apps, model_url
from serve.config import (
    AbserveConfig,
    load_config,
    model_route_prefix,
    parse_config,
    side_by_side_problems,
)
from serve.errors import AbserveError, ConfigError

ROOT = Path(__file__).resolve().parents[2]
TOKEN_A = "token-of-activity-0123456789"
TOKEN_S = "token-of-sales-0123456789abc"


def _data(model: str = "activity", **extra: Any) -> dict[str, Any]:
    return {
        "app_name": model, "model": model,
        "models": [{"version": "v1"}],
        "experiment": {"baseline": "v1", "arms": [{"version": "v1", "weight": 100}]},
        **extra,
    }


# ------------------------------------------------------------------ http.route_prefix


def test_route_prefix_defaults_to_the_root() -> None:
    assert parse_config(_data()).http.route_prefix == "/"
    assert model_route_prefix("sales") == "/models/sales"


@pytest.mark.parametrize("prefix", ["/", "/models/activity"])
def test_allowed_route_prefixes(prefix: str) -> None:
    assert parse_config(_data(http={"route_prefix": prefix})).http.route_prefix == prefix


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("/models/activity/", "http.route_prefix: '/models/activity/' is not allowed: use '/' "
                              "(the default model) or '/models/<model>'"),
        ("/sales", "http.route_prefix: '/sales' is not allowed"),
        ("models/activity", "http.route_prefix: 'models/activity' is not allowed"),
        ("/models/", "http.route_prefix: '/models/' is not allowed"),
        ("/models/a/b", "is not allowed"),
        ("/models/sales", "http.route_prefix: '/models/sales' names another model than this "
                          "config's 'activity'; use '/models/activity' (or '/' for the "
                          "default model)"),
    ],
)
def test_other_route_prefixes_are_refused_saying_what_is_allowed(
    prefix: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_data(http={"route_prefix": prefix}))
    assert message in info.value.message
    assert not info.value.message.startswith("(top level)")


# ------------------------------------------------------------------ side by side


def test_the_repositorys_two_configs_run_side_by_side() -> None:
    a, b = load_config(ROOT / "abserve.yaml"), load_config(ROOT / "sales.yaml")
    assert side_by_side_problems([("abserve.yaml", a), ("sales.yaml", b)]) == []
    assert (a.http.route_prefix, b.http.route_prefix) == ("/", "/models/sales")
    assert (b.model, [m.version for m in b.models]) == ("sales", ["v1", "v2"])
    assert {arm.version: arm.weight for arm in b.experiment.arms} == {"v1": 50, "v2": 50}
    assert a.state.dir == b.state.dir  # one directory, files per application
    assert a.app_name != b.app_name


def _pair(**second: Any) -> list[tuple[str, AbserveConfig]]:
    first = parse_config(_data())
    data = _data("sales", http={"route_prefix": "/models/sales"})
    for key, value in second.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return [("a.yaml", first), ("b.yaml", parse_config(data))]


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        ({}, []),
        ({"app_name": "activity"}, ["b.yaml: app_name 'activity' is also a.yaml's"]),
        ({"http": {"route_prefix": "/"}},
         ["b.yaml: http.route_prefix '/' is also a.yaml's"]),
        ({"http": {"port": 8001}},
         ["b.yaml: http.port 8001 differs from a.yaml's 8000; the applications share the "
          "cluster's one HTTP proxy"]),
        ({"http": {"ingress": "default"}}, ["b.yaml: http.ingress 'default' differs"]),
        ({"http": {"grpc_port": 9000}}, ["b.yaml: http.grpc_port 9000 differs from a.yaml's "
                                         "None"]),
        ({"cluster": {"num_cpus": 4}}, ["b.yaml: its cluster section differs from a.yaml's"]),
    ],
)
def test_side_by_side_problems(second: dict[str, Any], expected: list[str]) -> None:
    problems = side_by_side_problems(_pair(**second))
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problem


def test_the_same_model_twice_is_refused() -> None:
    first = parse_config(_data())
    again = parse_config(_data(app_name="other", http={"route_prefix": "/models/activity"}))
    (problem,) = side_by_side_problems([("a.yaml", first), ("c.yaml", again)])
    assert problem.startswith("c.yaml: model 'activity' is also a.yaml's")


# ------------------------------------------------------------------ abserve up


def _write(path: Path, data: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_up_takes_repeated_configs_in_order() -> None:
    parser = build_parser()
    args = parser.parse_args(["up", "-c", "abserve.yaml", "--config", "sales.yaml"])
    assert config_paths(args) == ["abserve.yaml", "sales.yaml"]
    assert config_paths(parser.parse_args(["up"])) == ["abserve.yaml"]
    with pytest.raises(AbserveError, match="given twice"):
        config_paths(parser.parse_args(["up", "-c", "a.yaml", "-c", "a.yaml"]))


def test_load_configs_refuses_configs_that_cannot_share_a_cluster(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", _data())
    b = _write(tmp_path / "b.yaml", _data("sales", http={"route_prefix": "/models/sales",
                                                          "port": 9000}))
    with pytest.raises(AbserveError) as info:
        load_configs([a, b])
    assert "nothing was started" in info.value.message
    assert f"{b}: http.port 9000 differs" in info.value.message
    good = _write(tmp_path / "c.yaml", _data("sales", http={"route_prefix": "/models/sales"}))
    assert [c.app_name for c in load_configs([a, good])] == ["activity", "sales"]


def test_precheck_names_the_file_of_each_problem(tmp_path: Path) -> None:
    first = parse_config(_data(registry=str(tmp_path / "reg")))
    second = parse_config(_data("sales", registry=str(tmp_path / "reg"),
                                http={"route_prefix": "/models/sales"}))
    with pytest.raises(AbserveError) as info:
        check_before_deploy(first, starting_cluster=False, others=[("b.yaml", second)],
                            name="a.yaml")
    lines = info.value.message.splitlines()[1:]
    assert [line.split(":")[0].strip("- ").strip() for line in lines] == ["a.yaml", "b.yaml"]
    assert "model sales version v1 is not registered" in lines[1]


def test_state_records_every_application_and_down_deletes_them_all() -> None:
    a = parse_config(_data())
    b = parse_config(_data("sales", http={"route_prefix": "/models/sales"}))
    url = "http://127.0.0.1:8000"
    apps = [app_entry(a, "/x/abserve.yaml", url), app_entry(b, "/x/sales.yaml", url)]
    assert apps[1] == {"app_name": "sales", "model": "sales", "route_prefix": "/models/sales",
                       "config": "/x/sales.yaml", "url": "http://127.0.0.1:8000/models/sales"}
    assert apps[0]["url"] == url
    # A later `up` of one config keeps the other one recorded (it still runs).
    later = merge_apps(apps, [app_entry(b, "/y/sales.yaml", url)])
    assert [(x["app_name"], x["config"]) for x in later] == [
        ("sales", "/y/sales.yaml"), ("activity", "/x/abserve.yaml")]
    state = {"app_name": "activity", "apps": later}
    assert app_for_model(state, None)["app_name"] == "activity"  # type: ignore[index]
    assert app_for_model(state, "sales")["config"] == "/y/sales.yaml"  # type: ignore[index]
    assert app_for_model(state, "nope") is None
    assert apps_to_delete(state) == ["sales", "activity"]
    assert apps_to_delete({"app_name": "abserve"}) == ["abserve"]  # a state from before
    assert apps_to_delete({}) == []


# ------------------------------------------------------------------ --model NAME


ADMIN_AND_OBSERVE = [
    ["experiment"], ["traffic", "v1=100"], ["shadow"], ["add-candidate", "v2"],
    ["remove-arm", "v2"], ["promote", "v2"], ["rollback"], ["pause"], ["resume"], ["audit"],
    ["canary", "status"], ["report"], ["status"], ["predict"], ["scale-history"],
    ["deploy-version", "v3"],
]


@pytest.mark.parametrize("argv", ADMIN_AND_OBSERVE, ids=lambda a: a[0])
def test_every_admin_and_observe_command_takes_model(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv, "--model", "sales"])
    assert args.model == "sales"
    assert build_parser().parse_args(argv).model is None  # the default model needs none


def test_model_url() -> None:
    assert model_url("http://h:8000/", None) == "http://h:8000"
    assert model_url("http://h:8000", "sales") == "http://h:8000/models/sales"


class _Reply:
    status_code = 200

    def json(self) -> dict[str, Any]:
        return {"ok": True}


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A state.json of two applications, each config with its own admin token file."""
    paths = {}
    for model, token in (("activity", TOKEN_A), ("sales", TOKEN_S)):
        (tmp_path / f"{model}.token").write_text(token)
        data = _data(model, admin={"token_file": f"{model}.token"})
        if model == "sales":
            data["http"] = {"route_prefix": "/models/sales"}
        paths[model] = _write(tmp_path / f"{model}.yaml", data)
    monkeypatch.setattr(cli_state, "STATE_DIR", tmp_path / ".abserve")
    url = "http://127.0.0.1:8123"
    apps = [app_entry(load_config(paths[m]), paths[m], url) for m in ("activity", "sales")]
    cli_state.write_state({"url": url, "app_name": "activity", "config": paths["activity"],
                           "apps": apps})
    return paths


def test_admin_calls_address_the_model_with_its_own_token(
    recorded: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    calls: list[tuple[str, str, str]] = []

    def request(method: str, url: str, **kwargs: Any) -> _Reply:
        calls.append((method, url, kwargs["headers"]["Authorization"]))
        return _Reply()

    monkeypatch.setattr(httpx, "request", request)
    parser = build_parser()
    admin_call(parser.parse_args(["experiment", "--model", "sales"]), "GET", "/admin/experiment")
    admin_call(parser.parse_args(["experiment"]), "GET", "/admin/experiment")
    admin_call(parser.parse_args(["report", "--model", "activity"]), "GET", "/admin/report")
    assert calls == [
        ("GET", "http://127.0.0.1:8123/models/sales/admin/experiment", f"Bearer {TOKEN_S}"),
        ("GET", "http://127.0.0.1:8123/admin/experiment", f"Bearer {TOKEN_A}"),
        ("GET", "http://127.0.0.1:8123/models/activity/admin/report", f"Bearer {TOKEN_A}"),
    ]
    other = parser.parse_args(["pause", "--model", "sales", "--url", "http://elsewhere:1"])
    admin_call(other, "POST", "/admin/pause")
    assert calls[-1][:2] == ("POST", "http://elsewhere:1/models/sales/admin/pause")
    state = json.loads((cli_state.STATE_DIR / "state.json").read_text())
    assert [a["model"] for a in state["apps"]] == ["activity", "sales"]


def test_predict_sends_an_input_the_model_takes() -> None:
    from models.sales.data import INPUT_SCHEMA, records

    sales = sample_body({"model": "sales", "input_schema": INPUT_SCHEMA}, seed=3)
    assert sales == {"record": records(1, 3)[0]}
    other = sample_body({"model": "shop", "input_schema": [
        {"name": "store", "dtype": "category", "required": True, "categories": ["a", "b"]},
        {"name": "n", "dtype": "int", "required": True},
        {"name": "x", "dtype": "float", "required": False, "default": 2.0},
        {"name": "flag", "dtype": "bool", "required": True}]})
    assert other == {"record": {"store": "a", "n": 1, "flag": False}}
    window = sample_body({"model": "activity", "input_shape": [50, 9]})["features"]
    assert (len(window), len(window[0])) == (50, 9)
    assert len(sample_body({"model": "m", "input_shape": [4]})["features"]) == 4


def test_parser_keeps_deploy_version_and_down() -> None:
    args = build_parser().parse_args(["deploy-version", "v3", "--model", "sales"])
    assert (args.version, args.model, args.config) == ("v3", "sales", None)
    assert isinstance(build_parser().parse_args(["down"]), argparse.Namespace)


# ------------------------------------------------------------------ up and down, Ray faked


def test_up_deploys_every_config_on_one_cluster_and_down_deletes_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cmd_up`` / ``cmd_down`` with every call that reaches Ray or starts a process
    replaced: what is started once, what each config gets, what state.json records."""
    from types import SimpleNamespace

    from serve.cli import deploy

    state_dir = tmp_path / ".abserve"
    monkeypatch.setattr(cli_state, "STATE_DIR", state_dir)
    monkeypatch.setattr(deploy, "STATE_DIR", state_dir)
    calls: dict[str, list[Any]] = {k: [] for k in (
        "check", "redis", "head", "serve", "deploy", "running", "ready", "delete", "stop")}

    def start_head(config: AbserveConfig, state: dict[str, Any]) -> str:
        calls["head"].append(config.app_name)
        state["ray_pid"] = 4242
        return "127.0.0.1:6385"

    def start_redis(port: int, log: Path, **bound: Any) -> Any:
        calls["redis"].append(port)
        return SimpleNamespace(pid=4343)

    monkeypatch.setattr(deploy, "check_before_deploy",
                        lambda first, **kw: calls["check"].append((first.app_name, kw)))
    monkeypatch.setattr(deploy, "start_redis", start_redis)
    monkeypatch.setattr(deploy, "port_free", lambda port: True)
    monkeypatch.setattr(deploy, "ray_env", lambda mode: {})
    monkeypatch.setattr(deploy, "_start_head", start_head)
    monkeypatch.setattr(deploy, "connect", lambda address, **kw: None)
    monkeypatch.setattr(deploy, "_start_serve", lambda c: calls["serve"].append(c.http.port))
    monkeypatch.setattr(deploy, "deploy_apps", lambda cs: calls["deploy"].append(cs))
    monkeypatch.setattr(deploy, "wait_running", lambda name, t: calls["running"].append(name))
    monkeypatch.setattr(deploy, "_wait_ready", lambda url, t: calls["ready"].append(url))
    monkeypatch.setattr(deploy, "_delete_apps",
                        lambda address, names, **kw: calls["delete"].append((address, names,
                                                                             kw)))
    monkeypatch.setattr(deploy, "stop_ray_head", lambda pid, **kw: calls["stop"].append(pid))
    monkeypatch.setattr(deploy, "stop_pid", lambda pid, **kw: calls["stop"].append(pid))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    a = _write(tmp_path / "a.yaml", _data())
    b = _write(tmp_path / "b.yaml", _data("sales", http={"route_prefix": "/models/sales"},
                                          cache={"key_prefix": "shop"}))
    parser = build_parser()
    assert deploy.cmd_up(parser.parse_args(["up", "-c", a, "-c", b])) == 0

    assert calls["head"] == ["activity"] and calls["serve"] == [8000]  # once, by the first
    assert calls["redis"] == [deploy.DEFAULT_REDIS_PORT]  # one redis-server for both
    (first, kw), = calls["check"]
    assert first == "activity" and [n for n, _ in kw["others"]] == [b]
    (deployed,) = calls["deploy"]
    assert [(c.app_name, c.http.route_prefix) for c in deployed] == [
        ("activity", "/"), ("sales", "/models/sales")]
    assert {c.cache.redis_url for c in deployed} == {"redis://127.0.0.1:6390/0"}
    assert deployed[1].cache.key_prefix == "shop"
    assert calls["running"] == ["activity", "sales"]
    assert calls["ready"] == ["http://127.0.0.1:8000", "http://127.0.0.1:8000/models/sales"]
    state = cli_state.read_state()
    assert (state["ray_pid"], state["redis_pid"], state["app_name"]) == (4242, 4343, "activity")
    assert [(x["app_name"], x["route_prefix"]) for x in state["apps"]] == [
        ("activity", "/"), ("sales", "/models/sales")]
    out = capsys.readouterr().out
    assert "endpoint:  http://127.0.0.1:8000/models/sales/predict   (sales" in out

    assert deploy.cmd_down(parser.parse_args(["down"])) == 0
    # The cluster is ours: Serve is shut down too before its head is stopped.
    assert calls["delete"] == [("127.0.0.1:6385", ["activity", "sales"],
                                {"shutdown_serve": True})]
    assert calls["stop"] == [4242, 4343]  # Ray after the applications, then Redis
    assert not cli_state.state_file().exists()
