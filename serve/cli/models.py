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


def cmd_register(args: argparse.Namespace) -> int:
    from models.register import register_user_model
    from models.registry import Registry

    manifest = register_user_model(
        Registry(args.registry),
        args.name,
        args.version,
        args.framework,
        args.artifact,
        input_shape=tuple(int(x) for x in args.input_shape.split(",")),
        class_labels=tuple(args.labels.split(",")),
        torch_class=args.torch_class,
        init_kwargs=json.loads(args.init_kwargs) if args.init_kwargs else None,
        output=args.output,
        description=args.description,
        overwrite=args.overwrite,
    )
    print(f"registered {manifest.name}:{manifest.version} ({manifest.framework}) "
          f"sha256 {manifest.sha256[:12]}... under {args.registry}")
    return 0


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

    r = sub.add_parser("register", help="register your own model file as a new version")
    r.add_argument("name")
    r.add_argument("version")
    r.add_argument("--framework", required=True, choices=["sklearn", "torch", "tensorflow"])
    r.add_argument("--artifact", required=True, help="joblib file, torch state_dict or .keras")
    r.add_argument("--input-shape", default="50,9", help="per-instance shape, e.g. 50,9")
    r.add_argument("--labels", default="Still,Walking,Running,Biking,Car,Bus,Train,Subway")
    r.add_argument("--torch-class", help="pkg.module:Class of the nn.Module (torch only)")
    r.add_argument("--init-kwargs", help="JSON keyword arguments for the torch class")
    r.add_argument("--output", default="probabilities", choices=["probabilities", "logits"])
    r.add_argument("--description", default="")
    r.add_argument("--registry", default="registry")
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(func=cmd_register)

    v = sub.add_parser("validate", help="check a config file; non-zero exit on error")
    v.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    v.add_argument("--check-registry", action="store_true",
                   help="also fail when a version's artifact is missing or tampered with")
    v.set_defaults(func=cmd_validate)
