"""The whole configuration as frozen pydantic models, and ``load_config(path)``.

One YAML file is the single source of truth: replicas, resources, batching,
weights, timeouts, cache and HTTP limits all live here and reach the Ray
deployments through ``serve/app.py`` only. No Ray import here: the router and
the tests validate configs in microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from serve.errors import ConfigError

__all__ = [
    "GRPC_SERVICER",
    "AbserveConfig",
    "AdminConfig",
    "ArmConfig",
    "AutoscalingConfig",
    "BreakerConfig",
    "CacheConfig",
    "CanaryGatesConfig",
    "CanaryPlanConfig",
    "ClusterConfig",
    "DriftConfig",
    "ExperimentConfig",
    "FeedbackConfig",
    "HttpConfig",
    "LogConfig",
    "ModelConfig",
    "ReplayGateConfig",
    "RouterConfig",
    "ShadowConfig",
    "StateConfig",
    "first_error_field",
    "format_validation_errors",
    "grpc_options",
    "load_config",
    "model_deployment_name",
    "model_route_prefix",
    "parse_config",
    "side_by_side_problems",
]

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MODELS_ROUTE = "/models/"  # a further model's route prefix: /models/<model>
MODEL_ROUTE_RE = r"/models/[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_WEIGHT_TOLERANCE = 1e-6


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingConfig(_Frozen):
    """Replica autoscaling of one deployment, mapped onto Ray Serve's autoscaling_config."""

    min_replicas: int = Field(
        1, ge=1, le=1024,
        description="Fewest replicas; at least 1, so the version can always answer in time.",
    )
    max_replicas: int = Field(ge=1, le=1024, description="Most replicas.")
    initial_replicas: int | None = Field(
        None, ge=1, le=1024, description="Replicas at deploy time; default min_replicas."
    )
    target_ongoing_requests: float = Field(
        2.0, gt=0,
        description="Requests in flight (running + queued) per replica that Serve aims for.",
    )
    upscale_delay_s: float = Field(
        30.0, ge=0, description="How long demand must stay high before replicas are added."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="How long demand must stay low before replicas are removed."
    )
    metrics_interval_s: float | None = Field(
        None, gt=0, description="How often replicas and handles report load; Ray's default: 10."
    )
    look_back_period_s: float | None = Field(
        None, gt=0, description="Window the load is averaged over; Ray's default: 30."
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas "
                f"({self.max_replicas}); raise max_replicas or lower min_replicas"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({initial}) must lie between min_replicas "
                f"({self.min_replicas}) and max_replicas ({self.max_replicas})"
            )
        return self

    def serve_autoscaling_config(self) -> dict[str, Any]:
        """The dict for Ray Serve's ``.options(autoscaling_config=...)`` (Ray 2.60 names)."""
        out: dict[str, Any] = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
        }
        for key in ("initial_replicas", "metrics_interval_s", "look_back_period_s"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


class _Replicas(_Frozen):
    """num_replicas or autoscaling, never both; a dump keeps only the one in use."""

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> _Replicas:
        both = "num_replicas" in self.model_fields_set
        if both and getattr(self, "autoscaling", None) is not None:
            raise ValueError(
                "num_replicas and autoscaling are both set: keep one (with autoscaling, "
                "use autoscaling.initial_replicas / min_replicas)"
            )
        return self

    @model_serializer(mode="wrap")
    def _drop_unused_replicas(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # So that parse(dump(config)) holds: the router re-validates the dumped config.
        data: dict[str, Any] = handler(self)
        if getattr(self, "autoscaling", None) is not None:
            data.pop("num_replicas", None)
        return data


_RESERVED_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


def _check_custom_resources(resources: dict[str, float]) -> dict[str, float]:
    for name, amount in resources.items():
        if name in _RESERVED_RESOURCES:
            raise ValueError(f"{name!r} is not a custom resource; use num_cpus / num_gpus for it")
        if not amount > 0:
            raise ValueError(f"{name}: the amount must be > 0, got {amount}")
    return resources


class ModelConfig(_Replicas):
    """One model version, deployed as its own Ray Serve deployment."""

    version: Annotated[str, Field(pattern=NAME_RE, description="Registered version, e.g. v1.")]
    num_replicas: int = Field(1, ge=1, le=1024, description="Replicas of this version.")
    num_cpus: float = Field(0.25, gt=0, description="CPUs per replica (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions allowed).")
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="Inference precision; fp16 applies on GPU only."
    )
    max_batch_size: int = Field(64, ge=1, le=4096, description="Largest dynamic batch.")
    batch_wait_timeout_s: float = Field(
        0.002, ge=0, le=1,
        description="How long a batch waits to fill before it runs (the router has already "
        "merged its own concurrent calls; this merges the calls of several routers).",
    )
    adaptive_batch_wait: bool = Field(
        True,
        description="Wait for a batch to fill only while calls arrive closer together than "
        "batch_wait_timeout_s (a sparse call runs at once); false: always wait.",
    )
    max_ongoing_requests: int = Field(
        256, ge=1, description="Concurrent requests a replica accepts (Ray Serve's knob)."
    )
    max_queued_requests: int = Field(
        1024, ge=-1, description="Requests queued per caller before backpressure; -1 = unbounded."
    )
    autoscaling: AutoscalingConfig | None = Field(
        None, description="Scale this version's replicas with load (instead of num_replicas)."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica, e.g. {abserve_gpu_node: 0.1} to pin "
        "this version to nodes started with --resources.",
    )
    colocated: bool | None = Field(
        None,
        description="Also serve this version inside every router replica, by the same backend "
        "code, so that its requests cross one Ray hop instead of two; its own deployment "
        "stays, and answers whenever the colocated copy fails, times out or is not loaded. "
        "null: automatic, on for scikit-learn versions whose artifact is at most "
        "router.colocate_max_artifact_mb and that set no num_gpus, resources or autoscaling; "
        "off for torch and TensorFlow (the router would import the framework and hold the "
        "model). true: always (any framework); false: never.",
    )

    _custom_resources = field_validator("resources")(_check_custom_resources)



class ArmConfig(_Frozen):
    """One arm of the experiment: a deployed version and its share of traffic."""

    version: str = Field(description="A version listed under models.")
    weight: float = Field(ge=0, le=100, description="Traffic share in percent.")
    timeout_ms: float | None = Field(
        None, gt=0, description="Per-arm timeout; defaults to experiment.timeout_ms."
    )


class BreakerConfig(_Frozen):
    """The circuit breaker every router replica keeps per arm."""

    failure_threshold: int = Field(
        5, ge=1, description="Consecutive failures that open an arm's circuit."
    )
    cooldown_s: float = Field(
        10.0, gt=0, description="Time an open circuit waits before one probe request."
    )


def _percent_instead(data: Any, renames: dict[str, str]) -> Any:
    """Refuse the fraction fields of earlier releases, saying what to write instead: every
    share and rate a user writes is in percent, as the weights are (issue 18)."""
    if isinstance(data, dict):
        for old, new in renames.items():
            if old in data:
                value = data[old]
                number = isinstance(value, int | float) and not isinstance(value, bool)
                instead = f"{new}: {value * 100:g}" if number else f"{new} (in percent)"
                raise ValueError(
                    f"{old}: shares and rates are in percent now, as weights are; write "
                    f"{instead} instead of {old}: {value}"
                )
    return data


class ShadowConfig(_Frozen):
    """A version that gets a background copy of a share of the requests."""

    version: str = Field(description="A deployed version that also receives a copy of requests.")
    percent: float = Field(
        ge=0, le=100, description="Share of requests copied to it, in percent (as weights)."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_fraction(cls, data: Any) -> Any:
        return _percent_instead(data, {"share": "percent"})

    @property
    def share(self) -> float:
        """The copied share as a fraction (0..1), for the router's sampling."""
        return self.percent / 100.0


class ExperimentConfig(_Frozen):
    """The experiment the router runs: arms, baseline, timeouts, breaker, shadows and the
    routing policy. Deploying a changed block replaces the live experiment; live changes
    (admin calls, canary steps) override it until then ([experiments](experiments.md), "The
    config file is the desired state").
    """

    name: str = Field("default", pattern=NAME_RE, description="Experiment name (metrics, logs).")
    baseline: str = Field(description="The version that answers when a candidate fails.")
    arms: list[ArmConfig] = Field(min_length=1, description="Baseline and candidates with weights.")
    timeout_ms: float = Field(1000.0, gt=0, description="Default per-arm timeout.")
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)  # type: ignore[arg-type]
    shadows: list[ShadowConfig] = Field(
        default_factory=list,
        description="Versions that get a background copy of a share of requests; the client "
        "only ever sees the primary's answer.",
    )
    compare_percent: float = Field(
        20.0,
        ge=0,
        le=100,
        description="Percent of each candidate's own answers that the baseline also answers "
        "in the background (the client gets the candidate's): their disagreement feeds the "
        "report and the canary's no-label quality gate. Costs that share of the candidate's "
        "traffic again on the baseline; 0 turns it off.",
    )
    agreement_rtol: float = Field(
        0.05,
        ge=0,
        description="Regression models: two answers to one input agree (shadows, the "
        "baseline comparison, the disagreement gate) when every output is within "
        "agreement_atol + agreement_rtol * |reference| of the reference's. Classifiers agree "
        "when their labels are equal.",
    )
    agreement_atol: float = Field(
        0.0,
        ge=0,
        description="Regression models: the absolute part of the agreement tolerance, in the "
        "output's units (for values near zero, where a relative tolerance says little).",
    )
    policy: Literal["weighted", "bandit"] = Field(
        "weighted",
        description="weighted: the weights (sticky per user key); bandit: Thompson sampling on "
        "feedback accuracy among arms with weight > 0.",
    )
    bandit_floor_percent: float = Field(
        5.0,
        ge=0,
        le=50,
        description="Bandit: every eligible arm (weight > 0) keeps at least this percent of "
        "traffic. Floor x eligible arms must be at most 100 (exactly 100 routes uniformly).",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_fractions(cls, data: Any) -> Any:
        return _percent_instead(
            data, {"compare_share": "compare_percent", "bandit_floor": "bandit_floor_percent"}
        )

    @property
    def compare_share(self) -> float:
        """compare_percent as a fraction (0..1), for the router's sampling."""
        return self.compare_percent / 100.0

    @property
    def bandit_floor(self) -> float:
        """bandit_floor_percent as a fraction (0..1), for the bandit."""
        return self.bandit_floor_percent / 100.0

    @model_validator(mode="after")
    def _check_arms(self) -> ExperimentConfig:
        versions = [a.version for a in self.arms]
        dupes = sorted({v for v in versions if versions.count(v) > 1})
        if dupes:
            raise ValueError(f"arms: version(s) {dupes} listed twice; list each arm once")
        if self.baseline not in versions:
            raise ValueError(
                f"baseline: {self.baseline!r} is not among the arms {versions}; "
                "add it as an arm (weight may be 0)"
            )
        total = sum(a.weight for a in self.arms)
        if abs(total - 100.0) > _WEIGHT_TOLERANCE:
            raise ValueError(f"arms: weights sum to {total:g}, they must sum to 100")
        return self

    @model_validator(mode="after")
    def _bandit_floor_fits_the_arms(self) -> ExperimentConfig:
        """A floor the arms cannot all get is a promise the bandit would silently break."""
        eligible = [a.version for a in self.arms if a.weight > 0]
        floor = self.bandit_floor_percent
        if self.policy != "bandit" or floor * len(eligible) <= 100.0 + 1e-7:
            return self
        most = int(1e4 / len(eligible)) / 1e2  # rounded down, so it fits
        raise ValueError(
            f"bandit_floor_percent: {floor:g} for each of {len(eligible)} eligible arms "
            f"(weight > 0: {', '.join(eligible)}) is {floor * len(eligible):g} % of "
            f"the traffic, more than all of it; lower bandit_floor_percent to at most "
            f"{most:g}, or set the arms the bandit should not try to weight 0"
        )

    def arm_timeout_s(self, version: str) -> float:
        for arm in self.arms:
            if arm.version == version and arm.timeout_ms is not None:
                return arm.timeout_ms / 1000.0
        return self.timeout_ms / 1000.0


# A canary gate's user-facing name (percent, as weights) -> GateConfig's own (a fraction):
# router/controlplane/canary.py computes in fractions and persists them; only the names a
# user writes, in the YAML and the admin API, are in percent.
GATE_PERCENT_FIELDS = {
    "max_error_percent": "max_error_rate",
    "max_error_percent_delta": "max_error_rate_delta",
    "max_fallback_percent": "max_fallback_rate",
    "min_shadow_agreement_percent": "min_shadow_agreement",
    "min_accuracy_delta_points": "min_accuracy_delta",
    "accuracy_margin_points": "accuracy_margin",
    "mae_margin_percent": "mae_margin",
    "max_disagreement_percent": "max_disagreement",
    "max_label_shift_percent": "max_label_shift",
}


class CanaryGatesConfig(_Frozen):
    """The thresholds each step's window must meet (docs/experiments.md, "Gates"). Shares,
    rates and margins are in percent (accuracy in points), as weights are; `null` turns a
    gate off. Significance levels (`*_alpha`) are probabilities."""

    max_error_percent: float | None = Field(
        1.0, ge=0, le=100, description="Most candidate errors, percent of its requests.")
    max_error_percent_delta: float | None = Field(
        None, ge=0, le=100, description="Most candidate error percent above the baseline's.")
    max_fallback_percent: float | None = Field(
        5.0, ge=0, le=100, description="Most candidate requests answered by the fallback.")
    max_p99_ratio: float | None = Field(
        1.5, gt=0, description="Most candidate p99 latency over the baseline's.")
    max_p99_ms: float | None = Field(None, gt=0, description="Most candidate p99 latency.")
    min_shadow_agreement_percent: float | None = Field(
        None, ge=0, le=100, description="Least shadow agreement with the primary's answers.")
    min_shadow_samples: int = Field(
        100, ge=1, description="Shadow comparisons before the shadow gate is judged.")
    min_accuracy_delta_points: float | None = Field(
        None, ge=-100, le=100, description="Least candidate - baseline accuracy in the "
        "window, in points (-2 tolerates a two-point drop); a point estimate, off by default.")
    min_feedback: int = Field(
        200, ge=1, description="Labels (or true values) per arm before accuracy gates judge.")
    failures_to_rollback: int = Field(
        3, ge=1, description="Consecutive failing windows that roll the candidate back.")
    accuracy_margin_points: float | None = Field(
        2.0, ge=0, lt=100, description="Non-inferiority margin of the always-valid accuracy "
        "interval since the canary started, in points.")
    mae_margin_percent: float | None = Field(
        5.0, ge=0, description="Regression: non-inferiority margin of the MAE difference, "
        "percent of the baseline's MAE.")
    accuracy_alpha: float = Field(
        0.05, gt=0, lt=1, description="Significance of the sequential accuracy and MAE tests.")
    srm_alpha: float | None = Field(
        0.001, gt=0, lt=1, description="The sample-ratio test fails below this p-value.")
    srm_grace_s: float = Field(
        5.0, ge=0, description="Seconds of each window still counted at the previous weights.")
    max_latency_shift: float | None = Field(
        None, gt=0, description="Most candidate/baseline latency ratio (Hodges-Lehmann; 1.2 = "
        "20 % slower) once Mann-Whitney says it is slower; off by default.")
    latency_alpha: float = Field(0.01, gt=0, lt=1, description="The latency test's level.")
    max_disagreement_percent: float | None = Field(
        20.0, ge=0, le=100, description="Most candidate rows the baseline labels otherwise "
        "(the Wilson interval must lie above it to fail).")
    max_label_shift_percent: float | None = Field(
        20.0, ge=0, le=100, description="Most total variation distance between the arms' "
        "predicted-label distributions, when a chi-square test says it is real.")
    label_shift_alpha: float = Field(
        0.001, gt=0, lt=1, description="The label-shift chi-square test's level.")
    min_compared: int = Field(
        50, ge=1, description="Baseline comparisons before the disagreement gate judges.")
    drift: bool = Field(
        False, description="The drift gate: fail a window while the candidate's drift window "
        "holds an alert (an input channel's PSI or KS, or its labels' JS distance, past the "
        "drift section's thresholds); skipped without a reference or enough rows.")

    @model_validator(mode="before")
    @classmethod
    def _no_fractions(cls, data: Any) -> Any:
        return _percent_instead(data, {v: k for k, v in GATE_PERCENT_FIELDS.items()})

    def gate_fields(self) -> dict[str, Any]:
        """GateConfig's keyword arguments: the percent fields as fractions."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if name in GATE_PERCENT_FIELDS:
                out[GATE_PERCENT_FIELDS[name]] = None if value is None else value / 100.0
            else:
                out[name] = value
        return out

    @classmethod
    def from_gate_fields(cls, fields: dict[str, Any]) -> CanaryGatesConfig:
        """The user's view (percent) of a GateConfig's fields (fractions)."""
        back = {v: k for k, v in GATE_PERCENT_FIELDS.items()}
        data = {back.get(k, k): (None if v is None else round(v * 100.0, 10))
                if k in back else v for k, v in fields.items()}
        return cls.model_validate(data)


class ReplayGateConfig(_Frozen):
    """A canary plan's replay gate ([monitoring](monitoring.md), "A replay gate in the canary
    plan"): before the candidate gets any traffic, the controller replays the prediction
    log's recent rows with it (`abserve replay`'s job, on the cluster) and starts the plan
    only when the candidate agrees with what was served."""

    log: str = Field(
        description="The prediction log's location, as `log.location`: a directory "
        "(relative to the config file; posted to the admin API, absolute) or a pyarrow URI "
        "such as s3://bucket/prefix.",
    )
    min_agreement_percent: float = Field(
        95.0, gt=0, le=100,
        description="Least share of the replayed rows, in percent, on which the candidate "
        "agrees with what was served (the same label; regression: values within the "
        "experiment's tolerance).",
    )
    min_rows: int = Field(
        100, ge=1, description="Least rows replayed; fewer refuse the plan (too little "
        "evidence).")
    since_hours: float = Field(
        24.0, gt=0, description="Replay only the rows logged in this many hours before the "
        "replay starts.")

    @field_validator("log")
    @classmethod
    def _log(cls, log: str) -> str:
        if not log.strip():
            raise ValueError("empty; write the prediction log's location (log.location): a "
                             "directory or a URI such as s3://bucket/prefix")
        return log


class CanaryPlanConfig(_Frozen):
    """A canary plan: one candidate ramped through traffic steps, each held for a window
    whose gates must pass. The body of `POST /admin/canary` and, declared in the config
    (`canary:`), started when that config revision is deployed."""

    candidate: str = Field(pattern=NAME_RE, description="The deployed version to ramp up.")
    baseline: str | None = Field(
        None, description="Must be the experiment's baseline; defaults to it.")
    steps: list[float] = Field(
        [5.0, 10.0, 25.0, 50.0, 100.0], min_length=1,
        description="The candidate's weight at each step, in percent; increasing, ending at "
        "100 (promotion).")
    interval_s: float = Field(300.0, ge=0, description="Seconds each step's window lasts, "
                              "at least.")
    min_requests: int = Field(500, ge=0, description="Candidate requests each window needs.")
    gates: CanaryGatesConfig = Field(default_factory=CanaryGatesConfig)  # type: ignore[arg-type]
    replay: ReplayGateConfig | None = Field(
        None,
        description="A replay gate: the plan waits, the candidate at 0 %, until the "
        "controller's replay of the prediction log with it passes; refused, the plan never "
        "starts. Null: no replay.",
    )

    @field_validator("steps")
    @classmethod
    def _steps_ramp_to_100(cls, steps: list[float]) -> list[float]:
        if any(not 0.0 < s <= 100.0 for s in steps):
            raise ValueError(f"each step is a percent in (0, 100], got {steps}")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"steps must increase strictly, got {steps}")
        if steps[-1] != 100.0:
            raise ValueError(f"the last step must be 100 (promotion), got {steps[-1]:g}")
        return steps

    @model_validator(mode="after")
    def _candidate_is_not_the_baseline(self) -> CanaryPlanConfig:
        if self.baseline is not None and self.candidate == self.baseline:
            raise ValueError(f"candidate: must differ from the baseline ({self.baseline!r})")
        return self

    def plan_fields(self, baseline: str) -> dict[str, Any]:
        """CanaryPlan.from_dict's input: the experiment's baseline filled in, gates as
        fractions."""
        return {"candidate": self.candidate, "baseline": self.baseline or baseline,
                "steps": list(self.steps), "interval_s": self.interval_s,
                "min_requests": self.min_requests, "gates": self.gates.gate_fields(),
                "replay": None if self.replay is None else self.replay.model_dump(mode="json")}


class FeedbackConfig(_Frozen):
    """How long served predictions wait for a ground-truth label (`POST /feedback`)."""

    ttl_s: float = Field(86_400, gt=0, description="How long a prediction accepts feedback.")
    max_entries: int = Field(
        1_000_000, ge=1, description="Most predictions remembered for feedback (oldest dropped)."
    )


class DriftConfig(_Frozen):
    """Data and prediction drift per version against its reference statistics
    (router/controlplane/drift.py; docs/monitoring.md)."""

    enabled: bool = Field(
        True,
        description="Bin the inputs and answers of every version that has reference "
        "statistics (reference.json from abserve train or register) and judge their drift; "
        "false sends and computes nothing.",
    )
    window_s: float = Field(
        300.0, gt=0, le=86_400,
        description="Length of the sliding window the drift statistics are computed over, "
        "in seconds; older rows age out.",
    )
    step_s: float = Field(
        10.0, gt=0, le=3600,
        description="Step of the sliding window in seconds: counts are kept in buckets of "
        "this length, so rows leave the window one bucket at a time.",
    )
    min_rows: int = Field(
        200, ge=1,
        description="Input rows a version's window needs before its drift is judged "
        "(fewer: 'warming up', no alert).",
    )
    psi_alert: float = Field(
        0.2, gt=0,
        description="Alert when a channel's population stability index against the "
        "reference exceeds this (0.1: watch, 0.25: shifted, by the usual rule).",
    )
    ks_alert: float = Field(
        0.1, gt=0, le=1,
        description="Alert when a channel's two-sample KS statistic (the largest gap between "
        "the window's and the reference's CDFs, from binned counts) exceeds this.",
    )
    label_js_alert: float = Field(
        0.1, gt=0, le=1,
        description="Alert when the Jensen-Shannon distance (base 2) of a version's "
        "predicted-label distribution from the reference's, or from the baseline's over the "
        "same window, exceeds this.",
    )
    max_pending_rows: int = Field(
        5_000, ge=1,
        description="Input rows a router replica holds for binning between two syncs (a "
        "sample under heavier load); beyond it, rows are not binned (counted as dropped), "
        "so memory stays bounded.",
    )

    @model_validator(mode="after")
    def _step_fits_window(self) -> DriftConfig:
        if self.step_s > self.window_s:
            raise ValueError(
                f"drift.step_s: {self.step_s:g} is longer than drift.window_s "
                f"{self.window_s:g}; write a step no longer than the window (e.g. a tenth)"
            )
        return self


class LogConfig(_Frozen):
    """The prediction log: served rows (or a sample) and feedback as Parquet files
    (docs/monitoring.md). Off by default."""

    enabled: bool = Field(False, description="Log served predictions and feedback.")
    location: str = Field(
        ".abserve/log",
        description="Where the files go: a directory (relative to the config file) or a "
        "pyarrow filesystem URI such as s3://bucket/prefix; under it "
        "<model>/predictions/ and <model>/feedback/, partitioned by date and hour (UTC).",
    )
    sample_percent: float = Field(
        100.0, gt=0, le=100,
        description="Share of requests logged, in percent (as weights), decided by a hash of "
        "the request id (the same on every replica).",
    )
    sample_percent_by_experiment: dict[str, float] = Field(
        default_factory=dict,
        description="Per experiment name, a share in percent that replaces `sample_percent` "
        "while that experiment runs.",
    )
    inputs: bool = Field(
        True,
        description="Log each input row itself; false keeps only its sha256 digest and "
        "shape (for privacy).",
    )
    flush_interval_s: float = Field(
        10.0, gt=0, le=3600,
        description="How often a router writes what it buffered; a crash loses at most "
        "this much plus the buffer.",
    )
    max_buffer_rows: int = Field(
        100_000, ge=1,
        description="Most rows a router buffers between writes; past it rows are dropped "
        "and counted (the request is never held).",
    )
    max_file_rows: int = Field(
        50_000, ge=1,
        description="Most rows per file; a router writes as soon as this many wait.",
    )
    retention_hours: float | None = Field(
        168.0, gt=0,
        description="Hour partitions older than this are deleted by the routers; null "
        "keeps every file.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_fractions(cls, data: Any) -> Any:
        return _percent_instead(
            data, {"sample": "sample_percent",
                   "sample_by_experiment": "sample_percent_by_experiment"}
        )

    @field_validator("sample_percent_by_experiment")
    @classmethod
    def _percents(cls, percents: dict[str, float]) -> dict[str, float]:
        for name, percent in percents.items():
            if not 0 < percent <= 100:
                raise ValueError(
                    f"{name!r}: {percent} is not a share in percent; write a number greater "
                    "than 0 and at most 100"
                )
        return percents

    @property
    def sample(self) -> float:
        """sample_percent as a fraction (0..1), for the writer's hash."""
        return self.sample_percent / 100.0

    @property
    def sample_by_experiment(self) -> dict[str, float]:
        """sample_percent_by_experiment as fractions (0..1)."""
        return {k: v / 100.0 for k, v in self.sample_percent_by_experiment.items()}

    @field_validator("location")
    @classmethod
    def _location(cls, location: str) -> str:
        if not location.strip():
            raise ValueError(
                "empty; write a directory (relative to the config) or a URI such as "
                "s3://bucket/prefix"
            )
        return location


class CacheConfig(_Frozen):
    """The prediction cache in Redis (or an in-process LRU when there is none)."""

    enabled: bool = Field(True, description="Cache predictions keyed by version and input.")
    redis_url: str | None = Field(
        None,
        description="redis://[user:password@]host:port/db, or rediss:// for TLS; a Redis "
        "Cluster as redis+cluster://host:port[,host:port...] (rediss+cluster:// for TLS; "
        "look-ups batched per hash slot, docs/serving.md) (or the "
        "environment variable ABSERVE_REDIS_URL, which keeps the password out of the file). "
        "The password is redacted wherever the URL is shown. Empty: `abserve up` starts a "
        "local redis-server, or falls back to an in-process LRU cache when redis-server is "
        "not installed.",
    )
    managed_maxmemory_mb: int = Field(
        512,
        ge=1,
        description="The memory bound (maxmemory) of the redis-server `abserve up` starts "
        "when redis_url is empty: past it the cache evicts (managed_eviction) instead of "
        "growing until the node runs out. A cached row of 8 probabilities takes about 490 "
        "bytes (measured), so 512 MB holds about a million. For a Redis of your own, set its "
        "maxmemory and a policy that evicts; `abserve up` warns when it would not.",
    )
    managed_eviction: Literal["allkeys-lru", "allkeys-lfu", "volatile-lru", "volatile-ttl"] = (
        Field("allkeys-lru", description="The managed redis-server's maxmemory-policy: which "
              "keys go first past the bound (every cached key has a TTL, so volatile-* evict "
              "too)."))
    tls_ca_file: str | None = Field(
        None, description="rediss://: CA bundle that signed the server's certificate."
    )
    tls_cert_file: str | None = Field(
        None, description="rediss://: client certificate, when the server asks for one."
    )
    tls_key_file: str | None = Field(None, description="rediss://: the client certificate's key.")
    tls_verify: Literal["required", "optional", "none"] = Field(
        "required", description="rediss://: verify the server's certificate (redis-py's "
        "ssl_cert_reqs); 'none' only for tests."
    )
    ttl_s: int = Field(3600, ge=1, description="Time to live of a cached prediction.")
    key_prefix: str = Field(
        "abserve", pattern=r"^[A-Za-z0-9._:-]{1,64}$",
        description="Prefix of every cache key, to share one Redis between applications.",
    )
    timeout_ms: float = Field(
        50.0, gt=0, le=10_000, description="Most time one request spends on Redis."
    )
    retry_after_s: float = Field(
        1.0, ge=0, description="After a Redis failure, skip Redis (bypass) for this long."
    )
    max_connections: int = Field(64, ge=1, description="Redis connection pool size per router.")
    local_max_entries: int = Field(10_000, ge=1, description="Size of the in-process LRU cache.")


class HttpConfig(_Frozen):
    """The HTTP endpoint: address, limits, header names, Serve's ingress mode."""

    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Larger bodies get 413.")
    max_batch_instances: int = Field(256, ge=1, description="Most instances per /predict/batch.")
    user_key_header: str = Field("X-User-Id", description="Header that makes assignment sticky.")
    version_header: str = Field("X-Model-Version", description="Header that pins a version.")
    ingress: Literal["throughput", "default"] = Field(
        "throughput",
        description="Ray Serve ingress mode set when the Ray cluster starts: 'throughput' = "
        "RAY_SERVE_THROUGHPUT_OPTIMIZED + HAProxy; 'default' = Serve's Python proxy.",
    )
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode",
        description="Where Serve runs its HTTP proxies: on every node, or only on the head "
        "(needed when several Ray nodes share one machine, and so one port).",
    )
    grpc_port: int | None = Field(
        None, ge=1, le=65535,
        description="Port of Serve's gRPC ingress for the Open Inference Protocol's gRPC "
        "service (KServe V2 `inference.GRPCInferenceService`: tritonclient.grpc, KServe's "
        "clients), with the same split, stickiness, cache and fallback as REST; null: no "
        "gRPC. With several applications a client names its own in the `application` "
        "metadata key (docs/serving.md).",
    )
    route_prefix: str = Field(
        "/",
        description="Where this config's Serve application answers. `/`: the default "
        "model, whose routes (`/predict`, `/v2/...`, `/admin/...`) answer at the root and "
        "under `/models/<model>` too; `/models/<model>` (this config's model name): a "
        "further model beside it (`abserve up -c a.yaml -c b.yaml`), every route under "
        "that prefix. The applications share the cluster's one HTTP proxy, so configs "
        "deployed side by side agree on host, port, ingress and proxy_location.",
    )

    @field_validator("route_prefix")
    @classmethod
    def _check_route_prefix(cls, value: str) -> str:
        if value == "/" or re.fullmatch(MODEL_ROUTE_RE, value):
            return value
        raise ValueError(
            f"{value!r} is not allowed: use '/' (the default model) or '/models/<model>' "
            "with this config's model name, e.g. '/models/sales' (no trailing slash)"
        )


