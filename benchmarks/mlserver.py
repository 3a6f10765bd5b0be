"""Variant (f): MLServer 1.7.1 + mlserver-sklearn 1.7.1 serving the same v1 artifact.

MLServer is a reference, not a dependency: the bench installs it into a
virtualenv of its own (never into the project's .venv), by default
``~/.cache/abserve/mlserver-1.7.1-sklearn-<our scikit-learn>``, reused while it
is whole and rebuilt when it is not. That virtualenv gets the same
scikit-learn, numpy, scipy and joblib versions as the process running the
bench (read with importlib.metadata), so the unpickled pipeline is the same
code on both sides, and ``uvloop==0.21.0``: uvloop 0.22 breaks MLServer
1.7.1's start (SeldonIO/MLServer#2286). mlserver-sklearn 1.7.1 declares
``scikit-learn`` without a version bound, so pinning ours needs no
``--no-deps`` workaround. No extras: the build stays lean (about a minute
from PyPI on 2 cores, about 530 MB).

The server runs as users run it: ``mlserver start DIR`` with a settings.json
(``parallel_workers`` 0: inference in the HTTP process; ``debug`` false: no
access log, as (a) has none; everything else, the metrics server included, at
MLServer's defaults) and one model-settings.json (``mlserver_sklearn.SKLearnModel``,
adaptive batching ``max_batch_size`` 64, ``max_batch_time`` 5 ms, the
verified artifact as ``uri``). The pickled pipeline references
``models.activity.features.window_stats``, so the process gets the repository
on PYTHONPATH (that module needs numpy only). Requests go to its OIP REST route,
``POST /v2/models/activity/infer``, asking for ``predict_proba`` (the sklearn
runtime answers ``predict``, the labels, when a request names no output).

Before any load, ``check_answers`` sends a few known windows at once (so the
adaptive batcher may merge them) and compares the answers with the artifact's
``predict_proba`` computed in the bench's own process: a difference above 1e-6
fails the variant (``MLServerMismatch``). A virtualenv that cannot be built
(no network to the package index, say) raises ``MLServerUnavailable``, and the
bench skips (f) with that reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from serve.local.pids import psutil_module, stop_pid
from serve.local.ports import free_port

__all__ = [
    "MLSERVER_VERSION",
    "MLServer",
    "MLServerFailed",
    "MLServerMismatch",
    "MLServerUnavailable",
    "check_answers",
    "default_venv",
    "ensure_venv",
    "pinned_versions",
    "requirements",
    "start",
    "venv_info",
    "write_settings",
]

MLSERVER_VERSION = "1.7.1"
UVLOOP = "0.21.0"  # SeldonIO/MLServer#2286: uvloop 0.22 breaks MLServer 1.7.1's start
SAME_AS_OURS = ("scikit-learn", "numpy", "scipy", "joblib")
MODEL_NAME = "activity"
MAX_BATCH_SIZE = 64
MAX_BATCH_TIME_S = 0.005
TOLERANCE = 1e-6
MARKER = "abserve-mlserver.json"
ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 900.0
_PROBE = (
    "import json, importlib.metadata as m; import mlserver, mlserver_sklearn, sklearn, numpy, "
    "uvloop; print(json.dumps({p: m.version(p) for p in %r}))"
)


class MLServerUnavailable(RuntimeError):
    """MLServer's virtualenv could not be built or is not usable: (f) is skipped."""


class MLServerFailed(RuntimeError):
    """MLServer was installed but did not serve (it exited, or never got ready): (f) failed."""


class MLServerMismatch(MLServerFailed):
    """MLServer answered, but not what the artifact's predict_proba says: (f) failed."""


# ---------------------------------------------------------------- the virtualenv


def pinned_versions() -> dict[str, str]:
    """Every requirement of the virtualenv, name -> exact version."""
    versions = {"mlserver": MLSERVER_VERSION, "mlserver-sklearn": MLSERVER_VERSION,
                "uvloop": UVLOOP}
    for name in SAME_AS_OURS:
        versions[name] = metadata.version(name)
    return versions


def requirements(versions: dict[str, str] | None = None) -> list[str]:
    return [f"{k}=={v}" for k, v in (versions or pinned_versions()).items()]


def default_venv(versions: dict[str, str] | None = None) -> Path:
    versions = versions or pinned_versions()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "abserve" / f"mlserver-{MLSERVER_VERSION}-sklearn-{versions['scikit-learn']}"


