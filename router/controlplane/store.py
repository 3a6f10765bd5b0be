"""Durable experiment state on disk: JSON documents, an audit log and journals.

The controller is the only writer (one replica), so a file with atomic
replace (write a temp file, fsync, rename) is enough and survives replica,
controller and whole-cluster restarts; the audit log is JSON lines, fsynced
per entry. A ``Journal`` is the same kind of file for records that must be
durable before they are acknowledged (served predictions, counted labels):
appended and fsynced per batch, replayed on start, compacted by rewriting
it whole. No Ray import.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["FileStore", "Journal"]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Journal:
    """Records (JSON arrays or objects), one per line, durable once ``append`` returns.

    A crash can leave a torn last line; ``replay`` skips it (it was never
    acknowledged). ``rewrite`` replaces the whole file atomically, so a crash
    during a compaction leaves either the old journal or the new one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lines = 0  # lines in the file, as far as this process knows

    def append(self, records: Iterable[Any]) -> None:
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        if not text:
            return
        with open(self.path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self.lines += text.count("\n")

    def replay(self) -> Iterator[Any]:
        try:
            f = open(self.path)  # noqa: SIM115 - closed below; a generator
        except FileNotFoundError:
            return
        with f:
            n = 0
            for line in f:
                n += 1
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn write: never acknowledged
            self.lines = n

    def rewrite(self, records: Iterable[Any]) -> None:
        lines = [json.dumps(r, separators=(",", ":")) + "\n" for r in records]
        _atomic_write(self.path, "".join(lines))
        self.lines = len(lines)


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
        _atomic_write(self.state_path, json.dumps(state, indent=1, sort_keys=True))
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

    def journal(self, kind: str) -> Journal:
        """This application's journal of one kind (e.g. the ledger's served predictions)."""
        return Journal(self.dir / f"{self.name}.{kind}.jsonl")

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
        _atomic_write(path, json.dumps(data, indent=1, sort_keys=True))
