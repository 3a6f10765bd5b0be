"""The deployment files hold together: cluster.yaml, Dockerfile, docker-compose.yml, and the
Prometheus and Grafana files it mounts. Static checks only: no Docker, cloud or Ray cluster."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from serve.config import load_config
from serve.local.env import ray_env
from serve.telemetry import METRICS, MODEL_METRICS, exported_names

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "abserve.json"
COMPOSE_CONFIG = ROOT / "deploy" / "compose" / "abserve.compose.yaml"
DOCKER_CONFIG = ROOT / "deploy" / "docker" / "abserve.docker.yaml"
EXAMPLE_CONFIG = ROOT / "abserve.yaml"
REDIS_PORT = 6379


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def ray_schema() -> dict[str, Any]:
    """The cluster-config JSON schema shipped inside the installed ray package (not imported)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.origin is not None, "ray is not installed"
    path = Path(spec.origin).parent / "autoscaler" / "ray-schema.json"
    return dict(json.loads(path.read_text()))


# ---------------------------------------------------------------- cluster.yaml


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return dict(load_yaml(CLUSTER_YAML))


def test_cluster_yaml_matches_rays_schema(cluster: dict[str, Any]) -> None:
    jsonschema.validate(cluster, ray_schema())


def test_cluster_yaml_passes_ray_up_local_checks(cluster: dict[str, Any]) -> None:
    """What `ray up` does before it contacts the cloud: fill in defaults, validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_cluster_node_types(cluster: dict[str, Any]) -> None:
    types = cluster["available_node_types"]
    assert cluster["cluster_name"] == "abserve"
    assert cluster["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != cluster["head_node_type"]}
    gpu = [v for v in workers.values() if v["resources"].get("GPU", 0) > 0]
    cpu = [v for v in workers.values() if not v["resources"].get("GPU")]
    assert [(t["min_workers"], t["max_workers"]) for t in cpu] == [(0, 4)]
    assert [(t["min_workers"], t["max_workers"]) for t in gpu] == [(0, 2)]
    assert sum(t["max_workers"] for t in workers.values()) <= cluster["max_workers"]


def ports_of(commands: list[str], flag: str) -> set[int]:
    return {int(p) for c in commands for p in re.findall(rf"{flag}=\S*?:?(\d+)\b", c)}


def test_cluster_start_commands(cluster: dict[str, Any]) -> None:
    head = cluster["head_start_ray_commands"]
    workers = cluster["worker_start_ray_commands"]
    gcs_ports = ports_of(head, "--port")
    assert len(gcs_ports) == 1 and REDIS_PORT not in gcs_ports, gcs_ports
    ups = [c for c in head if "abserve up" in c]
    assert ups, "the head must deploy the application with `abserve up`"
    assert any("abserve train" in c for c in head)
    (gcs_port,) = gcs_ports
    assert all(f":{gcs_port}" in c for c in ups), "`abserve up --address` must use the GCS port"
    assert ports_of(workers, "--address") == {gcs_port}
    assert any("$RAY_HEAD_IP" in c for c in workers)


def test_cluster_installs_the_project_everywhere(cluster: dict[str, Any]) -> None:
    setup = " && ".join(cluster["setup_commands"])
    assert "redis-server" in setup
    assert re.search(r"pip install (-\S+ )*-e ~/abserve\b", setup), setup
    assert cluster["file_mounts"].get("~/abserve") == "."
    assert ".venv" in cluster.get("rsync_exclude", [])


def ray_start_env(command: str) -> dict[str, str]:
    """The VAR=value words right before ``ray start`` in one shell command line."""
    [segment] = [c for c in command.split(";") if "ray start" in c]
    words = shlex.split(segment)
    at = words.index("ray")
    assert words[at + 1] == "start", segment
    return dict(w.split("=", 1) for w in words[:at] if "=" in w)


def test_cluster_nodes_get_the_token_and_the_ingress_env(cluster: dict[str, Any]) -> None:
    """Every `ray start` of the launcher (head and workers) has token auth on and the
    ingress flags of the config the head deploys; the token reaches every node at Ray's
    default path through file_mounts (the autoscaler copies them to each worker)."""
    mode = load_config(EXAMPLE_CONFIG).http.ingress
    wanted = {**ray_env(mode), "RAY_AUTH_MODE": "token"}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        [start] = [c for c in cluster[key] if "ray start" in c]
        env = ray_start_env(start)
        assert {k: env.get(k) for k in wanted} == wanted, (key, env)
    assert cluster["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert not any("auth_token" in x for x in cluster.get("rsync_exclude", []))
    assert any("abserve.yaml" in c for c in cluster["head_start_ray_commands"])


# ---------------------------------------------------------------- docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(load_yaml(COMPOSE_FILE))


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "ray-head", "ray-worker", "prometheus", "grafana"} <= set(services)
    assert "container_name" not in services["ray-worker"], "would break --scale ray-worker=N"
    assert "ports" not in services["ray-worker"], "host ports would break --scale ray-worker=N"
    assert "healthcheck" in services["redis"]


def _is_host_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def host_paths(compose: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, path) of every host file or directory the compose file refers to."""
    found: list[tuple[str, str]] = []
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if build is not None:
            if isinstance(build, str):
                build = {"context": build}
            context = build.get("context", ".")
            found.append((f"{name}.build.context", context))
            found.append((f"{name}.build.dockerfile",
                          str(Path(context) / build.get("dockerfile", "Dockerfile"))))
        for vol in svc.get("volumes", []):
            if isinstance(vol, dict):
                if vol.get("type") == "bind":
                    found.append((f"{name}.volumes", vol["source"]))
            else:
                source = vol.split(":", 1)[0]
                if _is_host_path(source):
                    found.append((f"{name}.volumes", source))
                else:
                    assert source in (compose.get("volumes") or {}), (
                        f"{name}: named volume {source!r} is not declared under volumes"
                    )
        env_files = svc.get("env_file", [])
        for env in [env_files] if isinstance(env_files, str | dict) else env_files:
            found.append((f"{name}.env_file", env["path"] if isinstance(env, dict) else env))
    for section in ("configs", "secrets"):
        for name, item in (compose.get(section) or {}).items():
            if "file" in item:
                found.append((f"{section}.{name}", item["file"]))
    return found


