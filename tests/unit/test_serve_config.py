"""Ray Serve's config file for abserve configs (serve/serve_config.py, `abserve serve-config`):
checked with Ray's own schema (ServeDeploySchema) and the builder's own arguments (AppArgs),
and the committed deploy/serve/abserve-serve.yaml held equal to what the command writes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema

from serve.app import AppArgs
from serve.cli import build_parser, main
from serve.cli.serveconfig import config_text
from serve.config import AbserveConfig, load_config
from serve.errors import ConfigError
from serve.serve_config import IMPORT_PATH, cluster_path, render_serve_config, serve_config

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "deploy" / "serve" / "abserve-serve.yaml"
REGENERATE = ("abserve serve-config -c abserve.yaml -c sales.yaml "
              "-o deploy/serve/abserve-serve.yaml")


def demo() -> list[tuple[str, AbserveConfig]]:
    return [("abserve.yaml", load_config(ROOT / "abserve.yaml")),
            ("sales.yaml", load_config(ROOT / "sales.yaml"))]


def check_with_ray(doc: dict[str, Any]) -> ServeDeploySchema:
    """Ray's schema, plus what it lets through: it accepts unknown keys (forward
    compatibility), so a misspelt one would be silently ignored by `serve deploy`."""
    schema = ServeDeploySchema.model_validate(doc)
    assert set(doc) <= set(ServeDeploySchema.model_fields), set(doc)
    assert set(doc["http_options"]) <= set(HTTPOptionsSchema.model_fields)
    for app in doc["applications"]:
        assert set(app) <= set(ServeApplicationSchema.model_fields), set(app)
        AppArgs.model_validate(app["args"])  # what Serve hands serve.app:app
    return schema


def test_one_application_per_config_at_its_route_prefix() -> None:
    doc = serve_config(demo())
    schema = check_with_ray(doc)
    assert [(a.name, a.route_prefix, a.import_path) for a in schema.applications] == [
        ("abserve", "/", IMPORT_PATH), ("sales", "/models/sales", IMPORT_PATH)]
    assert [a["args"] for a in doc["applications"]] == [{"config": "abserve.yaml"},
                                                         {"config": "sales.yaml"}]
    assert all("runtime_env" not in a for a in doc["applications"])
    assert doc["proxy_location"] == "EveryNode"
    assert doc["http_options"] == {"host": "127.0.0.1", "port": 8000}


def test_the_proxy_is_the_first_configs(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "abserve.yaml").read_text())
    data["http"].update(port=8123, proxy_location="HeadOnly")
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump(data))
    doc = serve_config([(str(first), load_config(first))], host="0.0.0.0")
    assert doc["proxy_location"] == "HeadOnly"
    assert doc["http_options"] == {"host": "0.0.0.0", "port": 8123}
    check_with_ray(doc)


def test_grpc_port_gives_the_grpc_options_with_the_oip_servicer(tmp_path: Path) -> None:
    from ray.serve.schema import gRPCOptionsSchema

    from router.protocol.v2grpc import grpc_predict_v2_pb2_grpc
    from serve.config import GRPC_SERVICER

    assert "grpc_options" not in serve_config(demo())  # null: no gRPC ingress
    data = yaml.safe_load((ROOT / "abserve.yaml").read_text())
    data["http"]["grpc_port"] = 9123
    path = tmp_path / "grpc.yaml"
    path.write_text(yaml.safe_dump(data))
    doc = serve_config([(str(path), load_config(path))])
    assert doc["grpc_options"] == {"port": 9123, "grpc_servicer_functions": [GRPC_SERVICER]}
    assert set(doc["grpc_options"]) <= set(gRPCOptionsSchema.model_fields)
    assert check_with_ray(doc).grpc_options.port == 9123
    # The path Serve's proxy imports on each node names the protoc module's function.
    module, _, name = GRPC_SERVICER.rpartition(".")
    assert module == grpc_predict_v2_pb2_grpc.__name__
    assert callable(getattr(grpc_predict_v2_pb2_grpc, name))


def test_overrides_reach_the_builders_args() -> None:
    doc = serve_config(demo(), redis_url="redis://redis:6379/0", registry="/data/registry",
                       state_dir="/data/state", working_dir="https://example.com/abserve.zip")
    check_with_ray(doc)
    for app in doc["applications"]:
        assert app["args"]["redis_url"] == "redis://redis:6379/0"
        assert app["args"]["registry"] == "/data/registry"
        assert app["args"]["state_dir"] == "/data/state"
        assert app["runtime_env"] == {"working_dir": "https://example.com/abserve.zip"}


def test_redis_url_only_for_configs_that_name_no_redis(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "sales.yaml").read_text())
    data["cache"]["redis_url"] = "redis://sales-redis:6379/0"
    own = tmp_path / "sales.yaml"
    own.write_text(yaml.safe_dump(data))
    off = yaml.safe_load((ROOT / "abserve.yaml").read_text())
    off["cache"]["enabled"] = False
    no_cache = tmp_path / "abserve.yaml"
    no_cache.write_text(yaml.safe_dump(off))
    doc = serve_config([(str(no_cache), load_config(no_cache)), (str(own), load_config(own))],
                       redis_url="redis://shared:6379/0")
    assert [a["args"].get("redis_url") for a in doc["applications"]] == [None, None]
    doc = serve_config(demo(), redis_url="redis://shared:6379/0")
    assert [a["args"]["redis_url"] for a in doc["applications"]] == [
        "redis://shared:6379/0"] * 2


def test_configs_that_cannot_run_side_by_side_are_refused() -> None:
    abserve = load_config(ROOT / "abserve.yaml")
    with pytest.raises(ConfigError, match="app_name 'abserve' is also a.yaml's"):
        serve_config([("a.yaml", abserve), ("b.yaml", abserve)])
    with pytest.raises(ConfigError, match="at least one"):
        serve_config([])


def test_cluster_path() -> None:
    assert cluster_path("abserve.yaml", None) == "abserve.yaml"
    assert cluster_path("abserve.yaml", "/app") == "/app/abserve.yaml"
    assert cluster_path("deploy/x.yaml", "/app/") == "/app/deploy/x.yaml"
    assert cluster_path("/etc/abserve.yaml", "/app") == "/etc/abserve.yaml"


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve-config", *argv])


def test_committed_serve_config_is_what_the_command_writes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    expected = config_text(_args(*REGENERATE.split()[2:]))
    assert COMMITTED.read_text() == expected, (
        f"{COMMITTED.relative_to(ROOT)} is out of date; regenerate it with\n"
        f"  .venv/bin/{REGENERATE}")
    doc = yaml.safe_load(expected)
    assert doc == serve_config(demo())
    assert f"#   {REGENERATE}\n" in expected
    check_with_ray(doc)


def test_the_command_writes_the_file_or_prints_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "k8s" / "serve.yaml"
    argv = ["serve-config", "-c", "abserve.yaml", "-c", "sales.yaml", "--cluster-dir", "/app",
            "--host", "0.0.0.0", "--redis-url", "redis://abserve-redis:6379/0", "-o", str(out)]
    assert main(argv) == 0
    assert f"serve deploy {out}" in capsys.readouterr().out
    doc = yaml.safe_load(out.read_text())
    assert doc == serve_config(
        [("/app/abserve.yaml", demo()[0][1]), ("/app/sales.yaml", demo()[1][1])],
        host="0.0.0.0", redis_url="redis://abserve-redis:6379/0")
    assert "--cluster-dir /app --host 0.0.0.0 --redis-url redis://abserve-redis:6379/0" in (
        out.read_text().splitlines()[2])
    assert main(["serve-config", "-c", "abserve.yaml"]) == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["applications"][0]["args"] == {"config": "abserve.yaml"}
    assert render_serve_config(yaml.safe_load(printed)) == printed.split("\n", 5)[5]


def test_a_config_given_twice_or_invalid_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["serve-config", "-c", "abserve.yaml", "-c", "abserve.yaml"]) == 2
    assert "given twice" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("app_name: x\nmodels: []\n")
    assert main(["serve-config", "-c", str(bad)]) == 2
    assert "models" in capsys.readouterr().err
