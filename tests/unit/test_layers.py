"""The layers of docs/architecture.md, held by a test: no lower layer imports a higher one,
and no import circle anywhere (lazy imports inside functions count too).

    base      serve.config, serve.errors, serve.telemetry, models
    planes    router.dataplane (the request path), then, each on top of it alone:
              router.protocol (codecs), router.controlplane (the experiment), deployments
    adapters  router.http, router.ingress, router.controlplane.controller / .client
    top       serve.app, serve.serve_config, serve.cli, serve.local, serve.docgen, serve.offline,
              benchmarks

Read from the source with ``ast``: nothing is imported, so the test runs in milliseconds
and sees lazy imports as well as module-level ones.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("serve", "router", "deployments", "models", "benchmarks")

BASE, PLANES, ADAPTERS, TOP = 0, 1, 2, 3
# Longest prefix wins. Within the planes, the data plane is below the other three.
LAYERS: dict[str, tuple[int, str]] = {
    "serve": (BASE, "base"),
    "serve.config": (BASE, "base"),
    "serve.errors": (BASE, "base"),
    "serve.telemetry": (BASE, "base"),
    "models": (BASE, "base"),
    "router": (PLANES, "dataplane"),  # the package's __init__ re-exports the data plane
    "router.dataplane": (PLANES, "dataplane"),
    "router.protocol": (PLANES, "protocol"),
    "router.controlplane": (PLANES, "controlplane"),
    "deployments": (PLANES, "deployments"),
    "router.http": (ADAPTERS, "adapters"),
    "router.ingress": (ADAPTERS, "adapters"),
    "router.controlplane.controller": (ADAPTERS, "adapters"),
    "router.controlplane.client": (ADAPTERS, "adapters"),
    "serve.app": (TOP, "top"),
    "serve.serve_config": (TOP, "top"),
    "serve.cli": (TOP, "top"),
    "serve.local": (TOP, "top"),
    "serve.docgen": (TOP, "top"),
    "serve.offline": (TOP, "top"),
    "benchmarks": (TOP, "top"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {
        _module_name(p): p
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
    }


def layer_of(module: str) -> tuple[int, str]:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        found = LAYERS.get(".".join(parts[:n]))
        if found is not None:
            return found
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the docs)")


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """Project modules imported anywhere in the file; ``from pkg import sub`` counts as
    ``pkg.sub`` when that is a module, else as ``pkg``."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in known else node.module
                for alias in node.names
            ]
        else:
            continue
        for name in dict.fromkeys(names):
            if name in known and name != module:
                yield name, node.lineno


def may_import(importer: tuple[int, str], imported: tuple[int, str]) -> bool:
    (lo, lo_part), (hi, hi_part) = importer, imported
    if hi != lo:
        return hi < lo
    if lo == PLANES:  # the other planes build on the data plane, never on each other
        return hi_part == lo_part or hi_part == "dataplane"
    return True


def edges() -> list[tuple[str, str, int]]:
    modules = project_modules()
    known = set(modules)
    return [
        (module, imported, line)
        for module, path in modules.items()
        for imported, line in imports_of(module, path, known)
    ]


def test_every_module_is_in_a_layer() -> None:
    for module in project_modules():
        layer_of(module)


def test_no_lower_layer_imports_a_higher_one() -> None:
    wrong = [
        f"{src} ({layer_of(src)[1]}) imports {dst} ({layer_of(dst)[1]}) at line {line}"
        for src, dst, line in edges()
        if not may_import(layer_of(src), layer_of(dst))
    ]
    assert not wrong, "\n".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _is_package_init_edge(src: str, dst: str) -> bool:
    """A package's __init__ re-exporting its own submodule is not a circle."""
    return dst.startswith(f"{src}.")


def test_no_import_circle() -> None:
    graph: dict[str, set[str]] = {}
    for src, dst, _ in edges():
        if not _is_package_init_edge(src, dst):
            graph.setdefault(src, set()).add(dst)
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("serve.config", "router.dataplane.core", False),
        ("router.dataplane.core", "router.controlplane.experiment", False),
        ("router.controlplane.ledger", "router.dataplane.measures", True),
        ("router.protocol.oip", "router.controlplane.experiment", False),
        ("router.http.app", "router.dataplane.core", True),
        ("benchmarks.runner", "serve.local", True),
        ("deployments.model", "router.http.app", False),
    ],
)
def test_the_rule_itself(importer: str, imported: str, allowed: bool) -> None:
    assert may_import(layer_of(importer), layer_of(imported)) is allowed


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_package_declares_its_public_surface() -> None:
    missing = [
        str(p.relative_to(ROOT))
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("__init__.py"))
        if "__all__" not in p.read_text()
    ]
    assert not missing, f"packages without __all__: {missing}"
