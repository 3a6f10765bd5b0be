"""One model per admin body, shared with the config file; one unit (percent) for shares.

The admin API's bodies are validated by pydantic models (the canary plan's and the shadows'
are the config's own, ``CanaryPlanConfig`` and ``ShadowConfig``), so a bad body is a 422
whose ``field`` names the field, and /openapi.json documents every body. The fraction
fields of earlier releases are refused, saying what to write instead (issue 18, item 4).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from router.controlplane.canary import GateConfig
from serve.config import (
    GATE_PERCENT_FIELDS,
    CanaryGatesConfig,
    ExperimentConfig,
    LogConfig,
    ShadowConfig,
    format_validation_errors,
    parse_config,
)
from serve.errors import ConfigError
from tests.unit.test_http_app import AUTH, drive, replica

EXPERIMENT = {"baseline": "v1", "arms": [{"version": "v1", "weight": 90},
                                         {"version": "v2", "weight": 10}]}


def _message(model: type[Any], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return format_validation_errors(info.value)


# ------------------------------------------------------------------ one unit: percent


@pytest.mark.parametrize(("model", "data", "says"), [
    (ShadowConfig, {"version": "v3", "share": 0.2}, "write percent: 20 instead of share: 0.2"),
    (ExperimentConfig, {**EXPERIMENT, "compare_share": 0.5},
     "write compare_percent: 50 instead of compare_share: 0.5"),
    (ExperimentConfig, {**EXPERIMENT, "bandit_floor": 0.05},
     "write bandit_floor_percent: 5 instead of bandit_floor: 0.05"),
    (LogConfig, {"sample": 0.1}, "write sample_percent: 10 instead of sample: 0.1"),
    (LogConfig, {"sample_by_experiment": {"big": 0.05}},
     "write sample_percent_by_experiment (in percent) instead of sample_by_experiment"),
    *[(CanaryGatesConfig, {old: 0.03}, f"write {new}: 3 instead of {old}: 0.03")
      for new, old in GATE_PERCENT_FIELDS.items()],
])
def test_an_old_fraction_field_is_refused_saying_what_to_write(
    model: type[Any], data: dict[str, Any], says: str
) -> None:
    assert says in _message(model, data)


def test_the_gates_in_percent_are_the_canary_gates_in_fractions() -> None:
    """Every gate of router/controlplane/canary.py can be written, with the same defaults."""
    internal = {f.name for f in dataclasses.fields(GateConfig)}
    assert set(CanaryGatesConfig().gate_fields()) == internal
    assert GateConfig(**CanaryGatesConfig().gate_fields()) == GateConfig()
    written = CanaryGatesConfig(max_error_percent=2, accuracy_margin_points=3,
                                max_disagreement_percent=None)
    gates = GateConfig(**written.gate_fields())
    assert (gates.max_error_rate, gates.accuracy_margin, gates.max_disagreement) == \
        (0.02, 0.03, None)
    assert CanaryGatesConfig.from_gate_fields(gates.to_dict()) == written


def test_shares_in_percent_reach_the_router_as_fractions() -> None:
    exp = ExperimentConfig.model_validate(
        {**EXPERIMENT, "compare_percent": 50, "shadows": [{"version": "v2", "percent": 20}]})
    assert exp.compare_share == 0.5 and exp.shadows[0].share == 0.2
    log = LogConfig(sample_percent=25, sample_percent_by_experiment={"big": 5})
    assert log.sample == 0.25 and log.sample_by_experiment == {"big": 0.05}


# ------------------------------------------------------------------ the plan in the config


BASE = {"models": [{"version": "v1"}, {"version": "v2"}], "experiment": EXPERIMENT}


@pytest.mark.parametrize(("canary", "says"), [
    ({"candidate": "v9"}, "canary.candidate: unknown version 'v9'"),
    ({"candidate": "v1"}, "canary.candidate: 'v1' is the experiment's baseline"),
    ({"candidate": "v2", "baseline": "v3"}, "canary.baseline: 'v3' is not the experiment's"),
    ({"candidate": "v2", "steps": [50, 20]}, "canary.steps: "),
    ({"candidate": "v2", "steps": [5, 50]}, "the last step must be 100"),
    ({"candidate": "v2", "gates": {"max_fallback_rate": 0.02}},
     "canary.gates.max_fallback_rate: shares and rates are in percent now"),
    ({"candidate": "v2", "gates": {"max_error_percent": 150}}, "canary.gates.max_error_percent"),
])
def test_a_declared_canary_is_checked_against_the_config(canary: dict[str, Any],
                                                         says: str) -> None:
    with pytest.raises(ConfigError, match="canary") as info:
        parse_config({**BASE, "canary": canary})
    assert says in str(info.value)


def test_a_declared_canary_fills_in_the_baseline_and_converts_the_gates() -> None:
    config = parse_config({**BASE, "canary": {"candidate": "v2", "steps": [10, 100],
                                              "gates": {"max_fallback_percent": 2}}})
    assert config.canary is not None
    fields = config.canary.plan_fields("v1")
    assert fields["baseline"] == "v1" and fields["steps"] == [10.0, 100.0]
    assert fields["gates"]["max_fallback_rate"] == 0.02


# ------------------------------------------------------------------ the admin API's bodies


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("PUT", "/admin/weights", {"weights": "v1=90"}, "weights"),
    ("PUT", "/admin/weights", {"weights": {"v1": "ninety"}}, "weights.v1"),
    ("PUT", "/admin/weights", {"weights": {"v1": 100}, "who": "me"}, "who"),
    ("PUT", "/admin/shadows", {"shadows": [{"version": "v3", "percent": 150}]},
     "shadows.0.percent"),
    ("PUT", "/admin/shadows", {"shadows": [{"version": "v3", "share": 0.5}]},
     "shadows.0.share"),
    ("POST", "/admin/candidates", {"version": "v3", "weight": -1}, "weight"),
    ("POST", "/admin/promote", {}, "version"),
    ("POST", "/admin/rollback", {"versions": ["v2"]}, "versions"),
    ("POST", "/admin/canary", {"candidate": "v2", "gates": {"max_error_rate": 0.01}},
     "gates.max_error_rate"),
    ("POST", "/admin/canary", {"candidate": "v2", "steps": [20, 50]}, "steps"),
])
def test_a_bad_admin_body_is_a_422_naming_its_field(method: str, path: str,
                                                   body: dict[str, Any], field: str) -> None:
    r = replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        resp = await client.request(method, path, json=body, headers=AUTH)
        assert resp.status_code == 422, resp.text
        assert resp.json()["code"] == "invalid_input"
        assert resp.json()["field"] == field, resp.json()
        before = (await client.get("/admin/experiment", headers=AUTH)).json()
        assert before["revision"] == 1  # nothing changed

    drive(r, scenario)


def test_openapi_documents_every_admin_body() -> None:
    r = replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        doc = (await client.get("/openapi.json")).json()
        schemas = doc["components"]["schemas"]
        bodies = {("put", "/admin/weights"): "WeightsBody",
                  ("put", "/admin/shadows"): "ShadowsBody",
                  ("post", "/admin/candidates"): "CandidateBody",
                  ("post", "/admin/promote"): "VersionBody",
                  ("post", "/admin/rollback"): "RollbackBody",
                  ("post", "/admin/canary"): "CanaryPlanConfig"}
        for (method, path), name in bodies.items():
            body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]
            assert body["schema"] == {"$ref": f"#/components/schemas/{name}"}
            assert name in schemas
        assert "max_error_percent" in schemas["CanaryGatesConfig"]["properties"]
        assert "percent" in schemas["ShadowConfig"]["properties"]
        refs = _refs(doc)
        assert refs and all(ref.removeprefix("#/components/schemas/") in schemas
                            for ref in refs)  # no dangling reference

    drive(r, scenario)


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()