class RouterConfig(_Replicas):
    """The router (ingress) deployment: replicas, load shedding, batching of calls to the
    versions.
    """

    num_replicas: int = Field(1, ge=1, description="Router (ingress) replicas.")
    num_cpus: float = Field(0.25, gt=0, description="CPUs per router replica.")
    max_ongoing_requests: int = Field(1000, ge=1, description="Concurrent requests per router.")
    max_inflight: int | None = Field(
        512, ge=1,
        description="Prediction requests one router replica admits at once; above it the router "
        "answers 503 with Retry-After at once, before reading the body (load shedding). Must be "
        "below max_ongoing_requests, so it acts before Serve queues. null: no limit.",
    )
    max_inflight_per_key: int | None = Field(
        None, ge=1,
        description="Prediction requests in flight per user key (http.user_key_header) per "
        "router replica; above it 429 with Retry-After. null: no per-key limit.",
    )
    retry_after_s: float = Field(
        1.0, gt=0, le=3600, description="Retry-After of shed requests (rounded up to seconds)."
    )
    max_queued_requests: int = Field(
        256, ge=-1,
        description="Serve's own queue in front of each router replica; beyond it Serve answers "
        "503 with Retry-After (backstop behind max_inflight). -1 = unbounded.",
    )
    batch_max_rows: int = Field(
        64, ge=1, le=4096, description="Rows the router merges into one call to a version."
    )
    batch_in_flight_per_replica: int = Field(
        1, ge=0, le=64,
        description="Calls the router keeps out at once per running replica of a version; "
        "while they are out, new requests gather into the next call, which goes when one "
        "returns (batches grow with load, a lone request waits for nothing). 0: merge by "
        "time instead (batch_wait_ms, adaptive_batch_wait).",
    )
    batch_wait_ms: float = Field(
        10.0, ge=0, le=100,
        description="Longest the router holds a call to merge more: while the version is "
        "busy (batch_in_flight_per_replica > 0), or always (batch_in_flight_per_replica 0); "
        "0 ms = the next loop turn. A hold counts against the version's timeout_ms.",
    )
    adaptive_batch_wait: bool = Field(
        True,
        description="With batch_in_flight_per_replica 0: hold a call only while that "
        "version's requests arrive closer together than batch_wait_ms; false: always hold.",
    )
    shadow_batch_wait_ms: float = Field(
        50.0, ge=0, le=1000,
        description="Longest a shadow copy waits to be merged with others: fewer, larger "
        "calls cost the router and the shadow's replica less CPU, and nobody waits for them.",
    )
    probe_timeout_s: float = Field(
        2.0, gt=0, le=30,
        description="How long /ready, /v2/health/ready and /stats wait for each version.",
    )
    metrics_flush_s: float = Field(
        1.0, gt=0, le=10,
        description="How often a router replica hands its counts to Ray's metric objects "
        "(Ray exports every 10 s; shorter only costs CPU).",
    )
    latency_samples_per_s: int = Field(
        200, ge=0,
        description="Request latencies per second that reach the latency histograms "
        "(abserve_request_latency_ms), a uniform sample; counts stay exact. Each one costs "
        "the router ~10-50 us of CPU (about 6 % of the cache-hit path's CPU at 1,000 req/s "
        "when every request was recorded). 0: every request.",
    )
    access_log: bool = Field(
        False,
        description="Ray Serve's access log line per request, for the router and the model "
        "deployments (Serve's own logs and metrics are unaffected). Off: about 2 % of the "
        "router's CPU per request saved; on: one INFO line per request and per model call.",
    )
    colocated_max_busy: float = Field(
        0.5, gt=0, le=1,
        description="Largest share of time a colocated copy computes: it shares the router's "
        "Python interpreter lock with the event loop, and computing back to back under "
        "overload would starve parsing, the cache and load shedding. After a call of d "
        "seconds the next call waits d * (1 - share) / share (asynchronously: the router's "
        "batcher gathers the requests behind it into one bigger call). 1: no rest.",
    )
    colocate_max_artifact_mb: float = Field(
        256.0, ge=0,
        description="Largest artifact (on disk) that `colocated: null` puts inside the router "
        "replicas; every router replica holds a copy of each colocated model in memory.",
    )
    autoscaling: AutoscalingConfig | None = Field(
        None, description="Scale the router's replicas with load (instead of num_replicas)."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per router replica, e.g. to keep it on the head.",
    )

    _custom_resources = field_validator("resources")(_check_custom_resources)

    @model_validator(mode="after")
    def _shed_before_serve_queues(self) -> RouterConfig:
        if self.max_inflight is not None and self.max_inflight >= self.max_ongoing_requests:
            raise ValueError(
                f"max_inflight ({self.max_inflight}) must be below max_ongoing_requests "
                f"({self.max_ongoing_requests}), or the router never sheds load itself; "
                "lower max_inflight or raise max_ongoing_requests"
            )
        return self


