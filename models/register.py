"""Registering a user's own model file: validation of the framework-specific arguments and
of the declared output kind against the artifact itself.

No framework is imported at module level. A scikit-learn artifact is loaded once here,
from a private copy whose bytes are the ones registered: its estimator must fit the kind
(a classifier with ``predict_proba`` for multiclass and binary, exactly two classes for
binary, a non-classifier with ``predict`` for regression), its output on the verification
inputs must convert to the kind's ``(n, width)`` batch, and its inference path
(``models.forest``) is chosen and recorded on the verification windows saved beside it
(``verify.npy``).

``load`` (the serving backend's loader, ``deployments.backends.load_backend``; the CLI
passes it) loads that private copy the way a replica will and runs it on the verification
inputs, for every framework: a torch or Keras net whose output does not fit its kind (a
3-wide output declared binary, say) is refused here, with the reason. This module may not
import the backends itself (they are a layer above: docs/architecture.md), so without
``load`` torch and Keras artifacts are only copied and hashed, as before kinds.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.kinds import (
    BINARY,
    DEFAULT_OUTPUTS,
    KINDS,
    MULTICLASS,
    REGRESSION,
    OutputSpec,
    kind_problems,
)
from models.outputs import LOGITS, OUTPUT_FORMS, PROBABILITIES, VALUES, default_output, to_outputs
from models.reference import REFERENCE_FILE
from models.registry import Manifest, Registry, sha256_file
from models.verify import (
    VERIFY_FILE,
    probe_rows,
    probe_windows,
    sample_windows,
    write_windows,
)
from serve.errors import AbserveError, ArtifactError, InvalidInput

__all__ = ["FRAMEWORK_ALIASES", "OUTPUTS", "Loader", "register_user_model"]

log = logging.getLogger(__name__)

FRAMEWORK_ALIASES: dict[str, str] = {
    "sklearn": "sklearn",
    "scikit-learn": "sklearn",
    "torch": "torch",
    "pytorch": "torch",
    "tensorflow": "tensorflow",
    "tf": "tensorflow",
    "keras": "tensorflow",
}
OUTPUTS = OUTPUT_FORMS
_SUFFIXES = {
    "sklearn": (".joblib", ".pkl", ".pickle"),
    "torch": (".pt", ".pth"),
    "tensorflow": (".keras",),
}
_MODULE_CLASS = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")

# (manifest, artifact) -> a loaded backend with predict(batch) -> (n, width) outputs.
Loader = Callable[[Manifest, Path], Any]


def register_user_model(
    registry: Registry,
    name: str,
    version: str,
    framework: str,
    path: str | Path,
    *,
    input_shape: Sequence[int] | None = None,
    class_labels: Sequence[str] = (),
    torch_class: str | None = None,
    init_kwargs: dict[str, Any] | None = None,
    output: str | None = None,
    description: str = "",
    overwrite: bool = False,
    verify_windows: Any = None,
    kind: str = MULTICLASS,
    threshold: float | None = None,
    outputs: Sequence[str] | None = None,
    input_schema: Sequence[Mapping[str, Any]] | None = None,
    load: Loader | None = None,
    reference_data: Any = None,
) -> Manifest:
    """Register a model file trained outside abserve.

    - sklearn: a joblib/pickle file of a fitted estimator: a classifier with
      ``predict_proba`` (multiclass, binary) or a regressor with ``predict`` (regression).
    - torch: a ``state_dict`` file (``torch.save(model.state_dict(), path)``) plus
      ``torch_class="pkg.module:Class"`` and the ``init_kwargs`` to build it; whole
      pickled modules are refused because they are loaded with ``weights_only=True``.
    - tensorflow / keras: a ``.keras`` file (``model.save("m.keras")``).

    ``kind``: ``multiclass`` (``class_labels``, two or more), ``binary`` (``class_labels``
    negative, positive; ``threshold`` on the positive score, default 0.5) or ``regression``
    (``outputs`` names its values, default ``("value",)``; no class_labels).
    ``output``: what the raw numbers are, ``probabilities`` (default for classifiers) or
    ``logits`` (torch / Keras), ``values`` (regression, its only form).

    ``input_schema``: a tabular model's fields (``models.schema``: name, dtype, categories,
    ...); its rows are float64 ``(n, len(input_schema))`` and ``input_shape`` follows from
    it. Without it, ``input_shape`` is required: one instance's tensor shape.

    ``verify_windows``: held-out inputs (an array or a ``.npy`` path; for a tabular model
    also a DataFrame of the schema's columns) on which a faster inference path must match
    the plain one; the first 64 are saved beside the artifact. Without them a scikit-learn
    model is verified on a seeded probe set (saved the same way) and torch / Keras models
    at load only.

    ``load``: see the module docstring; an artifact that ``load`` cannot load, or whose
    output does not fit the kind, is refused (InvalidInput saying why).

    ``reference_data``: data like the model's training data (an array ``(n, *input_shape)``
    or a ``.npy`` path; for a tabular model a DataFrame of the schema's columns): its
    reference statistics (models/reference.py: per channel a histogram, quantiles, mean,
    std; with ``load``, the distribution of the model's own answers on it) are registered
    beside the artifact as ``reference.json``, what drift is judged against. Without it the
    version has no reference and no drift is computed for it.
    """
    fw = FRAMEWORK_ALIASES.get(str(framework).lower())
    if fw is None:
        raise InvalidInput(
            f"unknown framework {framework!r}; use one of sklearn, torch, tensorflow (keras)",
            field="framework",
        )
    source = Path(path)
    if not source.is_file():
        raise InvalidInput(f"model file {source} does not exist or is not a file", field="path")
    suffix = source.suffix.lower()
    if suffix not in _SUFFIXES[fw]:
        raise InvalidInput(
            f"a {fw} model file must end in {' or '.join(_SUFFIXES[fw])}, got {source.name!r}",
            field="path",
        )
    spec, form = _declared_kind(kind, class_labels, threshold, outputs, output, fw)
    schema = _parse_schema(input_schema)
    shape = _input_shape(input_shape, schema)
    dtype = np.float64 if schema is not None else np.float32

    extra: dict[str, Any] = {"output": form}
    if fw == "torch":
        if not torch_class or not _MODULE_CLASS.fullmatch(torch_class):
            raise InvalidInput(
                "a torch model needs torch_class='package.module:ClassName' naming an importable "
                f"nn.Module subclass; got {torch_class!r}",
                field="torch_class",
            )
        if init_kwargs is not None and not isinstance(init_kwargs, dict):
            raise InvalidInput(
                "init_kwargs must be a dict of keyword arguments", field="init_kwargs"
            )
        extra.update(module_class=torch_class, init_kwargs=dict(init_kwargs or {}))
    else:
        if torch_class is not None or init_kwargs is not None:
            raise InvalidInput(
                f"torch_class and init_kwargs apply to torch models only, not {fw}",
                field="torch_class",
            )
        if fw == "tensorflow" and not zipfile.is_zipfile(source):
            raise InvalidInput(
                f"{source} is not a Keras v3 .keras archive; save it with model.save('m.keras')",
                field="path",
            )
    reference_rows = (None if reference_data is None
                      else _reference_inputs(reference_data, shape, schema))
    windows = _windows(verify_windows, shape, schema)
    schema_json = None if schema is None else schema.to_json()
    with tempfile.TemporaryDirectory(prefix="abserve-register-") as tmp:
        attachments: dict[str, Path] = {}
        if windows is not None or fw == "sklearn":
            source_kind = "held-out" if windows is not None else "probe"
            if windows is None:
                windows = _probe(shape, schema)
            attachments[VERIFY_FILE] = write_windows(Path(tmp) / VERIFY_FILE, windows, dtype)
            extra["verify_windows"] = {
                "file": VERIFY_FILE, "rows": int(len(windows)), "source": source_kind,
            }
        inputs = windows if windows is not None else _probe(shape, schema)
        if fw == "sklearn" or load is not None:
            # Load a private copy: what is checked is what gets hashed and registered.
            copy = Path(tmp) / ("model" + suffix)
            shutil.copyfile(source, copy)
            source = copy
        if fw == "sklearn":
            from models.forest import registration_extra

            _check_estimator(source, spec, form, inputs, shape, extra, schema_json)
            extra.update(registration_extra(source, shape, extra, inputs, kind=spec.kind,
                                            input_schema=schema_json))
        if load is not None:
            provisional = Manifest(
                name=name, version=version, framework=fw, input_shape=shape,
                input_dtype="float64" if schema is not None else "float32",
                class_labels=spec.class_labels, accuracy=None, training_time_s=None,
                created_at="", artifact=source.name, sha256=sha256_file(source),
                extra={**extra, "attachments": {n: sha256_file(p)
                                                for n, p in attachments.items()}},
                description=description, kind=spec.kind, threshold=threshold,
                outputs=spec.outputs, input_schema=None if schema_json is None
                else tuple(schema_json),
            )
            backend = _check_loaded(load, provisional, source, inputs)
        else:
            backend = None
        if reference_rows is not None:
            attachments[REFERENCE_FILE] = _reference(
                reference_rows, shape, schema, spec, backend, Path(tmp) / REFERENCE_FILE)
        return registry.register(
            name,
            version,
            fw,
            source,
            input_shape=shape,
            input_dtype="float64" if schema is not None else "float32",
            class_labels=spec.class_labels,
            extra=extra,
            description=description,
            overwrite=overwrite,
            attachments=attachments,
            kind=spec.kind,
            threshold=threshold,
            outputs=spec.outputs,
            input_schema=schema_json,
        )


def _declared_kind(
    kind: str, class_labels: Sequence[str], threshold: float | None,
    outputs: Sequence[str] | None, output: str | None, fw: str,
) -> tuple[OutputSpec, str]:
    """The output spec and raw output form declared, or InvalidInput naming the argument."""
    if kind not in KINDS:
        raise InvalidInput(f"kind must be one of {list(KINDS)}, got {kind!r}", field="kind")
    labels = tuple(str(c) for c in class_labels)
    names = tuple(outputs) if outputs is not None else (
        DEFAULT_OUTPUTS if kind == REGRESSION else ())
    for problem in kind_problems(kind, labels, threshold, names):
        field = ("threshold" if "threshold" in problem else
                 "class_labels" if "class_labels" in problem else "outputs")
        raise InvalidInput(problem, field=field)
    form = output or default_output(kind)
    if form not in OUTPUT_FORMS:
        raise InvalidInput(
            f"output must be one of {list(OUTPUT_FORMS)}, got {form!r}", field="output"
        )
    if kind == REGRESSION and form != VALUES:
        raise InvalidInput(
            f"a regression model's output is 'values' (served as they are), not {form!r}",
            field="output",
        )
    if kind != REGRESSION and form not in (PROBABILITIES, LOGITS):
        raise InvalidInput(
            f"a {kind} model's output is 'probabilities' or 'logits', not {form!r}",
            field="output",
        )
    if fw == "sklearn" and kind != REGRESSION and form != PROBABILITIES:
        raise InvalidInput(
            "sklearn classifiers are served through predict_proba, so output must be "
            "'probabilities'",
            field="output",
        )
    try:
        spec = OutputSpec.of(kind, labels, threshold, names)
    except ValueError as exc:  # kind_problems said nothing; keep the reason if it does
        raise InvalidInput(str(exc), field="kind") from exc
    return spec, form


def _parse_schema(input_schema: Sequence[Mapping[str, Any]] | None) -> Any:
    if input_schema is None:
        return None
    from models.schema import Schema

    try:
        return Schema.parse([dict(f) for f in input_schema])
    except InvalidInput:
        raise
    except (ArtifactError, TypeError, ValueError) as exc:
        message = exc.message if isinstance(exc, AbserveError) else str(exc)
        raise InvalidInput(message, field="input_schema") from exc


def _input_shape(input_shape: Sequence[int] | None, schema: Any) -> tuple[int, ...]:
    """One instance's shape: the schema's width for a tabular model, else ``input_shape``."""
    if schema is not None:
        width = (int(schema.width),)
        if input_shape is not None and tuple(input_shape) != width:
            raise InvalidInput(
                f"a tabular model's rows have its {width[0]} schema fields; input_shape "
                f"{tuple(input_shape)} contradicts that (leave it out)",
                field="input_shape",
            )
        return width
    if input_shape is None:
        raise InvalidInput(
            "a tensor model needs input_shape (one instance's shape, e.g. (50, 9)); a tabular "
            "model needs input_schema instead",
            field="input_shape",
        )
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InvalidInput(
            f"input_shape must be positive integers per instance, e.g. (50, 9); got {shape}",
            field="input_shape",
        )
    return shape


def _probe(shape: tuple[int, ...], schema: Any) -> np.ndarray:
    """The seeded probe inputs: valid rows of the schema, or windows of the shape."""
    return probe_rows(schema.fields) if schema is not None else probe_windows(shape)


def _windows(given: Any, shape: tuple[int, ...], schema: Any) -> np.ndarray | None:
    if given is None:
        return None
    if isinstance(given, str | Path):
        try:
            given = np.load(given, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"cannot read verification windows {given}: {exc}", field="verify_windows"
            ) from exc
    if schema is not None and hasattr(given, "to_dict") and hasattr(given, "columns"):
        missing = [n for n in schema.names if n not in given.columns]
        if missing:
            raise InvalidInput(
                f"the verification DataFrame lacks the schema's columns {missing}",
                field="verify_windows",
            )
        given = schema.encode(given[list(schema.names)].head(64).to_dict("records"),
                              "verify_windows")
    dtype = np.float64 if schema is not None else np.float32
    try:
        arr = sample_windows(given, shape, dtype=dtype)
        if schema is not None:
            schema.to_frame(arr)  # every code valid: category indices, 0/1 bools, integers
        return arr
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field="verify_windows") from exc


def _check_estimator(
    artifact: Path, spec: OutputSpec, form: str, inputs: np.ndarray, shape: tuple[int, ...],
    extra: dict[str, Any], input_schema: list[dict[str, Any]] | None,
) -> None:
    """Refuse (InvalidInput, with the reason) an estimator that does not fit the kind.

    An artifact that cannot be loaded here, or whose call fails on the probe inputs, is
    not refused: it is recorded as not verified (``registration_extra``) and the backend
    says why at load, as before kinds.
    """
    try:
        import joblib
        from sklearn.base import is_classifier

        est = joblib.load(artifact)
    except Exception as exc:  # noqa: BLE001 - recorded by registration_extra
        log.warning("cannot load %s to check its kind: %s", artifact, exc)
        return
    what = type(est).__name__
    columns = getattr(est, "feature_names_in_", None)
    if input_schema is None and columns is not None:
        names = [str(c) for c in list(columns)[:10]] + (["..."] if len(columns) > 10 else [])
        raise InvalidInput(
            f"{what} was fitted on a DataFrame (columns {names}): a tabular model needs its "
            "input_schema: abserve register --schema FILE "
            "(the fields as JSON) or --reference DATA (a DataFrame to infer them from)",
            field="input_schema")
    if input_schema is not None and columns is not None:
        fitted = [str(c) for c in columns]
        declared = [str(f["name"]) for f in input_schema]
        if fitted != declared:
            raise InvalidInput(
                f"the input_schema's fields {declared} are not the columns {what} was fitted "
                f"on, in that order: {fitted} (scikit-learn checks names and order)",
                field="input_schema")
    classifier = bool(is_classifier(est))
    if spec.kind == REGRESSION:
        if classifier:
            raise InvalidInput(
                f"{what} is a classifier (sklearn.base.is_classifier); register it with kind "
                "multiclass or binary, not regression", field="kind")
        if not hasattr(est, "predict"):
            raise InvalidInput(f"{what} has no predict; a regression model needs one",
                               field="kind")
    else:
        if not classifier or not hasattr(est, "predict_proba"):
            lacks = "is not a classifier (sklearn.base.is_classifier)" if not classifier else (
                "has no predict_proba")
            hint = "; a regressor is registered with kind regression" if not classifier else ""
            raise InvalidInput(
                f"{what} {lacks}; a {spec.kind} model needs a classifier with predict_proba"
                f"{hint}", field="kind")
        classes = getattr(est, "classes_", None)
        if classes is None:
            raise InvalidInput(f"{what} is not fitted (no classes_)", field="path")
        if spec.kind == BINARY and len(classes) != 2:
            raise InvalidInput(
                f"{what} has {len(classes)} classes_ {list(classes)[:10]}, a binary model "
                "exactly 2; register it as multiclass", field="kind")
        if spec.kind == MULTICLASS and len(classes) > spec.n_labels:
            raise InvalidInput(
                f"{what} has {len(classes)} classes_, more than the {spec.n_labels} "
                "class_labels; give one label per class", field="class_labels")
        from models.forest import class_columns

        try:
            class_columns(classes, spec.class_labels)
        except ArtifactError as exc:
            raise InvalidInput(exc.message, field="class_labels") from exc
    _check_estimator_output(est, spec, form, inputs, shape, extra, input_schema)


def _check_estimator_output(
    est: Any, spec: OutputSpec, form: str, inputs: np.ndarray, shape: tuple[int, ...],
    extra: dict[str, Any], input_schema: list[dict[str, Any]] | None,
) -> None:
    """The estimator's output on the verification inputs must convert for the kind (the
    width of a regressor's predict, above all); a call that fails is left to the backend."""
    from models.forest import estimator_input

    try:
        x = estimator_input(est, inputs, shape, extra, input_schema)
        raw = np.asarray(est.predict(x) if spec.kind == REGRESSION else est.predict_proba(x))
    except Exception as exc:  # noqa: BLE001 - the backend reports it at load
        log.warning("cannot call %s on the verification inputs: %s", type(est).__name__, exc)
        return
    if spec.kind == MULTICLASS:
        if raw.ndim != 2 or raw.shape[1] != len(est.classes_):
            raise InvalidInput(
                f"predict_proba returned shape {raw.shape} for {len(inputs)} rows; expected "
                f"one column per class ({len(est.classes_)})", field="kind")
        return
    try:
        to_outputs(raw, len(inputs), spec, form)
    except ArtifactError as exc:
        raise InvalidInput(
            f"{type(est).__name__}'s output does not fit kind {spec.kind}: {exc.message}",
            field="outputs" if spec.kind == REGRESSION else "kind",
        ) from exc


def _reference_inputs(data: Any, shape: tuple[int, ...], schema: Any) -> np.ndarray:
    """Reference data as input rows ``(n, *shape)``, or InvalidInput saying what to give."""
    from models.reference import MAX_REFERENCE_ROWS

    if isinstance(data, str | Path):
        try:
            data = np.load(data, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read reference data {data}: {exc}",
                               field="reference") from exc
    if schema is not None and hasattr(data, "columns") and hasattr(data, "to_dict"):
        missing = [n for n in schema.names if n not in data.columns]
        if missing:
            raise InvalidInput(f"the reference DataFrame lacks the schema's columns {missing}",
                               field="reference")
        data = schema.encode(data[list(schema.names)].head(MAX_REFERENCE_ROWS)
                             .to_dict("records"), "reference")
    arr = np.asarray(data, dtype=np.float64 if schema is not None else np.float32)
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape or len(arr) == 0:
        raise InvalidInput(
            f"reference data must be rows of the model's input, shape (n, "
            f"{', '.join(map(str, shape))}); got {arr.shape}", field="reference")
    return arr[:MAX_REFERENCE_ROWS]


def _reference(arr: np.ndarray, shape: tuple[int, ...], schema: Any, spec: OutputSpec,
               backend: Any, path: Path) -> Path:
    """``reference.json`` of ``arr`` (and of ``backend``'s answers on it, when loaded)."""
    from models.reference import build_reference, channel_names

    labels = outputs = None
    if backend is not None:
        out = np.asarray(backend.predict(arr))
        if spec.classifies:
            labels = spec.labels_of(out)
        else:
            outputs = out
    names = channel_names(shape, None if schema is None else schema.to_json())
    return build_reference(arr, shape, names=names, labels=labels,
                           label_names=spec.class_labels if labels is not None else (),
                           outputs=outputs, source="registration").save(path)


def _check_loaded(load: Loader, manifest: Manifest, artifact: Path, inputs: np.ndarray) -> Any:
    """Load the private copy as a replica will and run it on the verification inputs: its
    output must convert to the kind's ``(n, width)`` batch. Returns the loaded backend."""
    try:
        backend = load(manifest, artifact)
    except AbserveError as exc:
        raise InvalidInput(
            f"cannot load the {manifest.framework} model to check it: {exc.message}",
            field="path",
        ) from exc
    try:
        out = backend.predict(inputs)
    except AbserveError as exc:
        raise InvalidInput(
            f"the {manifest.framework} model's output does not fit kind {manifest.kind} "
            f"(width {manifest.width}): {exc.message}",
            field="outputs" if manifest.kind == REGRESSION else "kind",
        ) from exc
    if np.shape(out) != (len(inputs), manifest.width):
        raise InvalidInput(
            f"the {manifest.framework} model returned {np.shape(out)} for {len(inputs)} rows, "
            f"expected ({len(inputs)}, {manifest.width})", field="kind")
    return backend