def test_compose_host_paths_exist(compose: dict[str, Any]) -> None:
    paths = host_paths(compose)
    assert paths, "expected bind mounts and build contexts"
    missing = [f"{where}: {path}" for where, path in paths
               if not (COMPOSE_FILE.parent / Path(path).expanduser()).exists()]
    assert not missing, missing


def published_ports(compose: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(name, port) for name, svc in compose["services"].items()
            for port in svc.get("ports", [])]


def test_compose_publishes_on_loopback_only(compose: dict[str, Any]) -> None:
    ports = published_ports(compose)
    assert {str(p).rsplit(":", 1)[-1] for _, p in ports} >= {"8000", "8265", "9090", "3000"}
    for name, port in ports:
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", f"{name}: port {port!r} is published beyond loopback"


def test_compose_deploys_its_config(compose: dict[str, Any]) -> None:
    head = " ".join(map(str, compose["services"]["ray-head"]["command"]))
    assert "abserve up" in head
    assert COMPOSE_CONFIG.relative_to(ROOT).as_posix() in head
    worker = " ".join(map(str, compose["services"]["ray-worker"]["command"]))
    assert "--address=ray-head:" in worker and "--block" in worker
    # Ray in the foreground of both: the container exits (and restarts) with it.
    assert re.search(r"exec ray start --head --block", head), head
    assert re.search(r"exec ray start --address=ray-head:\S+ --block", worker), worker
    assert "tail -f" not in head + worker
    # Replicas load models on any node: the registry is at the same path on all of them.
    for name in ("ray-head", "ray-worker"):
        assert "registry:/app/registry" in compose["services"][name]["volumes"], name


RAY_NODES = ("ray-head", "ray-worker")