class AdminConfig(_Frozen):
    """The admin API (`/admin`): where its bearer token comes from."""

    token_file: str | None = Field(
        None,
        description="File holding the admin bearer token; else the environment variable "
        "ABSERVE_ADMIN_TOKEN. Neither: the /admin routes are disabled.",
    )


class StateConfig(_Frozen):
    """The experiment controller's durable state and the routers' polling of it."""

    dir: str = Field(
        ".abserve/state",
        description="Directory of the durable experiment state and audit log (relative to the "
        "config file); on a multi-node cluster, the head node's disk.",
    )
    poll_interval_s: float = Field(
        0.5, gt=0, le=1.5, description="How often routers check for a new revision."
    )
    sync_timeout_s: float = Field(
        2.0, gt=0, le=60,
        description="How long a router waits for the controller on one poll or one admin "
        "call before it keeps serving the state it has.",
    )
    first_sync_timeout_s: float = Field(
        10.0, gt=0, le=300,
        description="How long a router's first request waits for the controller's state; "
        "past it the router serves the config's weights and keeps polling.",
    )
    max_pending_served: int = Field(
        100_000, ge=1000,
        description="Served predictions a router keeps for the feedback join while the "
        "controller is unreachable; the oldest are dropped first.",
    )
    canary_tick_s: float = Field(
        1.0, gt=0, le=60, description="How often the controller evaluates a running canary."
    )


