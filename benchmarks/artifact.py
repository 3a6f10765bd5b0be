"""The reference variants' model: the registered v1 artifact, loaded as a user would.

(a), (b) and (f) are the un-optimised references: they call the estimator's own
``predict_proba`` on the ``joblib.load`` of the artifact, never abserve's
backend (deployments/backends), whatever that backend does to be faster. The
artifact's sha256 is still checked first (``Registry.verified_artifact``):
joblib is pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_estimator", "reference_artifact", "small_registry"]


def reference_artifact(registry_root: str | Path, model: str = "activity",
                       version: str = "v1") -> tuple[Path, list[str]]:
    """The verified artifact's path and its class labels, for an sklearn version."""
    from models.registry import Registry

    registry = Registry(registry_root)
    manifest = registry.manifest(model, version)
    if manifest.framework != "sklearn":
        raise ValueError(f"{model} {version} is {manifest.framework}; the reference "
                         "variants serve a scikit-learn joblib artifact")
    return registry.verified_artifact(manifest), list(manifest.class_labels)


def load_estimator(registry_root: str | Path, model: str = "activity",
                   version: str = "v1") -> tuple[Any, list[str]]:
    """``(estimator, labels)``: labels in the order of ``estimator.predict_proba``'s columns."""
    import joblib

    path, labels = reference_artifact(registry_root, model, version)
    estimator = joblib.load(path)
    # The demo's classes are label indices; name predict_proba's columns by them.
    return estimator, [labels[int(c)] for c in estimator.classes_]


def small_registry(registry: str | None, tmp: str | Path) -> str:
    """``registry``, or a small one (activity v1 and v2) trained under ``tmp``: the smaller
    measurements' ``--registry`` default (benchmarks/call_cost.py, control_plane.py)."""
    if registry is not None:
        return registry
    from models.activity.train import train_all

    root = Path(tmp) / "registry"
    train_all(root, n_train=1500, n_test=300, quiet=True, versions=("v1", "v2"))
    return str(root)
