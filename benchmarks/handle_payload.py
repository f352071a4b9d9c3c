"""What one Serve handle call costs by the size and form of the audio it carries (the ingress -> model replica hop).

An echo deployment returns the length of what it got; the same clip goes across as a float32 array, as its raw bytes,
and as int16 (what the ingress sends, ``model_server.to_pcm16``), one form after another, 300 times each, in Ray
Serve's settings of ``serve_app/ray_env.py`` (throughput mode: gRPC between replicas). No model, no HTTP; one local
Ray.

    python benchmarks/handle_payload.py --out benchmarks/results/handle_payload_cpu.json
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_serve import start_local_serve  # noqa: E402

from serve_app.model_server import to_pcm16  # noqa: E402


async def measure(handle, seconds: list[int], calls: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for s in seconds:
        audio = (0.1 * rng.standard_normal(16000 * s)).astype(np.float32)
        forms = {
            "float32_array": lambda: audio,
            "float32_bytes": lambda: audio.tobytes(),
            "int16_array": lambda: to_pcm16(audio),
        }
        took: dict[str, list[float]] = {name: [] for name in forms}
        for i in range(calls + 10):  # the first 10 rounds warm up
            for name, make in forms.items():
                payload = make()
                started = time.perf_counter()
                await handle.take.remote(payload)
                if i >= 10:
                    took[name].append(time.perf_counter() - started)
        out[f"{s}s"] = {name: round(1000 * float(np.median(v)), 2) for name, v in took.items()}
        print(json.dumps({f"{s}s_p50_ms": out[f"{s}s"]}), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--calls", type=int, default=300)
    a = p.parse_args()
    import ray
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Echo:
        async def take(self, audio) -> int:
            return len(audio)

    start_local_serve()  # the project's Serve settings (serve_app/ray_env.py), Serve on a free loopback port
    loop = asyncio.new_event_loop()  # the handle's router runs on it (throughput mode): Serve is shut down from it
    try:
        serve.run(Echo.bind(), name="handle-payload", route_prefix="/handle-payload")
        handle = serve.get_deployment_handle("Echo", app_name="handle-payload")
        p50 = loop.run_until_complete(measure(handle, [3, 10, 30], a.calls))
    finally:
        loop.run_until_complete(serve.shutdown_async())
        loop.close()
        ray.shutdown()
    out = {
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__},
        "p50_ms_per_call": p50,
    }
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
