"""What Ray Serve itself adds to a request, per Serve setting: HAProxy -> a FastAPI ingress that reads a multipart
upload of a 3 s WAV -> a handle call with the audio array to a model deployment that answers at once -> back.

No model, so the figure is Serve's own part of the product's overhead (the product adds decoding and the no-speech
check). Each mode runs in a fresh Ray, started by a child process with that mode's environment; traffic goes to
127.0.0.1 only, a fixed number of sequential requests.

    python benchmarks/serve_overhead.py --out benchmarks/results/serve_overhead_cpu.json
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
from fastapi import FastAPI, File, Form, UploadFile
from ray import serve

MODES = {
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"},
    "haproxy+throughput_optimized": {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_LOG_TO_STDERR": "1",
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
    },
    # serve_app/ray_env.py's: also the router in its own thread, so handles work outside an event loop
    "haproxy+throughput_optimized+router_thread": {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_LOG_TO_STDERR": "1",
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
    },
}
PORT = 8123


api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Model:
    async def transcribe(self, audio: np.ndarray, options: dict) -> dict:
        return {"text": "x" * 100, "samples": len(audio)}


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Ingress:
    def __init__(self, model):
        self.model = model

    @api.post("/v1/audio/transcriptions")
    async def transcribe(self, file: UploadFile = File(...), model: str = Form("m")):
        data = await file.read()
        audio = np.frombuffer(data[44:], np.int16).astype(np.float32) / 32768
        return await self.model.transcribe.remote(audio, {"language": "en", "model": model})


def measure(requests: int) -> dict:
    """In this process: start Ray and the two deployments, time sequential requests, shut down."""
    import httpx
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        serve.run(Ingress.bind(Model.bind()), name="overhead", route_prefix="/")
        wav = b"\0" * 44 + (np.random.default_rng(0).standard_normal(48000) * 1000).astype(np.int16).tobytes()
        url = f"http://127.0.0.1:{PORT}/v1/audio/transcriptions"
        took = []
        with httpx.Client(timeout=30) as client:
            for i in range(requests + 20):  # the first 20 warm up
                started = time.perf_counter()
                r = client.post(url, files={"file": ("a.wav", wav)})
                r.raise_for_status()
                if i >= 20:
                    took.append(time.perf_counter() - started)
        took.sort()
        return {
            "requests": requests,
            "p50_ms": round(1000 * statistics.median(took), 2),
            "p90_ms": round(1000 * took[int(0.9 * len(took))], 2),
        }
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2, help="each mode this many times, alternating")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # the child process's role
    a = p.parse_args()
    if a.measure:
        print(json.dumps(measure(a.requests)))
        return
    runs = []
    for round_ in range(a.rounds):
        for mode, env in MODES.items():
            child = subprocess.run(
                [sys.executable, __file__, "--out", a.out, "--requests", str(a.requests), "--measure", mode],
                env={k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")} | env,
                capture_output=True, text=True, timeout=600, check=True,
            )  # fmt: skip
            row = {"mode": mode, "round": round_, **json.loads(child.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            runs.append(row)
    result = {
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "ray": __import__("ray").__version__},
        "modes": MODES,
        "runs": runs,
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
