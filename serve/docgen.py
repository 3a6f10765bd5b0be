"""The generated parts of docs/: the config reference and the measured tables.

``python -m serve.docgen`` writes docs/config.md from the pydantic models in
serve/config.py (every section and field: type, default, constraints,
description), so a new field cannot go undocumented, and renders the tables of
docs/benchmarks.md and docs/reliability.md between their marker comments
(``<!-- generated:bench -->`` ... ``<!-- /generated:bench -->``) from the JSON
committed under docs/data/. The prose around the markers is left alone.

    python -m serve.docgen                                   # regenerate everything
    python -m serve.docgen --bench bench-results/bench.json  # take a new bench run
    python -m serve.docgen --soak soak-results/soak.json     # take a new soak run
    python -m serve.docgen --check                           # exit 1 when a page is stale

No Ray import: it runs in the unit tests, which check that the committed pages
equal what this renders.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from serve.config import AbserveConfig

__all__ = [
    "DOCS",
    "config_reference",
    "main",
    "pages",
    "render_bench",
    "render_soak",
    "replace_section",
    "sections",
]

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE = ROOT / "abserve.yaml"

# What a section is for, where its model has no docstring of its own (the docstring wins).
# The rules pydantic's validators hold across fields, which a field table cannot show.
RULES = (
    "Unknown keys are refused (`extra=\"forbid\"`), naming the key.",
    "`models`: each version at most once; every arm and every shadow names a listed version.",
    "`experiment.arms`: each version once, weights summing to 100; the baseline is an arm "
    "(its weight may be 0).",
    "`num_replicas` or `autoscaling`, never both (for a version and for the router).",
    "`autoscaling`: `min_replicas` ≤ `initial_replicas` ≤ `max_replicas`.",
    "`router.max_inflight` below `router.max_ongoing_requests`, so the router sheds load "
    "before Serve queues it.",
    "`resources`: custom resources only (not `CPU`, `GPU`, `memory`, "
    "`object_store_memory`), each amount > 0.",
    "Relative paths (`registry`, `state.dir`, `admin.token_file`) are taken relative to the "
    "config file.",
)

PRIMITIVES = {int: "integer", float: "number", str: "string", bool: "boolean"}


# ---------------------------------------------------------------- config reference


def _models_in(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in get_args(tp) for m in _models_in(arg)]


def _is_list(tp: Any) -> bool:
    return get_origin(tp) is list


def sections() -> list[tuple[str, type[BaseModel]]]:
    """Every section of the file, depth first, as (path, model): `models[]` is one list item."""
    out: list[tuple[str, type[BaseModel]]] = []

    def walk(path: str, model: type[BaseModel]) -> None:
        out.append((path, model))
        for name, field in model.model_fields.items():
            for sub in _models_in(field.annotation):
                child = f"{path}.{name}" if path else name
                walk(child + ("[]" if _is_list(field.annotation) else ""), sub)

    walk("", AbserveConfig)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _title(path: str) -> str:
    return path or "top level"


def _type_name(tp: Any, anchors: dict[type[BaseModel], str]) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a, anchors) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0], anchors)}"
    if origin is dict:
        return f"map of {_type_name(args[0], anchors)} to {_type_name(args[1], anchors)}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[{anchors[tp]}](#{slug(anchors[tp])})"
    return PRIMITIVES.get(tp, getattr(tp, "__name__", str(tp)))


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, BaseModel):
        return "its defaults"
    return f"`{json.dumps(value)}`"


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return _literal(field.default_factory())  # type: ignore[call-arg]
    return _literal(field.default)


_BOUNDS = ((at.Ge, "ge", "≥"), (at.Gt, "gt", ">"), (at.Le, "le", "≤"), (at.Lt, "lt", "<"))


def _constraints(field: FieldInfo) -> str:
    out = []
    for meta in field.metadata:
        for kind, attr, symbol in _BOUNDS:
            if isinstance(meta, kind):
                out.append(f"{symbol} {getattr(meta, attr)}")
        if isinstance(meta, at.MinLen):
            out.append(f"at least {meta.min_length} item{'s' * (meta.min_length != 1)}")
        elif isinstance(meta, at.MaxLen):
            out.append(f"at most {meta.max_length} item{'s' * (meta.max_length != 1)}")
        elif getattr(meta, "pattern", None):
            out.append(f"matches `{meta.pattern}`")
    return ", ".join(out).replace("|", "\\|")


def field_description(field: FieldInfo) -> str:
    """The field's own description; a section field without one borrows its section's."""
    if field.description:
        return field.description
    subs = _models_in(field.annotation)
    if subs:
        return section_note(subs[0])
    return ""


def section_note(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip()
    if doc and not doc.startswith(("A base class", "Usage docs")):  # pydantic's own docstring
        return " ".join(doc.split())
    return ""


def config_reference() -> str:
    """docs/config.md: every section and field of serve/config.py."""
    found = sections()
    anchors: dict[type[BaseModel], str] = {}  # each model's first section title
    for path, model in found:
        anchors.setdefault(model, _title(path))
    lines = [
        "# Config reference",
        "",
        "<!-- Generated by `python -m serve.docgen` from serve/config.py; do not edit by hand. -->",
        "",
        "One YAML file configures everything: the versions and their replicas, the experiment, "
        "the cache, HTTP limits, the router, the cluster. It is validated by pydantic before "
        "anything is deployed; check a file with `abserve validate FILE` (exit code 1 on error, "
        "naming every bad field). Sections:",
        "",
    ]
    lines += [f"- [{_title(p)}](#{slug(_title(p))}): {section_note(m)}" for p, m in found]
    lines += ["", "Rules across fields:", ""]
    lines += [f"- {rule}" for rule in RULES]
    seen: dict[type[BaseModel], str] = {}
    for path, model in found:
        title = _title(path)
        lines += ["", f"## {title}", ""]
        if model in seen:
            first = seen[model]
            lines.append(f"The same fields as [{first}](#{slug(first)}).")
            continue
        seen[model] = title
        note = section_note(model)
        if note:
            lines += [note, ""]
        lines += [
            "| field | type | default | constraints | description |",
            "|---|---|---|---|---|",
        ]
        for name, field in model.model_fields.items():
            desc = field_description(field).replace("|", "\\|")
            lines.append(
                f"| `{name}` | {_type_name(field.annotation, anchors)} | {_default(field)} "
                f"| {_constraints(field)} | {desc} |"
            )
    if EXAMPLE.exists():
        lines += [
            "",
            "## Example",
            "",
            "The example config of the repository, `abserve.yaml`:",
            "",
            "```yaml",
            EXAMPLE.read_text().rstrip("\n"),
            "```",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- measured tables


def render_bench(data: dict[str, Any]) -> str:
    """The tables of one `abserve bench` run (its bench.json), exactly as the bench prints them."""
    from benchmarks.report import markdown  # pure: the bench's own renderer, no Ray

    return markdown(data).rstrip("\n")


def _span(values: Sequence[float], unit: str) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:g} {unit}" if lo == hi else f"{lo:g}-{hi:g} {unit}"


def _fault_rows(faults: Sequence[dict[str, Any]]) -> Iterator[str]:
    by: dict[str, list[dict[str, Any]]] = {}
    for f in faults:
        by.setdefault(f["event"], []).append(f)
    for kind, events in by.items():
        back = [float(e[k]) for e in events for k in ("running_again_s", "serve_status_back_s")
                if isinstance(e.get(k), int | float)]
        errors = sum("harness_error" in e for e in events)
        took = [float(e["took_s"]) for e in events if isinstance(e.get("took_s"), int | float)]
        yield (f"| {kind} | {len(events)} | {_span(took, 's')} | {_span(back, 's')} "
               f"| {errors} |")


def render_soak(report: dict[str, Any]) -> str:
    """The criteria, the totals and the faults of one `abserve soak` run (its soak.json)."""
    s = report["summary"]
    verdict = "every criterion held" if report["passed"] else "**a criterion failed**"
    lines = [
        f"`abserve soak --duration {report['duration_s']:g} --rate {report['rate']:g}`: "
        f"a fault every {report['fault_interval_s']:g} s, cache TTL {report['ttl_s']} s, "
        f"{len(report['faults'])} faults; {verdict}.",
        "",
        "| criterion | limit | measured | held |",
        "|---|---|---|---|",
    ]
    lines += [f"| {c['name']} | {c['limit']} | {c['measured']} | "
              f"{'yes' if c['held'] else '**NO**'} |" for c in report["criteria"]]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["fallback_reasons"].items()))
    cache = ", ".join(f"{k} {v}" for k, v in sorted(s["cache"].items()))
    lines += [
        "",
        f"Requests {s['requests']}, failed {s['failed']}; fallbacks {s['fallbacks']}"
        + (f" ({reasons})" if reasons else "")
        + (f"; cache {cache}" if cache else "")
        + f"; p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms.",
        "",
        "| fault | times | injection took | back after | harness errors |",
        "|---|---:|---:|---:|---:|",
        *_fault_rows(report["faults"]),
    ]
    minutes = report.get("minutes") or []
    if minutes:
        worst = min(minutes, key=lambda w: w["success_rate"])
        slowest = max(minutes, key=lambda w: w["p99_ms"])
        lines += [
            "",
            f"Per minute ({len(minutes)}): lowest success rate "
            f"{100 * worst['success_rate']:.2f} % (minute {minutes.index(worst) + 1}), "
            f"highest p99 {slowest['p99_ms']:.0f} ms (minute {minutes.index(slowest) + 1}).",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------- pages

MEASURED = {
    "bench": ("benchmarks.md", "bench.json", render_bench,
              "abserve bench --duration 15 && python -m serve.docgen --bench "
              "bench-results/bench.json"),
    "soak": ("reliability.md", "soak.json", render_soak,
             "abserve soak --duration 1800 --rate 20 --out soak-results/ && "
             "python -m serve.docgen --soak soak-results/soak.json"),
}


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with what lies between ``<!-- generated:name -->`` and its end marker
    replaced by ``body``; everything else unchanged."""
    start, end = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"expected exactly one {start} ... {end} block")
    return pattern.sub(lambda _: f"{start}\n{body.strip()}\n{end}", text)