def _probe(venv: Path, names: list[str]) -> dict[str, str]:
    """The installed versions of ``names``, read inside the virtualenv (all imported once)."""
    python = venv / "bin" / "python"
    if not python.exists():
        raise MLServerUnavailable(f"{python} does not exist")
    proc = subprocess.run([str(python), "-c", _PROBE % (names,)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
                          env=_clean_env())
    if proc.returncode != 0:
        raise MLServerUnavailable(f"its Python cannot import MLServer: {_last_line(proc.stderr)}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _last_line(text: str) -> str:
    """The line of a pip or MLServer log that says what went wrong (the last one if none does).

    pip's errors start with ``ERROR:``; MLServer's are logged as ``... [mlserver] ERROR -
    ...`` with the exception (``KeyError: 110``, say) further up, named here too.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR") or " ERROR - " in line]
    if not errors:
        return (lines or ["(no output)"])[-1][:300]
    cause = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)(: |$)", line)]
    return (errors[-1] + (f" ({cause[-1]})" if cause else ""))[:300]


def _healthy(venv: Path, versions: dict[str, str]) -> bool:
    try:
        recorded = json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if recorded.get("versions") != versions:
        return False
    try:
        return _probe(venv, list(versions)) == versions
    except (MLServerUnavailable, OSError, ValueError, subprocess.TimeoutExpired):
        return False


def _create(venv: Path) -> None:
    """An empty virtualenv (with pip) on the interpreter that runs the bench."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True,
                   timeout=300, stdin=subprocess.DEVNULL)


def _pip_install(venv: Path, reqs: list[str], log_path: Path) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
           "--no-input", "--retries", "2", "--timeout", "30", *reqs]
    with open(log_path, "ab") as logf:
        logf.write(("$ " + " ".join(cmd) + "\n").encode())
        logf.flush()
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT_S, check=False,
                              env=_clean_env())
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")
        raise MLServerUnavailable(f"pip install exited {proc.returncode}: {_last_line(tail)} "
                                  f"(log: {log_path})")


def ensure_venv(venv: Path | None = None, log_path: Path | None = None) -> Path:
    """MLServer's virtualenv, built when absent or broken; MLServerUnavailable if it cannot be.

    One build at a time (a lock file beside the directory): a second bench waits
    for the first and then reuses its virtualenv. The marker file is written
    last, once the pinned versions import, so a half-built directory is rebuilt.
    """
    versions = pinned_versions()
    venv = (venv or default_venv(versions)).expanduser().resolve()
    log_path = log_path or venv.parent / f"{venv.name}.build.log"
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        with open(venv.parent / f"{venv.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _healthy(venv, versions):
                return venv
            if venv.exists():
                # Only what is a virtualenv (or nothing yet) is ever removed: a mistyped
                # --mlserver-venv must not cost a directory of something else.
                if not ((venv / "pyvenv.cfg").is_file() or (venv / MARKER).is_file()
                        or (venv.is_dir() and not any(venv.iterdir()))):
                    raise MLServerUnavailable(f"{venv} exists and is not a virtualenv; "
                                              "refusing to replace it")
                print(f"MLServer virtualenv {venv} is incomplete or stale: rebuilding",
                      flush=True)
                shutil.rmtree(venv)
            print(f"building MLServer's virtualenv {venv} ({' '.join(requirements(versions))})"
                  " ...", flush=True)
            started = time.monotonic()
            log_path.write_text("")
            _create(venv)
            _pip_install(venv, requirements(versions), log_path)
            found = _probe(venv, list(versions))
            if found != versions:
                raise MLServerUnavailable(f"installed {found}, wanted {versions}")
            built_s = round(time.monotonic() - started, 1)
            (venv / MARKER).write_text(json.dumps({"versions": versions, "built_s": built_s}))
            print(f"built in {built_s:.0f} s", flush=True)
            return venv
    except MLServerUnavailable as exc:
        raise MLServerUnavailable(f"MLServer virtualenv could not be built: {exc}") from None
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None)
        reason = _last_line(detail.decode(errors="replace")) if isinstance(detail, bytes) else exc
        raise MLServerUnavailable(f"MLServer virtualenv could not be built: {reason}") from None


def venv_info(venv: Path) -> dict[str, Any]:
    """What the report says about the virtualenv: its path, versions, build time."""
    try:
        recorded = json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        recorded = {}
    return {"venv": str(venv), **recorded}


# ---------------------------------------------------------------- the server


