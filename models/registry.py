"""The model registry: manifests, versions and sha256-checked artifacts on disk.

Layout: ``<root>/<name>/<version>/{manifest.json, <artifact>}``. A version exists
once its ``manifest.json`` does; the manifest is written last and atomically, so a
crashed registration never leaves a half-registered version behind.

This module never imports ray, torch or tensorflow: the router and the CLI read
manifests without paying for (or depending on) any framework.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.kinds import MULTICLASS, OutputSpec, kind_problems
from serve.errors import ArtifactError, InvalidInput

__all__ = [
    "FRAMEWORKS",
    "MANIFEST_FILE",
    "NAME_PATTERN",
    "Manifest",
    "Registry",
    "check_name",
    "sha256_file",
    "verify_attachment",
    "verify_digest",
]

FRAMEWORKS: tuple[str, ...] = ("sklearn", "torch", "tensorflow")
INPUT_DTYPES: tuple[str, ...] = ("float32", "float64")
MANIFEST_FILE = "manifest.json"
# Files registered beside the artifact (e.g. verification windows): extra["attachments"]
# maps each plain file name to its sha256, so none can be swapped after registration.
ATTACHMENTS_KEY = "attachments"
# Names and versions become Ray deployment names and directory names.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CHUNK = 1 << 20


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a safe model name or version, else raise InvalidInput."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"invalid model {what} {value!r}: use 1-64 characters from letters, digits, "
            "'.', '_' and '-', starting with a letter or digit",
            field=what,
        )
    return value


def sha256_file(path: str | Path, chunk_size: int = _CHUNK) -> str:
    """Hex sha256 of a file, read in chunks so large artifacts do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """Everything needed to load and describe one registered model version."""

    name: str
    version: str
    framework: str
    input_shape: tuple[int, ...]
    input_dtype: str
    class_labels: tuple[str, ...]
    accuracy: float | None
    training_time_s: float | None
    created_at: str
    artifact: str
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # The output kind (models/kinds.py); manifests written before kinds are multiclass.
    kind: str = MULTICLASS
    threshold: float | None = None  # binary: the positive label's score cut (default 0.5)
    outputs: tuple[str, ...] = ()  # regression: the output names (default ("value",))
    # Tabular models: the named, typed input fields (models/schema.py); None for tensors.
    input_schema: tuple[dict[str, Any], ...] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_labels)

    @property
    def spec(self) -> OutputSpec:
        """How to read this model's output batch (its width, labels, threshold)."""
        return OutputSpec.of(self.kind, self.class_labels, self.threshold, self.outputs)

    @property
    def width(self) -> int:
        """Columns of the output batch every backend returns for this manifest."""
        return self.spec.width

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["class_labels"] = list(self.class_labels)
        data["outputs"] = list(self.outputs)
        data["input_schema"] = (
            None if self.input_schema is None else [dict(f) for f in self.input_schema]
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Build a manifest from JSON data; unknown or missing keys are refused by name."""
        if not isinstance(data, dict):
            raise ArtifactError(f"manifest must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        optional = {"extra", "description", "kind", "threshold", "outputs", "input_schema"}
        unknown = sorted(set(data) - known)
        missing = sorted(known - optional - set(data))
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown keys {unknown}")
            if missing:
                parts.append(f"missing keys {missing}")
            raise ArtifactError("invalid manifest: " + "; ".join(parts))
        try:
            manifest = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                framework=str(data["framework"]),
                input_shape=tuple(int(d) for d in data["input_shape"]),
                input_dtype=str(data["input_dtype"]),
                class_labels=tuple(str(c) for c in data["class_labels"]),
                accuracy=None if data["accuracy"] is None else float(data["accuracy"]),
                training_time_s=(
                    None if data["training_time_s"] is None else float(data["training_time_s"])
                ),
                created_at=str(data["created_at"]),
                artifact=str(data["artifact"]),
                sha256=str(data["sha256"]),
                extra=dict(data.get("extra") or {}),
                description=str(data.get("description", "")),
                kind=str(data.get("kind", MULTICLASS)),
                threshold=None if data.get("threshold") is None else float(data["threshold"]),
                outputs=tuple(str(o) for o in data.get("outputs") or ()),
                input_schema=(
                    None if data.get("input_schema") is None
                    else tuple(dict(f) for f in data["input_schema"])
                ),
            )
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"invalid manifest: {exc}") from exc
        manifest.validate()
        return manifest

    def validate(self) -> None:
        """Raise ArtifactError if the manifest could not be served safely."""
        problems = []
        if not NAME_PATTERN.fullmatch(self.name):
            problems.append(f"name {self.name!r} is not a valid model name")
        if not NAME_PATTERN.fullmatch(self.version):
            problems.append(f"version {self.version!r} is not a valid version")
        if self.framework not in FRAMEWORKS:
            problems.append(f"framework {self.framework!r} is not one of {list(FRAMEWORKS)}")
        if not self.input_shape or any(d <= 0 for d in self.input_shape):
            problems.append(f"input_shape {self.input_shape} must be non-empty and positive")
        if self.input_dtype not in INPUT_DTYPES:
            problems.append(f"input_dtype {self.input_dtype!r} is not one of {list(INPUT_DTYPES)}")
        problems.extend(kind_problems(self.kind, self.class_labels, self.threshold, self.outputs))
        # The artifact is a bare file name inside the version directory, never a path.
        if (
            not self.artifact
            or Path(self.artifact).name != self.artifact
            or self.artifact.startswith(".")
            or self.artifact == MANIFEST_FILE
        ):
            problems.append(f"artifact {self.artifact!r} must be a plain file name")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            problems.append("sha256 must be 64 lowercase hex digits")
        problems.extend(_attachment_problems(self))
        if problems:
            raise ArtifactError(
                f"invalid manifest for {self.name} {self.version}: " + "; ".join(problems)
            )


def _plain_file_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and bool(name)
        and Path(name).name == name
        and not name.startswith(".")
        and name != MANIFEST_FILE
    )


def _attachment_problems(manifest: Manifest) -> list[str]:
    """What is wrong with ``extra["attachments"]``; old manifests have none, which is fine."""
    found = manifest.extra.get(ATTACHMENTS_KEY)
    if found is None:
        return []
    if not isinstance(found, dict):
        return [f"extra.{ATTACHMENTS_KEY} must map file names to sha256 digests"]
    problems = []
    for name, digest in found.items():
        if not _plain_file_name(name) or name == manifest.artifact:
            problems.append(f"attachment {name!r} must be a plain file name beside the artifact")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            problems.append(f"attachment {name!r} needs a sha256 of 64 lowercase hex digits")
    return problems


def verify_attachment(manifest: Manifest, directory: str | Path, name: str) -> Path:
    """Return ``directory/name`` if the manifest lists it and the file matches its sha256.

    Raises ArtifactError when the manifest names no such attachment, the file is
    missing, or its bytes changed after registration.
    """
    digests = manifest.extra.get(ATTACHMENTS_KEY) or {}
    expected = digests.get(name) if isinstance(digests, dict) else None
    if not isinstance(expected, str) or not _plain_file_name(name):
        raise ArtifactError(
            f"model {manifest.name} version {manifest.version} registered no attachment {name!r}"
        )
    path = Path(directory) / name
    if not path.is_file():
        raise ArtifactError(
            f"attachment {path} of model {manifest.name} version {manifest.version} is missing"
        )
    actual = sha256_file(path)
    if actual != expected:
        raise ArtifactError(
            f"attachment {path} of model {manifest.name} version {manifest.version} fails its "
            f"sha256 check: expected {expected}, got {actual}"
        )
    return path


def verify_digest(manifest: Manifest, artifact: str | Path) -> Path:
    """Return ``artifact`` if it exists and matches the manifest's sha256.

    Backends call this again right before deserializing: joblib is pickle, so the
    bytes must be the ones that were registered.
    """
    path = Path(artifact)
    if not path.is_file():
        raise ArtifactError(
            f"artifact {path} of model {manifest.name} version {manifest.version} is missing; "
            "re-register the model"
        )
    actual = sha256_file(path)
    if actual != manifest.sha256:
        raise ArtifactError(
            f"artifact {path} of model {manifest.name} version {manifest.version} fails its "
            f"sha256 check: expected {manifest.sha256}, got {actual}; the file was changed "
            "after registration, re-register the model (with overwrite) if the change is wanted"
        )
    return path


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key that puts v2 before v10."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text) if p]


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Registry:
    """A directory of registered models; cheap to construct, reads the disk on demand."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    def models(self) -> list[str]:
        """Names with at least one registered version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and NAME_PATTERN.fullmatch(p.name) and self.versions(p.name)
        )

    def versions(self, name: str) -> list[str]:
        """Registered versions of ``name`` in natural order (v2 before v10)."""
        model_dir = self.root / check_name(name, "name")
        if not model_dir.is_dir():
            return []
        found = [
            p.name
            for p in model_dir.iterdir()
            if p.is_dir() and NAME_PATTERN.fullmatch(p.name) and (p / MANIFEST_FILE).is_file()
        ]
        return sorted(found, key=_natural_key)

    def version_dir(self, name: str, version: str) -> Path:
        return self.root / check_name(name, "name") / check_name(version, "version")

    def manifest(self, name: str, version: str) -> Manifest:
        path = self.version_dir(name, version) / MANIFEST_FILE
        if not path.is_file():
            raise ArtifactError(
                f"model {name} version {version} is not registered under {self.root}"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"cannot read manifest {path}: {exc}") from exc
        manifest = Manifest.from_dict(data)
        if (manifest.name, manifest.version) != (name, version):
            raise ArtifactError(
                f"manifest {path} describes {manifest.name} {manifest.version}, "
                f"not {name} {version}; re-register the model"
            )
        return manifest

    def artifact_path(self, manifest: Manifest) -> Path:
        return self.version_dir(manifest.name, manifest.version) / manifest.artifact

    def verified_artifact(self, manifest: Manifest) -> Path:
        """The artifact's path, after checking that it exists and matches its sha256."""
        manifest.validate()
        return verify_digest(manifest, self.artifact_path(manifest))

    def verified_attachment(self, manifest: Manifest, name: str) -> Path:
        """An attachment's path, after checking that it exists and matches its sha256."""
        manifest.validate()
        return verify_attachment(manifest, self.version_dir(manifest.name, manifest.version), name)

    def register(
        self,
        name: str,
        version: str,
        framework: str,
        artifact_path: str | Path,
        *,
        input_shape: tuple[int, ...] | list[int],
        class_labels: tuple[str, ...] | list[str],
        input_dtype: str = "float32",
        accuracy: float | None = None,
        training_time_s: float | None = None,
        extra: dict[str, Any] | None = None,
        description: str = "",
        overwrite: bool = False,
        attachments: Mapping[str, str | Path] | None = None,
        kind: str = MULTICLASS,
        threshold: float | None = None,
        outputs: tuple[str, ...] | list[str] = (),
        input_schema: list[dict[str, Any]] | tuple[dict[str, Any], ...] | None = None,
    ) -> Manifest:
        """Copy ``artifact_path`` into the registry and write its manifest.

        ``kind``, ``threshold`` and ``outputs`` declare the output kind (models/kinds.py; a
        regression model without output names has one, ``value``); ``input_schema`` the
        named fields of a tabular model.

        The sha256 is computed on the copy, so the digest describes the bytes that
        will be served. ``attachments`` maps plain file names to files copied beside
        the artifact (verification windows, say); their digests, computed on the
        copies too, go into ``extra["attachments"]``.
        """
        check_name(name, "name")
        check_name(version, "version")
        if framework not in FRAMEWORKS:
            raise InvalidInput(
                f"unknown framework {framework!r}; use one of {list(FRAMEWORKS)}",
                field="framework",
            )
        source = Path(artifact_path)
        if not source.is_file():
            raise ArtifactError(f"artifact file {source} does not exist or is not a file")
        try:
            extra_json = json.loads(json.dumps(extra or {}))
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"extra must be JSON-serializable: {exc}", field="extra") from exc
        attached = dict(attachments or {})
        if attached and ATTACHMENTS_KEY in extra_json:
            raise InvalidInput(
                f"extra.{ATTACHMENTS_KEY} is written by the registry; "
                "pass the files as attachments",
                field="extra",
            )
        for att_name, att_source in attached.items():
            if not _plain_file_name(att_name) or att_name.startswith("model."):
                raise InvalidInput(
                    f"attachment name {att_name!r} must be a plain file name not starting "
                    "with 'model.'",
                    field="attachments",
                )
            if not Path(att_source).is_file():
                raise ArtifactError(f"attachment file {att_source} does not exist")

        version_dir = self.version_dir(name, version)
        manifest_path = version_dir / MANIFEST_FILE
        if manifest_path.exists() and not overwrite:
            raise ArtifactError(
                f"model {name} version {version} is already registered under {self.root}; "
                "choose a new version or pass overwrite"
            )
        version_dir.mkdir(parents=True, exist_ok=True)
        artifact_name = "model" + source.suffix.lower()
        target = version_dir / artifact_name

        fd, tmp = tempfile.mkstemp(prefix=".artifact-", suffix=".tmp", dir=version_dir)
        os.close(fd)
        att_tmps: dict[str, str] = {}
        try:
            shutil.copyfile(source, tmp)
            digest = sha256_file(tmp)
            for att_name, att_source in attached.items():
                fd, att_tmps[att_name] = tempfile.mkstemp(
                    prefix=".attachment-", suffix=".tmp", dir=version_dir
                )
                os.close(fd)
                shutil.copyfile(att_source, att_tmps[att_name])
            if att_tmps:
                extra_json[ATTACHMENTS_KEY] = {n: sha256_file(t) for n, t in att_tmps.items()}
            manifest = Manifest(
                name=name,
                version=version,
                framework=framework,
                input_shape=tuple(int(d) for d in input_shape),
                input_dtype=input_dtype,
                class_labels=tuple(str(c) for c in class_labels),
                accuracy=None if accuracy is None else float(accuracy),
                training_time_s=None if training_time_s is None else float(training_time_s),
                created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                artifact=artifact_name,
                sha256=digest,
                extra=extra_json,
                description=description,
                kind=kind,
                threshold=threshold,
                outputs=tuple(str(o) for o in outputs) or (("value",) if kind == "regression"
                                                            else ()),
                input_schema=None if input_schema is None else tuple(dict(f) for f in input_schema),
            )
            try:
                manifest.validate()
            except ArtifactError as exc:
                raise InvalidInput(exc.message) from exc
            # Unpublish the old version first, so no reader pairs the old
            # manifest with the new artifact.
            manifest_path.unlink(missing_ok=True)
            os.replace(tmp, target)
            for att_name, att_tmp in att_tmps.items():
                os.replace(att_tmp, version_dir / att_name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            for att_tmp in att_tmps.values():
                Path(att_tmp).unlink(missing_ok=True)
            raise
        keep_names = {artifact_name, MANIFEST_FILE, *att_tmps}
        for stale in version_dir.iterdir():
            keep = stale.name in keep_names or stale.name.startswith(".")
            if not keep and stale.is_file():
                stale.unlink()
        _write_json_atomic(manifest_path, manifest.to_dict())
        return manifest
