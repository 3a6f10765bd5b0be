"""deploy/kubernetes/: the RayService validates against KubeRay's RayService CRD (its
openAPIV3Schema, with jsonschema; no cluster), its serveConfigV2 is what `abserve serve-config`
writes for the image's paths, and every Ray container carries the ingress flags and the token
that Ray 2.60 reads. Broken copies are refused, so the check can fail."""

from __future__ import annotations

import copy
import importlib.util
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from serve.cli import build_parser
from serve.cli.serveconfig import config_text
from serve.config import load_config
from serve.local.env import ray_env
from serve.serve_config import serve_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
CRD = ROOT.parent / "shared" / "kuberay" / "ray.io_rayservices.yaml"
IMAGE_DIR = "/app"  # the Dockerfile's WORKDIR


def ray_source(relative: str) -> str:
    """A file of the installed ray package, read, not imported."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.origin is not None, "ray is not installed"
    return (Path(spec.origin).parent / relative).read_text()


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as the API server's strict field validation
    (kubectl's default) refuses them; a CRD's schema alone lets them through (pruned)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, Any]:
    if not CRD.exists():
        pytest.skip(f"{CRD} (KubeRay's RayService CRD) is not here")
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "RayService"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1"
    return dict(version["schema"]["openAPIV3Schema"])


@pytest.fixture(scope="module")
def validator(crd_schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    schema = strict(crd_schema)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    return dict(yaml.safe_load((K8S / "rayservice.yaml").read_text()))


@pytest.fixture(scope="module")
def redis() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all((K8S / "redis.yaml").read_text())}


def errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def containers(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]]
    return [c for t in templates for c in t["spec"]["containers"]]


def test_the_rayservice_validates_against_the_crd(
        service: dict[str, Any], validator: jsonschema.Draft7Validator) -> None:
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    assert errors(validator, service) == []


@pytest.mark.parametrize("break_it, expected", [
    (lambda s: s["spec"]["rayClusterConfig"].update(rayVerison="2.60.0"), "rayVerison"),
    (lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(replicas="1"),
     "is not of type 'integer'"),
    (lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][1].pop("groupName"),
     "'groupName' is a required property"),
    (lambda s: s["spec"]["rayClusterConfig"]["authOptions"].update(mode="tokens"),
     "is not one of"),
    (lambda s: s["spec"].update(serveConfigV2=yaml.safe_load(s["spec"]["serveConfigV2"])),
     "is not of type 'string'"),
])
def test_a_broken_copy_is_refused(service: dict[str, Any],
                                  validator: jsonschema.Draft7Validator,
                                  break_it: Any, expected: str) -> None:
    broken = copy.deepcopy(service)
    break_it(broken)
    found = errors(validator, broken)
    assert any(expected in e for e in found), found


def test_a_misspelt_field_passes_the_crd_alone(
        service: dict[str, Any], crd_schema: dict[str, Any]) -> None:
    """Why strict(): the CRD's schema leaves unknown fields to pruning, which drops them."""
    broken = copy.deepcopy(service)
    broken["spec"]["rayClusterConfig"]["rayVerison"] = "2.60.0"
    jsonschema.validate(broken, crd_schema)


def test_serve_config_v2_is_what_serve_config_writes_for_the_image(
        service: dict[str, Any], redis: dict[str, dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    text = service["spec"]["serveConfigV2"]
    port = redis["Service"]["spec"]["ports"][0]["port"]
    redis_url = f"redis://{redis['Service']['metadata']['name']}:{port}/0"
    expected = serve_config(
        [(f"{IMAGE_DIR}/abserve.yaml", load_config(ROOT / "abserve.yaml")),
         (f"{IMAGE_DIR}/sales.yaml", load_config(ROOT / "sales.yaml"))],
        host="0.0.0.0", redis_url=redis_url)
    assert yaml.safe_load(text) == expected
    # ... and the command in its header writes exactly this block.
    lines = text.splitlines()
    command = shlex.split(lines[lines.index("# generated by:") + 1].lstrip("# "))
    assert command[:2] == ["abserve", "serve-config"]
    monkeypatch.chdir(ROOT)
    assert config_text(build_parser().parse_args(command[1:])) == text


def test_the_image_holds_what_the_args_name() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"WORKDIR {IMAGE_DIR}\n" in dockerfile and "COPY . .\n" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "abserve.yaml" not in ignored and "sales.yaml" not in ignored
    for name in ("abserve.yaml", "sales.yaml"):
        assert yaml.safe_load((ROOT / name).read_text())["registry"] == "registry"
    assert f"abserve train --registry {IMAGE_DIR}/registry" in (K8S / "Dockerfile").read_text()


def test_rays_version_is_the_installed_one(service: dict[str, Any]) -> None:
    from importlib.metadata import version

    assert service["spec"]["rayClusterConfig"]["rayVersion"] == version("ray") == "2.60.0"


def test_every_ray_container_has_the_ingress_flags_and_the_token(
        service: dict[str, Any]) -> None:
    # The names Ray 2.60 reads: RAY_AUTH_MODE in Python, RAY_AUTH_TOKEN by the C++ token
    # loader (its message names it); the ingress flags in Serve's constants.
    assert 'AUTH_MODE_ENV_VAR = "RAY_AUTH_MODE"' in ray_source(
        "_private/authentication/authentication_token_setup.py")
    assert "RAY_AUTH_TOKEN" in ray_source("exceptions.py")
    flags = ray_env("throughput")
    constants = ray_source("serve/_private/constants.py")
    assert all(f'"{name}"' in constants for name in flags)
    secret = service["spec"]["rayClusterConfig"]["authOptions"]
    assert secret["mode"] == "token"
    images = set()
    for c in containers(service):
        env = {e["name"]: e for e in c["env"]}
        for name, value in flags.items():
            assert env[name]["value"] == value == "1", (c["name"], name)
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": secret["secretName"], "key": "auth_token"}
        assert env["ABSERVE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
        images.add(c["image"])
    assert len(images) == 1, images


def test_head_and_worker_groups_request_what_they_use(service: dict[str, Any]) -> None:
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    # Each application's experiment controller is pinned to the head: it needs CPUs.
    assert head["rayStartParams"].get("num-cpus", "1") != "0"
    for c in containers(service):
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][part]), (c["name"], part)
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["dshm"] == "/dev/shm"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    cpu_limits = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu_limits and groups["cpu"]["replicas"] >= 1
    gpu = groups["gpu"]
    gpu_limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == gpu["rayStartParams"]["num-gpus"] == "1"
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_redis_is_a_service_the_routers_reach(redis: dict[str, dict[str, Any]]) -> None:
    deployment, svc = redis["Deployment"], redis["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[svc["spec"]["ports"][0]["targetPort"]] == 6379
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert "allkeys-lru" in container["args"]
