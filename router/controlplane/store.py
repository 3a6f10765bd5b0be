"""Durable experiment state on disk: one JSON file, and an append-only audit log.

The controller is the only writer (one replica), so a file with atomic
replace (write a temp file, fsync, rename) is enough and survives replica,
controller and whole-cluster restarts; the audit log is JSON lines, fsynced
per entry. No Ray import.
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["FileStore"]


class FileStore:
    def __init__(self, directory: str | Path, name: str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.state_path = self.dir / f"{name}.state.json"
        self.audit_path = self.dir / f"{name}.audit.jsonl"

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def save(self, state: dict[str, Any], audit_entry: dict[str, Any] | None = None) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)
        if audit_entry is not None:
            self.append_audit(audit_entry)

    def append_audit(self, entry: dict[str, Any]) -> None:
        with open(self.audit_path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        try:
            with open(self.audit_path) as f:
                lines = deque(f, maxlen=limit)
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def _extra_path(self, kind: str) -> Path:
        return self.dir / f"{self.name}.{kind}.json"

    def load_extra(self, kind: str) -> dict[str, Any] | None:
        """Another JSON document of this application (e.g. the canary plan)."""
        try:
            data = json.loads(self._extra_path(kind).read_text())
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def save_extra(self, kind: str, data: dict[str, Any] | None) -> None:
        path = self._extra_path(kind)
        if data is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
