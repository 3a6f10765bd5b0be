"""Registering a user's own model file: validation of the framework-specific arguments.

No framework is imported at module level. torch and Keras artifacts are only copied
and hashed; they are first deserialized by a backend, after their sha256 has been
checked again. A scikit-learn artifact is also loaded once here, from a private copy
whose bytes are the ones registered, to choose and record its inference path
(``models.forest``) on the verification windows saved beside it (``verify.npy``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.registry import Manifest, Registry
from models.verify import VERIFY_FILE, probe_windows, sample_windows, write_windows
from serve.errors import InvalidInput

__all__ = ["FRAMEWORK_ALIASES", "OUTPUTS", "register_user_model"]

FRAMEWORK_ALIASES: dict[str, str] = {
    "sklearn": "sklearn",
    "scikit-learn": "sklearn",
    "torch": "torch",
    "pytorch": "torch",
    "tensorflow": "tensorflow",
    "tf": "tensorflow",
    "keras": "tensorflow",
}
OUTPUTS = ("probabilities", "logits")
_SUFFIXES = {
    "sklearn": (".joblib", ".pkl", ".pickle"),
    "torch": (".pt", ".pth"),
    "tensorflow": (".keras",),
}
_MODULE_CLASS = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def register_user_model(
    registry: Registry,
    name: str,
    version: str,
    framework: str,
    path: str | Path,
    *,
    input_shape: Sequence[int],
    class_labels: Sequence[str],
    torch_class: str | None = None,
    init_kwargs: dict[str, Any] | None = None,
    output: str = "probabilities",
    description: str = "",
    overwrite: bool = False,
    verify_windows: Any = None,
) -> Manifest:
    """Register a model file trained outside abserve.

    - sklearn: a joblib/pickle file of any fitted estimator with ``predict_proba``.
    - torch: a ``state_dict`` file (``torch.save(model.state_dict(), path)``) plus
      ``torch_class="pkg.module:Class"`` and the ``init_kwargs`` to build it; whole
      pickled modules are refused because they are loaded with ``weights_only=True``.
    - tensorflow / keras: a ``.keras`` file (``model.save("m.keras")``).

    ``verify_windows``: held-out windows ``(n, *input_shape)`` (an array or a ``.npy``
    path) on which a faster inference path must match the plain one; the first 64 are
    saved beside the artifact. Without them a scikit-learn model is verified on a
    seeded probe set (saved the same way) and torch / Keras models at load only.
    """
    fw = FRAMEWORK_ALIASES.get(str(framework).lower())
    if fw is None:
        raise InvalidInput(
            f"unknown framework {framework!r}; use one of sklearn, torch, tensorflow (keras)",
            field="framework",
        )
    source = Path(path)
    if not source.is_file():
        raise InvalidInput(f"model file {source} does not exist or is not a file", field="path")
    suffix = source.suffix.lower()
    if suffix not in _SUFFIXES[fw]:
        raise InvalidInput(
            f"a {fw} model file must end in {' or '.join(_SUFFIXES[fw])}, got {source.name!r}",
            field="path",
        )
    if output not in OUTPUTS:
        raise InvalidInput(f"output must be one of {list(OUTPUTS)}, got {output!r}", field="output")
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InvalidInput(
            f"input_shape must be positive integers per instance, e.g. (50, 9); got {shape}",
            field="input_shape",
        )
    labels = tuple(class_labels)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise InvalidInput(
            f"class_labels must hold at least two distinct labels, got {list(labels)}",
            field="class_labels",
        )

    extra: dict[str, Any] = {"output": output}
    if fw == "torch":
        if not torch_class or not _MODULE_CLASS.fullmatch(torch_class):
            raise InvalidInput(
                "a torch model needs torch_class='package.module:ClassName' naming an importable "
                f"nn.Module subclass; got {torch_class!r}",
                field="torch_class",
            )
        if init_kwargs is not None and not isinstance(init_kwargs, dict):
            raise InvalidInput(
                "init_kwargs must be a dict of keyword arguments", field="init_kwargs"
            )
        extra.update(module_class=torch_class, init_kwargs=dict(init_kwargs or {}))
    else:
        if torch_class is not None or init_kwargs is not None:
            raise InvalidInput(
                f"torch_class and init_kwargs apply to torch models only, not {fw}",
                field="torch_class",
            )
        if fw == "sklearn" and output != "probabilities":
            raise InvalidInput(
                "sklearn models are served through predict_proba, so output must be "
                "'probabilities'",
                field="output",
            )
        if fw == "tensorflow" and not zipfile.is_zipfile(source):
            raise InvalidInput(
                f"{source} is not a Keras v3 .keras archive; save it with model.save('m.keras')",
                field="path",
            )
    windows = _windows(verify_windows, shape)
    with tempfile.TemporaryDirectory(prefix="abserve-register-") as tmp:
        attachments: dict[str, Path] = {}
        if windows is not None or fw == "sklearn":
            source_kind = "held-out" if windows is not None else "probe"
            if windows is None:
                windows = probe_windows(shape)
            attachments[VERIFY_FILE] = write_windows(Path(tmp) / VERIFY_FILE, windows)
            extra["verify_windows"] = {
                "file": VERIFY_FILE, "rows": int(len(windows)), "source": source_kind,
            }
        if fw == "sklearn":
            # Load a private copy: what is verified is what gets hashed and registered.
            copy = Path(tmp) / ("model" + suffix)
            shutil.copyfile(source, copy)
            source = copy
            from models.forest import registration_extra

            assert windows is not None
            extra.update(registration_extra(copy, shape, extra, windows))
        return registry.register(
            name,
            version,
            fw,
            source,
            input_shape=shape,
            class_labels=labels,
            extra=extra,
            description=description,
            overwrite=overwrite,
            attachments=attachments,
        )


def _windows(given: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if given is None:
        return None
    if isinstance(given, str | Path):
        try:
            given = np.load(given, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"cannot read verification windows {given}: {exc}", field="verify_windows"
            ) from exc
    try:
        return sample_windows(given, shape)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field="verify_windows") from exc
