"""The autoscaling and resources blocks: validation and the mapping onto Ray Serve's names.

Pure: no Ray. The integration test (tests/integration/test_autoscaling.py) checks
that Ray 2.60's AutoscalingConfig accepts the mapped dict and that it scales.
"""

from __future__ import annotations

from typing import Any

import pytest

from serve.config import AutoscalingConfig, parse_config

from .test_config import base, error_of


def test_mapping_uses_ray_serve_field_names() -> None:
    auto = AutoscalingConfig(
        min_replicas=1, max_replicas=3, initial_replicas=2, target_ongoing_requests=4,
        upscale_delay_s=1, downscale_delay_s=3, metrics_interval_s=0.5, look_back_period_s=2,
    )
    assert auto.serve_autoscaling_config() == {
        "min_replicas": 1, "max_replicas": 3, "initial_replicas": 2,
        "target_ongoing_requests": 4.0, "upscale_delay_s": 1.0, "downscale_delay_s": 3.0,
        "metrics_interval_s": 0.5, "look_back_period_s": 2.0,
    }


def test_unset_optionals_are_left_to_ray() -> None:
    mapped = AutoscalingConfig(max_replicas=2).serve_autoscaling_config()
    assert mapped == {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2.0,
                      "upscale_delay_s": 30.0, "downscale_delay_s": 600.0}


def test_model_and_router_accept_autoscaling() -> None:
    data = base(autoscaling={"min_replicas": 1, "max_replicas": 4, "upscale_delay_s": 5})
    data["router"] = {"autoscaling": {"max_replicas": 2}}
    config = parse_config(data)
    assert config.models[0].autoscaling is not None
    assert config.models[0].autoscaling.max_replicas == 4
    assert config.models[1].autoscaling is None
    assert config.router.autoscaling is not None


@pytest.mark.parametrize(
    ("auto", "expected"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas (3) is above max_replicas (2)"),
        ({"max_replicas": 3, "initial_replicas": 4}, "initial_replicas (4) must lie between"),
        ({"min_replicas": 2, "max_replicas": 3, "initial_replicas": 1},
         "initial_replicas (1) must lie between"),
        ({"max_replicas": 3, "target_ongoing_requests": 0}, "target_ongoing_requests"),
        ({"max_replicas": 3, "upscale_delay_s": -1}, "upscale_delay_s"),
        ({"min_replicas": 0, "max_replicas": 3}, "min_replicas"),
        ({}, "max_replicas"),
        ({"max_replicas": 3, "max_replica": 4}, "max_replica: unknown key"),
    ],
)
def test_bad_autoscaling_names_the_field(auto: dict[str, Any], expected: str) -> None:
    message = error_of(base(autoscaling=auto))
    assert message.startswith("models.0.autoscaling"), message
    assert expected in message


def test_num_replicas_and_autoscaling_together_are_refused() -> None:
    message = error_of(base(num_replicas=2, autoscaling={"max_replicas": 3}))
    assert message.startswith("models.0:") and "num_replicas and autoscaling" in message
    data = base()
    data["router"] = {"num_replicas": 2, "autoscaling": {"max_replicas": 3}}
    assert error_of(data).startswith("router:")


def test_dump_round_trips_with_autoscaling() -> None:
    """The router re-validates the dumped config: the unused num_replicas must not come back."""
    data = base(autoscaling={"max_replicas": 3})
    data["router"] = {"autoscaling": {"max_replicas": 2}}
    config = parse_config(data)
    dumped = config.model_dump(mode="json")
    assert "num_replicas" not in dumped["models"][0]
    assert dumped["models"][1]["num_replicas"] == 1
    assert "num_replicas" not in dumped["router"]
    assert parse_config(dumped) == config


def test_custom_resources() -> None:
    config = parse_config(base(resources={"abserve_node2": 0.1}))
    assert config.models[0].resources == {"abserve_node2": 0.1}
    assert config.models[1].resources == {}
    assert "use num_cpus / num_gpus" in error_of(base(resources={"CPU": 1}))
    assert "must be > 0" in error_of(base(resources={"abserve_node2": 0}))


def test_router_resources_and_proxy_location() -> None:
    data = base()
    data["router"] = {"resources": {"abserve_head": 0.1}}
    data["http"] = {"proxy_location": "HeadOnly"}
    config = parse_config(data)
    assert config.router.resources == {"abserve_head": 0.1}
    assert config.http.proxy_location == "HeadOnly"
    assert parse_config(base()).http.proxy_location == "EveryNode"
    data["router"] = {"resources": {"GPU": 1}}
    assert error_of(data).startswith("router.resources")
    data = base()
    data["http"] = {"proxy_location": "Nowhere"}
    assert error_of(data).startswith("http.proxy_location")
