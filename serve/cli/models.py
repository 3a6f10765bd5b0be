"""Commands on model versions and configs, no cluster needed: train, register, validate."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from serve.cli.precheck import registry_problems
from serve.cli.state import DEFAULT_CONFIG
from serve.config import load_config

__all__ = ["add_parsers", "cmd_register", "cmd_train", "cmd_validate"]


def cmd_train(args: argparse.Namespace) -> int:
    family = getattr(args, "family", "all")
    if family in ("all", "activity"):
        from models.activity.train import train_all

        train_all(args.registry, seed=args.seed)
    if family in ("all", "sales"):
        from models.sales.train import train_all as train_sales

        train_sales(args.registry, seed=args.seed)
    return 0


DEFAULT_SHAPE = "50,9"
DEFAULT_LABELS = "Still,Walking,Running,Biking,Car,Bus,Train,Subway"
REFERENCE_SUFFIXES = (".parquet", ".pq", ".csv")
TENSOR_REFERENCE_SUFFIX = ".npy"


def _split(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _read_schema(path: str) -> list[dict[str, Any]]:
    """A ``--schema`` file: a JSON list of fields (``{"name": ..., "dtype": ...}``)."""
    from serve.errors import InvalidInput

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"cannot read --schema {path}: {exc}", field="schema") from exc
    if not isinstance(data, list) or not all(isinstance(f, dict) for f in data):
        raise InvalidInput(
            f"--schema {path} must hold a JSON list of fields, e.g. "
            '[{"name": "store", "dtype": "category", "categories": ["a", "b"]}, '
            '{"name": "price", "dtype": "float"}]', field="schema")
    return data


def _read_reference(path: str, target: str | None) -> Any:
    """A ``--reference`` DataFrame (.parquet or .csv), less its ``--target`` column."""
    from pathlib import Path

    import pandas as pd

    from serve.errors import InvalidInput

    suffix = Path(path).suffix.lower()
    if suffix not in REFERENCE_SUFFIXES:
        raise InvalidInput(f"--reference must be a .parquet or .csv file (a tabular model) or "
                           f"a .npy array (a tensor model), got {path!r}",
                           field="reference")
    try:
        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except ImportError as exc:
        raise InvalidInput(
            f"reading {path} needs a parquet engine ({exc}); pip install pyarrow, or pass "
            "the reference as .csv", field="reference") from exc
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read --reference {path}: {exc}", field="reference") from exc
    if target is not None:
        if target not in frame.columns:
            raise InvalidInput(
                f"--target {target!r} is not a column of {path} (columns: {list(frame.columns)})",
                field="target")
        frame = frame.drop(columns=[target])
    if frame.empty:
        raise InvalidInput(f"--reference {path} has no rows or no feature columns",
                           field="reference")
    return frame


def cmd_register(args: argparse.Namespace) -> int:
    from deployments.backends import load_backend
    from models.register import register_user_model
    from models.registry import Registry
    from serve.errors import InvalidInput

    kind = args.kind
    if args.target is not None and args.reference is None:
        raise InvalidInput("--target names the label column of --reference; give --reference",
                           field="target")
    input_schema: list[dict[str, Any]] | None = None
    windows: Any = None
    reference: Any = None
    if args.schema is not None:
        input_schema = _read_schema(args.schema)
    elif args.reference is not None and args.reference.lower().endswith(TENSOR_REFERENCE_SUFFIX):
        if args.target is not None:
            raise InvalidInput("--target names a column of a .parquet or .csv --reference; "
                               "a .npy reference holds inputs only", field="target")
        windows = reference = args.reference  # a tensor model's inputs, (n, *input_shape)
    elif args.reference is not None:
        from models.schema import infer_schema

        frame = _read_reference(args.reference, args.target)
        input_schema = infer_schema(frame).to_json()
        windows = frame  # its first rows, encoded with the schema, verify the fast path
        reference = frame  # and all of them (up to 50,000) are the drift reference
    tabular = input_schema is not None
    if tabular and args.input_shape is not None:
        raise InvalidInput(
            "--input-shape describes a tensor model; a tabular model's rows follow its "
            "--schema or --reference (drop --input-shape)", field="input_shape")
    shape = None if tabular else tuple(int(x) for x in (args.input_shape or DEFAULT_SHAPE)
                                       .split(","))
    labels = _split(args.labels)
    if labels is None:
        labels = _split(DEFAULT_LABELS) if kind == "multiclass" else ()
    if kind == "binary" and not labels:
        raise InvalidInput("a binary model needs --class-labels NEGATIVE,POSITIVE",
                           field="class_labels")
    manifest = register_user_model(
        Registry(args.registry),
        args.name,
        args.version,
        args.framework,
        args.artifact,
        input_shape=shape,
        class_labels=labels or (),
        torch_class=args.torch_class,
        init_kwargs=json.loads(args.init_kwargs) if args.init_kwargs else None,
        output=args.output,
        description=args.description,
        overwrite=args.overwrite,
        verify_windows=windows,
        kind=kind,
        threshold=args.threshold,
        outputs=_split(args.outputs),
        input_schema=input_schema,
        load=load_backend,
        reference_data=reference,
    )
    what = manifest.spec.describe()
    detail = ", ".join(f"{k} {v}" for k, v in what.items() if k != "kind")
    inputs = (f"{len(manifest.input_schema)} schema fields" if manifest.input_schema
              else f"input {list(manifest.input_shape)}")
    print(f"registered {manifest.name}:{manifest.version} ({manifest.framework}, "
          f"{manifest.kind}: {detail}; {inputs}) "
          f"sha256 {manifest.sha256[:12]}... under {args.registry}")
    print(reference_note(Registry(args.registry), manifest))
    return 0


def reference_note(registry: Any, manifest: Any) -> str:
    """What the version's drift will be judged against, or what is missing for it."""
    from models.reference import load_reference

    ref = load_reference(registry, manifest)
    if ref is None:
        return ("no reference statistics: drift is not computed for this version (status and "
                "report say 'no reference'); give --reference DATA (.parquet/.csv for a "
                "tabular model, .npy of (n, *input_shape) inputs for a tensor model), data like "
                "its training data, to record them")
    missing = "" if ref.answers else "; no answer distribution (the model was not loaded)"
    return f"reference statistics recorded: {ref.summary()}{missing}"


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    problems = registry_problems(config)
    if problems and args.check_registry:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 1
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    weights = ", ".join(f"{a.version}={a.weight:g}%" for a in config.experiment.arms)
    print(f"{args.config}: ok ({len(config.models)} versions; {weights}; "
          f"baseline {config.experiment.baseline})")
    return 0


