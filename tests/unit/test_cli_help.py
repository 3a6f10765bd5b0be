"""A newcomer's first commands: `abserve --help` and every `abserve <command> --help` exit 0.

The commands are read from the parser, so a new command is covered without editing this
test. In-process (``main`` raises SystemExit from argparse), a second for all of them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from serve.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def _help_exit_code(argv: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert _help_exit_code(["--help"]) in (0, None)
    out = capsys.readouterr().out
    assert out.startswith("usage: abserve")
    for command in _commands():
        assert command in out


def test_there_are_commands_to_check() -> None:
    assert {"up", "down", "status", "bench", "report", "traffic"} <= set(_commands())


@pytest.mark.parametrize("command", _commands())
def test_every_command_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _help_exit_code([command, "--help"]) in (0, None)
    out = capsys.readouterr().out
    assert f"usage: abserve {command}" in out


def test_building_the_parser_imports_no_benchmark() -> None:
    import subprocess
    import sys

    code = ("import sys; from serve.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('benchmarks', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
