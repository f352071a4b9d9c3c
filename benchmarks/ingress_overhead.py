"""What the product's ingress adds to a request, by clip length and chunking setting: HAProxy -> the real ``Ingress``
(multipart, decoding, the speech check, the handle call with the audio) -> a stub model replica that takes a fixed
``--model-ms`` and answers -> back. The overhead is the client's median latency minus the stub's time.

Each setting is its own app (ingress + stub) on one local Ray with the project's Serve settings; the same clips go
through every app in turn. Traffic to 127.0.0.1 only, a fixed number of sequential requests.

    python benchmarks/ingress_overhead.py --out benchmarks/results/ingress_overhead_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from loadgen import ClipMaker, http_session, speech_pool, upload_form, wav_bytes  # noqa: E402
from local_serve import start_local_serve  # noqa: E402  (before ray.serve: it applies the project's Serve settings)
from ray import serve  # noqa: E402

from serve_app.transcript import Transcript, duration_of  # noqa: E402

SETTINGS = {  # app name -> chunking config
    "alongside": {"speech_check": "alongside"},
    "before": {"speech_check": "before"},
    "no_vad": {"enabled": False},
}


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class StubModel:
    """Stands in for the model replica: answers after ``model_s`` (the engine's time)."""

    def __init__(self, model_s: float):
        self.model_s = model_s

    async def transcribe(self, audio: np.ndarray, options) -> Transcript:
        await asyncio.sleep(self.model_s)
        return Transcript(text="x" * 100, language="en", duration=duration_of(audio))

    async def check_health(self) -> None:
        pass


def deploy(model_ms: float) -> None:
    from serve_app.config import AppConfig
    from serve_app.ingress import Ingress

    for name, chunking in SETTINGS.items():
        config = AppConfig.model_validate({"models": [{"name": "stub", "backend": "whisper"}], "chunking": chunking})
        ingress = Ingress.options(name="ingress", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
        stub = StubModel.options(name="model-stub").bind(model_ms / 1000)
        serve.run(ingress.bind(config, {"stub": stub}), name=name, route_prefix=f"/{name}")


async def measure(base: str, maker: ClipMaker, lengths: list[int], requests: int, model_ms: float) -> dict:
    session = http_session()

    async def post(app: str, wav: bytes) -> float:
        form = upload_form(wav, model="stub")
        started = time.perf_counter()
        async with session.post(f"{base}/{app}/v1/audio/transcriptions", data=form) as r:
            r.raise_for_status()
            await r.read()
        return time.perf_counter() - started

    out = {}
    for seconds in lengths:
        took: dict[str, list[float]] = {app: [] for app in SETTINGS}
        for i in range(requests + 5):  # the first 5 rounds warm up
            wav = wav_bytes(maker.clip(seconds))  # encoded before the clock starts: the client's work
            for app in SETTINGS:
                t = await post(app, wav)
                if i >= 5:
                    took[app].append(t)
        row = {f"{app}_overhead_p50_ms": round(1000 * float(np.median(v)) - model_ms, 2) for app, v in took.items()}
        out[f"{seconds}s"] = row
        print(json.dumps({f"{seconds}s": row}), flush=True)
    await session.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--audio-dir", default=str(REPO.parent / "shared" / "audio"))
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--model-ms", type=float, default=100.0, help="the stub model's time per call")
    p.add_argument("--lengths", default="3,10,30")
    a = p.parse_args()
    import ray

    port = start_local_serve()
    try:
        deploy(a.model_ms)
        wavs = sorted(Path(a.audio_dir).glob("en_*.wav"))
        maker = ClipMaker(speech_pool(wavs), seed=4)
        lengths = [int(s) for s in a.lengths.split(",")]
        result = asyncio.run(measure(f"http://127.0.0.1:{port}", maker, lengths, a.requests, a.model_ms))
    finally:
        serve.shutdown()
        ray.shutdown()
    out = {
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__},
        "model_ms": a.model_ms,
        "settings": SETTINGS,
        "overhead_p50_ms": result,
    }
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