def test_compose_ray_nodes_get_the_token_and_the_ingress_env(compose: dict[str, Any]) -> None:
    """Every Ray node runs the ingress mode the compose config asks for and token auth,
    with the token file in a volume the head writes and every worker reads."""
    mode = load_config(COMPOSE_CONFIG).http.ingress
    wanted = {**ray_env(mode), "RAY_AUTH_MODE": "token"}
    services = compose["services"]
    paths = set()
    for name in RAY_NODES:
        env = services[name]["environment"]
        assert {k: env.get(k) for k in wanted} == wanted, name
        paths.add(env["RAY_AUTH_TOKEN_PATH"])
    [path] = paths
    for name, mode_suffix in (("ray-head", ""), ("ray-worker", ":ro")):
        [vol] = [v for v in services[name]["volumes"] if path.startswith(v.split(":")[1] + "/")]
        assert vol.split(":")[0] in compose["volumes"] and vol.endswith(
            str(Path(path).parent) + mode_suffix), (name, vol)
    # The Dockerfile makes the mount point the image user's, so the head can write the token.
    assert str(Path(path).parent) in DOCKERFILE.read_text()


def test_compose_health_checks(compose: dict[str, Any]) -> None:
    """Each Ray node checks itself by commands that work in the image (run by
    tests/integration/test_compose.py); psutil only after ray (ray ships it)."""
    for name in RAY_NODES:
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), test
        text = " ".join(test[1:])
        assert "ray health-check --address=" in text, name
        if "psutil" in text:
            assert text.index("import ray") < text.index("psutil"), text


def _mount_target(svc: dict[str, Any], host_path: str) -> str:
    for vol in svc.get("volumes", []):
        if isinstance(vol, str) and Path(vol.split(":")[0]) == Path(host_path):
            return vol.split(":")[1]
    raise AssertionError(f"{host_path} is not mounted")


def test_prometheus_scrapes_ray(compose: dict[str, Any]) -> None:
    services = compose["services"]
    config_path = "./deploy/prometheus/prometheus.yml"
    assert _mount_target(services["prometheus"], config_path) == "/etc/prometheus/prometheus.yml"
    config = load_yaml(ROOT / config_path)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    sd_files = [f for job in jobs.values() for sd in job.get("file_sd_configs", [])
                for f in sd["files"]]
    assert "/tmp/ray/prom_metrics_service_discovery.json" in sd_files
    static = [t for job in jobs.values() for sc in job.get("static_configs", [])
              for t in sc["targets"]]
    assert "ray-head:8080" in static
    # HAProxy's exporter (the throughput ingress) at the port every Ray node is given.
    haproxy_port = services["ray-head"]["environment"]["RAY_SERVE_HAPROXY_METRICS_PORT"]
    assert f"ray-head:{haproxy_port}" in static
    # The discovery file is a symlink into Ray's session directory: same path in both.
    tmp_mounts = [v for name in ("ray-head", "prometheus")
                  for v in services[name]["volumes"] if ":/tmp/ray" in str(v)]
    assert len({v.split(":")[0] for v in tmp_mounts}) == 1 and len(tmp_mounts) == 2