class ClusterConfig(_Frozen):
    """The Ray cluster `abserve up` deploys onto, or starts."""

    address: str | None = Field(
        None, description="Existing Ray cluster to deploy onto; empty starts a local one."
    )
    num_cpus: int | None = Field(None, ge=1, description="Logical CPUs of a local cluster.")
    gcs_port: int = Field(
        6385, ge=1, le=65535, description="GCS port of a local cluster (not Redis' 6379)."
    )
    dashboard_host: str = Field("127.0.0.1", description="Ray dashboard bind address.")
    dashboard_port: int = Field(8265, ge=1, le=65535, description="Ray dashboard port.")


class AbserveConfig(_Frozen):
    """The top level of the file."""

    app_name: str = Field("abserve", pattern=NAME_RE, description="Ray Serve application name.")
    model: str = Field("activity", pattern=NAME_RE, description="Registered model name.")
    registry: str = Field("registry", description="Registry directory (relative to the config).")
    models: list[ModelConfig] = Field(min_length=1, description="Deployed versions.")
    experiment: ExperimentConfig
    cache: CacheConfig = Field(default_factory=CacheConfig)  # type: ignore[arg-type]
    http: HttpConfig = Field(default_factory=HttpConfig)  # type: ignore[arg-type]
    router: RouterConfig = Field(default_factory=RouterConfig)  # type: ignore[arg-type]
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)  # type: ignore[arg-type]
    admin: AdminConfig = Field(default_factory=AdminConfig)  # type: ignore[arg-type]
    state: StateConfig = Field(default_factory=StateConfig)  # type: ignore[arg-type]
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)  # type: ignore[arg-type]
    canary: CanaryPlanConfig | None = Field(
        None,
        description="A canary plan declared with the config: it starts when this config "
        "revision is deployed and, like every live change, gives way to the next revision "
        "([experiments](experiments.md), \"The config file is the desired state\").",
    )
    log: LogConfig = Field(default_factory=LogConfig)  # type: ignore[arg-type]
    drift: DriftConfig = Field(default_factory=DriftConfig)  # type: ignore[arg-type]

    @field_validator("models")
    @classmethod
    def _unique_versions(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        versions = [m.version for m in models]
        dupes = sorted({v for v in versions if versions.count(v) > 1})
        if dupes:
            raise ValueError(f"version(s) {dupes} listed twice")
        return models

    @model_validator(mode="after")
    def _arms_are_deployed(self) -> AbserveConfig:
        deployed = {m.version for m in self.models}
        for i, shadow in enumerate(self.experiment.shadows):
            if shadow.version not in deployed:
                raise ValueError(
                    f"experiment.shadows.{i}.version: unknown version {shadow.version!r}; "
                    f"deployed versions are {sorted(deployed)}"
                )
        for i, arm in enumerate(self.experiment.arms):
            if arm.version not in deployed:
                raise ValueError(
                    f"experiment.arms.{i}.version: unknown version {arm.version!r}; "
                    f"deployed versions are {sorted(deployed)}"
                )
        return self

    @model_validator(mode="after")
    def _canary_fits_the_experiment(self) -> AbserveConfig:
        plan = self.canary
        if plan is None:
            return self
        deployed = sorted(m.version for m in self.models)
        if plan.candidate not in deployed:
            raise ValueError(f"canary.candidate: unknown version {plan.candidate!r}; deployed "
                             f"versions are {deployed}")
        baseline = self.experiment.baseline
        if plan.baseline not in (None, baseline):
            raise ValueError(f"canary.baseline: {plan.baseline!r} is not the experiment's "
                             f"baseline {baseline!r}; leave it out or write {baseline!r}")
        if plan.candidate == baseline:
            raise ValueError(f"canary.candidate: {baseline!r} is the experiment's baseline; "
                             "name a candidate")
        return self

    @model_validator(mode="after")
    def _route_prefix_names_this_model(self) -> AbserveConfig:
        prefix = self.http.route_prefix
        if prefix != "/" and prefix != model_route_prefix(self.model):
            raise ValueError(
                f"http.route_prefix: {prefix!r} names another model than this config's "
                f"{self.model!r}; use {model_route_prefix(self.model)!r} (or '/' for the "
                "default model)"
            )
        return self

    def model_config_for(self, version: str) -> ModelConfig:
        for m in self.models:
            if m.version == version:
                return m
        raise KeyError(version)

    def registry_path(self, base: Path | None = None) -> Path:
        path = Path(self.registry)
        if not path.is_absolute() and base is not None:
            path = base / path
        return path.resolve()


def format_validation_errors(exc: ValidationError) -> str:
    """One line per error, each naming its field by dotted path."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        if re.match(r"[A-Za-z_][\w.]*: ", msg) and err["type"] == "value_error":
            # a validator names its own field (a check across sections: the whole path)
            lines.append(f"{loc}.{msg}" if err["loc"] else msg)
            continue
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def first_error_field(exc: ValidationError) -> str | None:
    """The dotted path of the first error's field (an InvalidInput's ``field``); a validator
    whose message starts with a field's name (``share: ...``) names it below the path."""
    errors = exc.errors()
    if not errors:
        return None
    parts = [str(p) for p in errors[0]["loc"]]
    named = re.match(r"(?:Value error, )?([A-Za-z_][\w.]*): ", errors[0]["msg"])
    if named and errors[0]["type"] == "value_error":
        parts.append(named.group(1))
    return ".".join(parts) or None


