"""What `abserve up` checks before it starts anything, and what it says when Serve reports
a failed deployment: the replica's own error, not only the deployment's name."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from serve.cli.deploy import failure_text, replica_error
from serve.cli.precheck import (
    admin_token_problems,
    check_before_deploy,
    port_problems,
    registry_problems,
)
from serve.config import AbserveConfig, parse_config
from serve.errors import AbserveError
from serve.local import free_port


def _config(tmp_path: Path, **extra: Any) -> AbserveConfig:
    return parse_config({
        "registry": str(tmp_path / "registry"),
        "models": [{"version": "v1"}, {"version": "v2"}],
        "experiment": {"baseline": "v1", "arms": [{"version": "v1", "weight": 90},
                                                  {"version": "v2", "weight": 10}]},
        "http": {"port": free_port()},
        "cluster": {"gcs_port": free_port(), "dashboard_port": free_port()},
        **extra,
    })


def test_every_configured_version_must_be_registered(tmp_path: Path) -> None:
    problems = registry_problems(_config(tmp_path))
    assert [p.split(":")[0] for p in problems] == ["models[v1]", "models[v2]"]


def test_a_short_admin_token_is_refused_before_deploying(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (problem,) = admin_token_problems(config, {"ABSERVE_ADMIN_TOKEN": "short"})
    assert problem.startswith("ABSERVE_ADMIN_TOKEN:") and "shorter than" in problem
    assert admin_token_problems(config, {"ABSERVE_ADMIN_TOKEN": "x" * 32}) == []
    assert admin_token_problems(config, {}) == []  # no token: the admin API is off


def test_a_short_token_file_is_named(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("short\n")
    config = _config(tmp_path, admin={"token_file": str(token)})
    (problem,) = admin_token_problems(config, {})
    assert problem.startswith("admin.token_file:")


def test_taken_ports_are_named_with_what_to_do(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert port_problems(config, starting_cluster=True) == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", config.cluster.gcs_port))
        s.listen()
        (problem,) = port_problems(config, starting_cluster=True)
        assert f"port {config.cluster.gcs_port} (cluster.gcs_port) is taken" in problem
        assert "abserve down" in problem
        # Onto a running cluster: its ports are in use by design.
        assert port_problems(config, starting_cluster=False) == []


def test_a_taken_grpc_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        config = _config(tmp_path, http={"port": free_port(), "grpc_port": port})
        (problem,) = port_problems(config, starting_cluster=True)
        assert problem.startswith(f"port {port} (http.grpc_port) is taken")
        assert "null for no gRPC" in problem
    same = _config(tmp_path, http={"port": port, "grpc_port": port})
    assert port_problems(same, starting_cluster=True) == [
        f"http.port and http.grpc_port share port {port}: give each its own"]


def test_one_port_for_two_uses(tmp_path: Path) -> None:
    config = _config(tmp_path)
    problems = port_problems(config, starting_cluster=True, redis_port=config.http.port)
    assert problems == [f"http.port and --redis-port share port {config.http.port}: "
                        "give each its own"]


def test_all_problems_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABSERVE_ADMIN_TOKEN", "short")
    with pytest.raises(AbserveError) as exc:
        check_before_deploy(_config(tmp_path), starting_cluster=True)
    text = exc.value.message
    assert text.startswith("not deploying, nothing was started")
    assert "models[v1]" in text and "models[v2]" in text and "ABSERVE_ADMIN_TOKEN" in text


# What Ray 2.60's serve.status() holds for a replica whose constructor raised (abridged).
SERVE_MESSAGE = (
    "The deployment failed to start 3 times in a row. This may be due to a problem with its "
    "constructor or initial health check failing. See controller logs for details. Error:\n"
    "\x1b[36mray::ServeReplica:abserve:router.initialize_and_get_metadata()\x1b[39m "
    "(pid=10437, ip=192.0.2.2)\n"
    '  File "ray/serve/_private/replica.py", line 1928, in initialize\n'
    "    raise RuntimeError(traceback.format_exc()) from None\n"
    "RuntimeError: Traceback (most recent call last):\n"
    '  File "router/ingress.py", line 194, in __init__\n'
    "    self.auth = AdminAuth(load_admin_token(self.config.admin))\n"
    "serve.errors.ConfigError: the admin token is shorter than 16 characters; use e.g. X"
)


def _status(value: str) -> SimpleNamespace:
    return SimpleNamespace(value=value)


def test_the_replicas_own_error_is_shown() -> None:
    assert replica_error(SERVE_MESSAGE) == (
        "serve.errors.ConfigError: the admin token is shorter than 16 characters; use e.g. X")
    assert replica_error("  something else  ") == "something else"
    app = SimpleNamespace(
        status=_status("DEPLOY_FAILED"),
        message="Failed to update the deployments ['router'].",
        deployments={
            "router": SimpleNamespace(status=_status("DEPLOY_FAILED"), message=SERVE_MESSAGE),
            "activity-v1": SimpleNamespace(status=_status("HEALTHY"), message=""),
        },
    )
    lines = failure_text("abserve", app).splitlines()
    assert lines[0] == ("application abserve DEPLOY_FAILED: "
                        "Failed to update the deployments ['router'].")
    assert lines[1] == ("  router: serve.errors.ConfigError: the admin token is shorter than "
                        "16 characters; use e.g. X")
    assert len(lines) == 3 and "activity-v1" not in "\n".join(lines)


def test_up_refuses_before_starting_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    import serve.cli.state
    from serve.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(serve.cli.state, "STATE_DIR", tmp_path / ".abserve")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("ABSERVE_ADMIN_TOKEN", "short")
    path = tmp_path / "abserve.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path).model_dump(mode="json")))
    assert main(["up", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not deploying, nothing was started" in err
    assert "models[v1]" in err and "ABSERVE_ADMIN_TOKEN: the admin token is shorter" in err
    assert not (tmp_path / ".abserve").exists()