def iter_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(iter_panels(panel.get("panels", [])))
    return out


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    prov = ROOT / "deploy" / "grafana" / "provisioning"
    datasources = load_yaml(prov / "datasources" / "prometheus.yml")["datasources"]
    assert [d["url"] for d in datasources] == ["http://prometheus:9090"]
    providers = load_yaml(prov / "dashboards" / "dashboards.yml")["providers"]
    dashboards_in_container = _mount_target(grafana, "./deploy/grafana/dashboards")
    paths = {p["name"]: p["options"]["path"] for p in providers}
    assert paths["abserve"] == dashboards_in_container
    # Ray's own dashboards: where the head writes them, in a volume Grafana mounts too.
    head = compose["services"]["ray-head"]
    assert paths["ray"] == head["environment"]["RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR"]
    [shared] = [v.split(":")[0] for v in head["volumes"]
                if paths["ray"].startswith(v.split(":")[1] + "/")]
    assert any(v.startswith(f"{shared}:") and paths["ray"].startswith(v.split(":")[1] + "/")
               for v in grafana["volumes"]), grafana["volumes"]
    assert [p["name"] for p in providers][-1] == "ray", "a missing folder ends Grafana's pass"

    uids = {d["uid"] for d in datasources}
    panels = [p for p in iter_panels(json.loads(DASHBOARD.read_text())["panels"])
              if p["type"] != "row"]
    assert panels
    exprs = []
    for panel in panels:
        targets = panel.get("targets", [])
        assert targets and all(t.get("expr", "").strip() for t in targets), panel["title"]
        assert panel["datasource"]["uid"] in uids, panel["title"]
        exprs += [t["expr"] for t in targets]
    text = "\n".join(exprs)
    for metric in ("ray_serve_deployment_request_counter_total",
                   "ray_serve_deployment_error_counter_total",
                   "ray_serve_deployment_processing_latency_ms_bucket",
                   "ray_serve_deployment_replica_healthy",
                   "ray_abserve_requests_total", "ray_abserve_fallbacks_total",
                   "ray_abserve_cache_lookups_total", "ray_abserve_request_latency_ms_bucket"):
        assert metric in text, metric
    assert "histogram_quantile(0.99," in text
    # Every abserve series a panel asks for is one the code exports (router/dataplane/recorder.py).
    exported = {n for spec in [*METRICS.values(), *MODEL_METRICS.values()]
                for n in exported_names(spec)}
    asked = set(re.findall(r"\b(?:ray_)?abserve_\w+", text))
    assert asked and asked <= exported, sorted(asked - exported)
    latency = "histogram_quantile(0.99, sum by (arm, le) (rate(ray_abserve_request_latency_ms_"
    assert latency in text
    tags = set(re.findall(r"by \(([^)]*)\)", text))
    assert {"arm", "arm, le", "version", "result"} <= {t.strip() for t in tags}, tags


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    args = {i: [a for j, a in instructions if j == i] for i, _ in instructions}
    assert re.match(r"python:3\.11(-|$)", args["FROM"][0]), args["FROM"]
    runs = " ".join(args["RUN"])
    assert re.search(r"apt-get install [^&]*\bredis-server\b", runs)
    assert re.search(r"pip install (-\S+ )*-e \.", runs)
    assert "torch==2.13.0" in runs
    exposed = {p for a in args["EXPOSE"] for p in a.split()}
    assert {"8000", "8265", "6385", "8080"} <= exposed
    assert args.get("USER") and args["USER"][-1] not in ("root", "0")
    assert "/health" in args["HEALTHCHECK"][0]
    cmd = " ".join(json.loads(args["CMD"][-1]))
    assert "abserve train" in cmd and "abserve up" in cmd
    config = re.search(r"ABSERVE_CONFIG=(\S+)", " ".join(args["ENV"]))
    assert config is not None and (ROOT / config.group(1)) == DOCKER_CONFIG


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "registry"} <= set(ignored)


# ---------------------------------------------------------------- abserve configs


def test_compose_config_validates() -> None:
    config = load_config(COMPOSE_CONFIG)
    assert config.cache.redis_url == "redis://redis:6379/0"
    assert config.http.host == "0.0.0.0"
    assert config.cluster.address == "ray-head:6385"
    # The registry is the volume both ray-head and ray-worker mount at /app/registry.
    assert Path(config.registry) == ROOT / "registry"


def test_docker_config_validates() -> None:
    config = load_config(DOCKER_CONFIG)
    assert config.http.host == "0.0.0.0"
    assert config.cluster.address is None and config.cache.redis_url is None
    assert Path(config.registry) == ROOT / "registry"


@pytest.mark.parametrize("path", [COMPOSE_CONFIG, DOCKER_CONFIG], ids=lambda p: p.name)
def test_deploy_configs_keep_the_example_experiment(path: Path) -> None:
    """Only where and how it runs differs from abserve.yaml, not what is deployed."""
    example, variant = load_config(ROOT / "abserve.yaml"), load_config(path)
    assert variant.models == example.models
    assert variant.experiment == example.experiment