def parse_config(data: Any) -> AbserveConfig:
    """Validate a mapping; raise ConfigError naming every bad field."""
    if not isinstance(data, dict):
        raise ConfigError("config: the top level must be a mapping")
    try:
        return AbserveConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(exc)) from None


def load_config(path: str | Path) -> AbserveConfig:
    """Read and validate a YAML config; the registry path is made absolute."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    config = parse_config(data)
    base = path.parent.resolve()
    update: dict[str, Any] = {
        "registry": str(config.registry_path(base)),
        "state": config.state.model_copy(update={"dir": str((base / config.state.dir).resolve())}),
    }
    if "://" not in config.log.location:
        location = str((base / config.log.location).resolve())
        update["log"] = config.log.model_copy(update={"location": location})
    plan = config.canary
    if plan is not None and plan.replay is not None and "://" not in plan.replay.log:
        gate = plan.replay.model_copy(update={"log": str((base / plan.replay.log).resolve())})
        update["canary"] = plan.model_copy(update={"replay": gate})  # the gate reads the log
    if config.admin.token_file:
        token_file = (base / config.admin.token_file).resolve()
        update["admin"] = config.admin.model_copy(update={"token_file": str(token_file)})
    return config.model_copy(update=update)


def model_route_prefix(model: str) -> str:
    """The route prefix of a model beside the default one (and an alias of the default's)."""
    return f"{MODELS_ROUTE}{model}"


# What only the first config of `abserve up -c a.yaml -c b.yaml` decides (it starts the
# cluster and its one HTTP proxy); a later config must agree or say nothing.
_SHARED_HTTP = ("host", "port", "grpc_port", "ingress", "proxy_location")

# The OIP gRPC service's servicer function, which Serve's gRPC proxy (and, in the
# throughput mode, every router replica's own gRPC server) imports by path on each node.
GRPC_SERVICER = ("router.protocol.v2grpc.grpc_predict_v2_pb2_grpc."
                 "add_GRPCInferenceServiceServicer_to_server")


def grpc_options(port: int | None) -> dict[str, Any] | None:
    """Serve's ``grpc_options`` for ``http.grpc_port`` (None: no gRPC ingress)."""
    if port is None:
        return None
    return {"port": port, "grpc_servicer_functions": [GRPC_SERVICER]}


def side_by_side_problems(configs: Sequence[tuple[str, AbserveConfig]]) -> list[str]:
    """Why ``configs`` (each with the file it came from) cannot run side by side on one
    cluster, one sentence each; [] when they can. Each config is its own Serve
    application, so names, models and route prefixes must differ; the cluster and its
    HTTP proxy are one, so the settings that start them must agree."""
    problems: list[str] = []
    if not configs:
        return problems
    first_name, first = configs[0]
    seen: dict[str, dict[Any, str]] = {"app_name": {}, "model": {}, "http.route_prefix": {}}
    for i, (name, config) in enumerate(configs):
        for key, value in (("app_name", config.app_name), ("model", config.model),
                           ("http.route_prefix", config.http.route_prefix)):
            other = seen[key].get(value)
            if other is not None:
                problems.append(
                    f"{name}: {key} {value!r} is also {other}'s; each config is its own "
                    "Serve application: give each its own app_name, model and "
                    "route_prefix ('/' for one, '/models/<model>' for the others)"
                )
            seen[key].setdefault(value, name)
        if i == 0:
            continue
        for key in _SHARED_HTTP:
            mine, theirs = getattr(config.http, key), getattr(first.http, key)
            if mine != theirs:
                problems.append(
                    f"{name}: http.{key} {mine!r} differs from {first_name}'s {theirs!r}; "
                    "the applications share the cluster's one HTTP proxy, which the first "
                    f"config sets up: set the same http.{key} or leave it out"
                )
        if config.cluster != first.cluster:
            problems.append(
                f"{name}: its cluster section differs from {first_name}'s, which starts "
                "(or names) the cluster they share: make it the same or leave it out"
            )
    return problems


def sanitize_name(value: str) -> str:
    """Deployment-safe name from a version string."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", value)


def model_deployment_name(model: str, version: str) -> str:
    """The Serve deployment of one model version (the router's colocated copy names it too)."""
    return sanitize_name(f"{model}-{version}")
