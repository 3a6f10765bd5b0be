"""The README and the docs pages are checked, so they cannot rot: the README stays a short
user's document, its config block validates, every `abserve` command and option they show
exists in the CLI's parser, and every relative link (and its #anchor) resolves."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from serve.config import parse_config
from serve.docgen import slug

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
MAX_README_LINES = 450

FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```", flags=re.S | re.M)
COMMAND = re.compile(r"(?:^|[\s/(])abserve ([a-z].*)")
STOP = re.compile(r"\s(?:#|\||&&|;)\s|`")


def _fences(text: str) -> list[tuple[str, str]]:
    return FENCE.findall(text)


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def _code_lines(text: str) -> list[str]:
    """Shell code: lines of bash fences (continuations joined) and inline code spans."""
    lines = []
    for lang, body in _fences(text):
        if lang in ("bash", "sh", "console", ""):
            lines += body.replace("\\\n", " ").splitlines()
    lines += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", _prose(text))]
    return lines


def _shown_commands(text: str) -> list[list[str]]:
    out = []
    for line in _code_lines(text):
        for match in COMMAND.finditer(line):
            words = STOP.split(match.group(1))[0].split()
            out.append([w.strip("[]()") for w in words])
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _check_command(parser: argparse.ArgumentParser, words: list[str]) -> str | None:
    """None when `abserve <words>` names a real command and only its real options."""
    path = []
    rest = list(words)
    while rest and rest[0] in _subparsers(parser):
        path.append(rest[0])
        parser = _subparsers(parser)[rest.pop(0)]
    if not path:
        return f"abserve {' '.join(words)}: no such command"
    for word in rest:
        option = word.split("=", 1)[0]
        if option.startswith("--") and option not in parser._option_string_actions:
            return f"abserve {' '.join(path)}: no option {option}"
    return None


def test_readme_is_a_short_users_document() -> None:
    text = README.read_text()
    lines = text.count("\n")
    assert lines <= MAX_README_LINES, f"README has {lines} lines; move detail to docs/"
    for heading in ("## Quick start", "## Commands", "## HTTP API", "## Documentation"):
        assert f"\n{heading}\n" in text, f"the README lost its {heading!r} section"


def test_quick_start_keeps_its_two_commands() -> None:
    text = README.read_text()
    for command in ("bash scripts/quickstart.sh", "bash scripts/test.sh"):
        assert f"```bash\n{command}\n```" in text, f"the quick start lost `{command}`"
        assert (ROOT / command.split()[1]).is_file()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_config_block_is_a_valid_config() -> None:
    blocks = [body for lang, body in _fences(README.read_text()) if lang == "yaml"]
    examples = [b for b in blocks if b.startswith("app_name:")]
    assert examples, "the README lost its config example"
    config = parse_config(yaml.safe_load(examples[0]))
    assert config.experiment.baseline == "v1"


def test_every_command_shown_exists_with_its_options() -> None:
    from serve.cli import build_parser  # lazily: the CLI package is heavier than these checks

    parser = build_parser()
    shown = {page: _shown_commands(page.read_text()) for page in PAGES}
    assert len(shown[README]) >= 20, "no CLI examples found in the README"
    bad = [f"{page.relative_to(ROOT)}: {problem}" for page, commands in shown.items()
           for words in commands if (problem := _check_command(parser, words))]
    assert not bad, "\n".join(bad)
    covered = {words[0] for words in shown[README] if words}
    missing = set(_subparsers(parser)) - covered
    assert not missing, f"commands the README does not show: {sorted(missing)}"


def _anchors(page: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#+ (.+)$", _prose(page.read_text()), flags=re.M)}


def test_every_relative_link_resolves() -> None:
    bad = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(ROOT)}: {target}"
            if not dest.exists():
                bad.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{where} (no such heading)")
    assert not bad, "\n".join(bad)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    text = README.read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, f"README links nowhere to docs/{page.name}"


SOURCE_DIRS = ("serve/", "router/", "deployments/", "models/", "benchmarks/", "tests/",
               "scripts/", "deploy/", ".ci/")


def test_every_source_path_shown_exists() -> None:
    """`router/dataplane/policy.py` and the like: a moved module must take its docs along."""
    bad = []
    for page in PAGES:
        for span in set(re.findall(r"`([^`\s]+)`", page.read_text())):
            path = span.split(":", 1)[0].rstrip("/")
            if span.startswith(SOURCE_DIRS) and not (ROOT / path).exists():
                bad.append(f"{page.relative_to(ROOT)}: {span}")
    assert not bad, "\n".join(sorted(bad))