def _clean_env() -> dict[str, str]:
    """This environment less what would mix the two Pythons or override MLServer's settings."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    return {k: v for k, v in os.environ.items()
            if k not in drop and not k.startswith("MLSERVER")}


def write_settings(root: Path, artifact: Path, ports: dict[str, int]) -> Path:
    """settings.json and <model>/model-settings.json under ``root``; returns ``root``."""
    settings = {
        "debug": False,  # no access log (the naive server has none either)
        "parallel_workers": 0,  # inference in the HTTP process
        "host": "127.0.0.1",
        "http_port": ports["http"],
        "grpc_port": ports["grpc"],
        "metrics_port": ports["metrics"],
    }
    model = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": MAX_BATCH_SIZE,
        "max_batch_time": MAX_BATCH_TIME_S,
        "parameters": {"uri": str(artifact)},
    }
    (root / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    (root / MODEL_NAME / "model-settings.json").write_text(json.dumps(model, indent=2))
    return root


def _ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(set(ports.values())) < 3:
        ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    return ports


@dataclass
class MLServer:
    pid: int
    port: int
    settings: dict[str, Any]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    route = f"/v2/models/{MODEL_NAME}/infer"

    @property
    def infer_url(self) -> str:
        return self.base + self.route

    def pids(self) -> list[int]:
        """The server and its children (none with parallel_workers 0, but count any)."""
        psutil = psutil_module()
        with contextlib.suppress(psutil.Error):
            return [self.pid] + [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        return [self.pid]


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path,
                timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MLServerFailed(f"MLServer exited {proc.returncode} before it was ready: "
                               f"{_last_line(log_path.read_text(errors='replace'))} "
                               f"(log: {log_path})")
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.3)
    raise MLServerFailed(f"MLServer not ready at {url} within {timeout_s:.0f}s (last: {last!r}; "
                       f"log: {log_path})")


@contextlib.contextmanager
def start(venv: Path, artifact: Path, workdir: Path, log_path: Path,
          ready_timeout_s: float = 180.0) -> Iterator[MLServer]:
    """``mlserver start`` in its own session; stopped by PID (children too) on the way out."""
    root = write_settings(workdir / "mlserver", artifact, _ports())
    settings = json.loads((root / "settings.json").read_text())
    env = _clean_env()
    env["PYTHONPATH"] = str(ROOT)  # models.activity.features, which the pickle names
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            [str(venv / "bin" / "mlserver"), "start", str(root)], cwd=root, env=env,
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = MLServer(pid=proc.pid, port=settings["http_port"], settings=settings)
    children: list[int] = []
    try:
        _wait_ready(proc, f"{server.base}/v2/health/ready", log_path, ready_timeout_s)
        children = server.pids()[1:]
        yield server
    finally:
        children = sorted(set(children) | set(server.pids()[1:]))
        stop_pid(proc.pid, timeout_s=30)
        for pid in children:
            stop_pid(pid, timeout_s=5)


# ---------------------------------------------------------------- the answers


def oip_request(window: Any) -> dict[str, Any]:
    """One window as an OIP request for predict_proba (the load's bodies have this shape)."""
    import numpy as np

    x = np.asarray(window, dtype=np.float32)
    return {
        "inputs": [{"name": "window", "shape": [1, *x.shape], "datatype": "FP32",
                    # float32 -> the exact double: MLServer's FP32 decoding gives x back
                    "data": [float(v) for v in x.ravel()]}],
        "outputs": [{"name": "predict_proba"}],
    }


def check_answers(url: str, artifact: Path, n: int = 8, seed: int = 2024) -> dict[str, Any]:
    """``n`` known windows sent at once; MLServerMismatch unless each answer is ours +- 1e-6."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import joblib
    import numpy as np

    from models.activity.data import make_windows

    X, _ = make_windows(n, seed)
    X = np.asarray(X, dtype=np.float32)
    expected = np.asarray(joblib.load(artifact).predict_proba(X), dtype=np.float64)

    def ask(i: int) -> np.ndarray:
        r = httpx.post(url, json=oip_request(X[i]), timeout=30)
        if r.status_code != 200:
            raise MLServerMismatch(f"window {i}: HTTP {r.status_code} {r.text[:300]}")
        outputs = {o["name"]: o for o in r.json().get("outputs", [])}
        if "predict_proba" not in outputs:
            raise MLServerMismatch(f"window {i}: no predict_proba output in {sorted(outputs)}")
        out = outputs["predict_proba"]
        return np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])

    with ThreadPoolExecutor(max_workers=n) as pool:
        got = list(pool.map(ask, range(n)))
    shapes = {g.shape for g in got}
    if shapes != {(1, expected.shape[1])}:
        raise MLServerMismatch(f"answer shapes {sorted(shapes)}, expected "
                               f"(1, {expected.shape[1]}) each")
    diff = float(np.abs(np.concatenate(got) - expected).max())
    result = {"windows": n, "max_abs_diff": diff, "tolerance": TOLERANCE,
              "passed": diff <= TOLERANCE}
    if not result["passed"]:
        raise MLServerMismatch(f"MLServer's predict_proba differs from the artifact's by up to "
                               f"{diff:.3g} (> {TOLERANCE:g}) on {n} known windows")
    return result
