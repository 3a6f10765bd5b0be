"""Marks every test by its folder (LitServe's habit), so `-m` selects suites."""

from __future__ import annotations

from pathlib import Path

import pytest

SUITES = {"integration": "integration", "backends": "backends"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for folder, marker in SUITES.items():
            if folder in parts:
                item.add_marker(getattr(pytest.mark, marker))
