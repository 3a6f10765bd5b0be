"""The README's examples are checked, so they cannot rot: its config block validates,
and every `abserve` subcommand it shows exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from serve.cli import build_parser
from serve.config import parse_config

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_config_reference_block_is_a_valid_config() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README, flags=re.S)
    reference = [b for b in blocks if b.startswith("app_name:")]
    assert reference, "the README lost its config reference"
    config = parse_config(yaml.safe_load(reference[0]))
    assert config.experiment.baseline == "v1"


def test_every_cli_command_in_the_readme_exists() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = set(sub.choices)  # type: ignore[arg-type]
    shown = set(re.findall(r"`abserve ([a-z][a-z-]+)", README))
    assert shown, "no CLI examples found"
    assert shown <= commands, f"README shows unknown commands: {sorted(shown - commands)}"