def placeholder(name: str) -> str:
    command = MEASURED[name][3]
    return f"_Not measured yet on this commit: `{command}` fills this section._"


def pages(docs: Path = DOCS) -> dict[Path, str]:
    """Every generated file and what it must contain, from serve/config.py and docs/data/."""
    out = {docs / "config.md": config_reference()}
    for name, (page, data_file, render, _) in MEASURED.items():
        path, data = docs / page, docs / "data" / data_file
        body = render(json.loads(data.read_text())) if data.exists() else placeholder(name)
        out[path] = replace_section(path.read_text(), name, body)
    return out


def main(argv: Sequence[str] | None = None, docs: Path = DOCS) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve.docgen",
        description="Regenerate docs/config.md and the measured tables of docs/.",
    )
    parser.add_argument("--bench", type=Path, help="a bench.json to render (copied to docs/data)")
    parser.add_argument("--soak", type=Path, help="a soak.json to render (copied to docs/data)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a generated page is out of date")
    args = parser.parse_args(argv)
    if args.check and (args.bench or args.soak):
        parser.error("--check takes no --bench / --soak")
    for source, name in ((args.bench, "bench.json"), (args.soak, "soak.json")):
        if source is not None:
            json.loads(source.read_text())  # refuse a file that is not JSON before copying it
            (docs / "data").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, docs / "data" / name)
    rendered = pages(docs)
    stale = [path for path, text in rendered.items()
             if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path}: out of date; run: python -m serve.docgen", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(rendered[path])
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
