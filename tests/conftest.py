"""One Ray cluster and one Serve instance for the whole test session (a cluster start costs 20-30 s here).

Tests that need a differently configured app deploy it beside the default one under its own route prefix with
``deploy_app``; everything is shut down at the end of the session.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hypothesis import settings  # noqa: E402

# CI runs the property tests with a fixed seed, so a run is reproducible; locally each run explores new examples.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from serve_app.ray_env import apply_serve_env  # noqa: E402

apply_serve_env()  # the Ray settings `make serve` runs with (HAProxy in front of the ingress replicas)

AUDIO_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "audio"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def manifest() -> list[dict]:
    path = AUDIO_DIR / "manifest.jsonl"
    if not path.exists():
        pytest.fail(f"the shared audio set is missing: {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    return AUDIO_DIR


@pytest.fixture(scope="session")
def metrics_port() -> int:
    return _free_port()


@pytest.fixture(scope="session")
def serve_instance(metrics_port):
    import ray
    from ray import serve

    port = _free_port()
    # Logical CPUs beyond the 2 real cores let fractional replicas of several apps share the machine.
    ray.init(
        address="local", num_cpus=6, include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics_port
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def metrics_url(serve_instance, metrics_port) -> str:
    """Ray's Prometheus endpoint for the session cluster (metrics appear there some seconds after they are recorded)."""
    return f"http://127.0.0.1:{metrics_port}/metrics"


@pytest.fixture(scope="session")
def deploy_app(serve_instance):
    """deploy_app(name, args) deploys build_app(args) at /<name> (or / for "stt") and returns its base URL."""
    from ray import serve

    from serve_app.app import build_app

    deployed: dict[str, str] = {}

    def deploy(name: str, args: dict) -> str:
        if name not in deployed:
            prefix = "/" if name == "stt" else f"/{name}"
            serve.run(build_app(args), name=name, route_prefix=prefix)
            deployed[name] = serve_instance.rstrip("/") + ("" if prefix == "/" else prefix)
            _wait_routed(deployed[name])
        return deployed[name]

    return deploy


def _wait_routed(url: str, timeout_s: float = 60) -> None:
    """Until the proxy routes the app's own paths to it: HAProxy reloads its routes a moment after ``serve.run``
    returns, and until then a path under a new prefix goes to the app at ``/``."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ui/style.css", timeout=5).headers.get("content-type", "").startswith("text/css"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} is not routed to its app")


WHISPER_TEST_MODEL = {
    "name": "whisper-tiny.en",
    "backend": "whisper",
    "aliases": ["whisper-1"],
    "whisper": {"beam_size": 5, "cpu_threads": 1, "num_workers": 2},
    "deployment": {"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 16},
}


@pytest.fixture(scope="session")
def base_url(deploy_app) -> str:
    """The default test app: the embedded Whisper tiny.en (Voxtral tests deploy their own app)."""
    return deploy_app("stt", {"models": [WHISPER_TEST_MODEL]})


@pytest.fixture(scope="session")
def tiny_voxtral_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised Voxtral in Mistral format, built by the project's own checkpoint command."""
    from fixtures.voxtral_checkpoint import build

    return build(tmp_path_factory.mktemp("tiny-voxtral"), size="tiny")


def tiny_voxtral_model(checkpoint: Path, name: str = "voxtral-tiny") -> dict:
    return {
        "name": name,
        "backend": "voxtral",
        "voxtral": {
            "model": str(checkpoint),
            "device": "cpu",
            "enforce_eager": True,
            "max_model_len": 2048,
            "max_num_seqs": 8,
            "kv_cache_memory_bytes": 64 << 20,
            "scheduling_policy": "priority",  # realtime previews (partials) queue behind finals
        },
        "deployment": {"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 16},
    }


@pytest.fixture(scope="session")
def voxtral_url(deploy_app, tiny_voxtral_dir) -> str:
    """An app serving the tiny Voxtral through the real vLLM engine (CPU build) beside the embedded Whisper."""
    return deploy_app("vox", {"models": [tiny_voxtral_model(tiny_voxtral_dir), WHISPER_TEST_MODEL]})