def add_parsers(sub: Any) -> None:
    t = sub.add_parser("train", help="train the demo models: activity v1 (sklearn), v2 (torch), "
                       "v3 (keras); sales v1 (sklearn), v2 (torch)")
    t.add_argument("--registry", default="registry")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--family", choices=["all", "activity", "sales"], default="all",
                   help="which demo family to train (default: both)")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser(
        "register", help="register your own model file as a new version",
        description="Register a model file trained outside abserve. The artifact is loaded "
        "once, as a replica will load it, and refused when it does not fit --kind.",
    )
    r.add_argument("name")
    r.add_argument("version")
    r.add_argument("--framework", required=True, choices=["sklearn", "torch", "tensorflow"])
    r.add_argument("--artifact", required=True, help="joblib file, torch state_dict or .keras")
    r.add_argument("--kind", default="multiclass", choices=["multiclass", "binary", "regression"],
                   help="what the model answers: class probabilities (multiclass, the default), "
                   "the positive class's score (binary) or values (regression)")
    tab = r.add_mutually_exclusive_group()
    tab.add_argument("--schema", metavar="FILE",
                     help="tabular model: a JSON list of its input fields "
                     "({\"name\", \"dtype\": float|int|bool|category, \"categories\"}); "
                     "requests then send named records")
    tab.add_argument("--reference", metavar="DATA",
                     help="data like the model's training data, recorded as its reference "
                     "statistics for drift (per input channel, and the model's answers on it). "
                     "Tabular model: a .parquet or .csv DataFrame; the schema is inferred from "
                     "its columns and its first 64 rows verify the faster inference path. "
                     "Tensor model: a .npy array of (n, *input_shape) inputs. Without it the "
                     "version has no drift reference")
    r.add_argument("--target", metavar="COLUMN",
                   help="with --reference: the label column, left out of the schema")
    r.add_argument("--input-shape", default=None,
                   help=f"tensor model: one instance's shape, e.g. 50,9 (default {DEFAULT_SHAPE}); "
                   "not for a tabular model")
    r.add_argument("--labels", "--class-labels", dest="labels", default=None,
                   help="class labels, comma-separated: all classes in order (multiclass; "
                   "default the 8 activity classes) or NEGATIVE,POSITIVE (binary); none for "
                   "regression")
    r.add_argument("--threshold", type=float, default=None,
                   help="binary: the positive class's score at or above which the label is "
                   "positive (default 0.5)")
    r.add_argument("--outputs", default=None,
                   help="regression: the names of its output values, comma-separated, one "
                   "per column of predict (e.g. day1,day2,day3; default value)")
    r.add_argument("--torch-class", help="pkg.module:Class of the nn.Module (torch only)")
    r.add_argument("--init-kwargs", help="JSON keyword arguments for the torch class")
    r.add_argument("--output", default=None, choices=["probabilities", "logits", "values"],
                   help="what the raw output holds: probabilities (classifiers' default), "
                   "logits (torch/Keras classifiers: softmax, or a sigmoid for one binary "
                   "column) or values (regression, its only form)")
    r.add_argument("--description", default="")
    r.add_argument("--registry", default="registry")
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(func=cmd_register)

    v = sub.add_parser("validate", help="check a config file; non-zero exit on error")
    v.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    v.add_argument("--check-registry", action="store_true",
                   help="also fail when a version's artifact is missing or tampered with")
    v.set_defaults(func=cmd_validate)
