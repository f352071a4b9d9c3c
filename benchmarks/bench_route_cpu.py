"""CPU per request in the ingress and the model replica, by route, through the real engine: transcriptions, chat
without ``stream`` (the old clients' request) and chat with it, on the same clips with answers of the same length.

On a GPU the engine serves ~150 requests a second of 10 s clips with ``audio_window_s: 10``, and then what the
replicas spend per request can bound a route before the engine does (benchmarks/NOTES-gpu.md, fifteenth session: chat
1 059 against transcriptions 1 542 audio-s/s). The engine core's own process is not counted: it does the same work
on every route. Here the tiny random Voxtral runs on the CPU build of vLLM, so the engine is slow, but the replicas'
CPU per request is what the GPU machine's replicas spend too, less its faster cores.

    python -m benchmarks.bench_route_cpu --out benchmarks/results/route_cpu.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.bench_gpu import http_sender
from benchmarks.bench_gpu_peers import SERVED_NAME, chat_sender
from benchmarks.common import (
    SHARED_AUDIO,
    command_line,
    cpu_seconds,
    machine_info,
    offline,
    replica_processes,
    write_result,
)
from benchmarks.loadgen import ClipMaker, run_http, run_load, speech_pool
from benchmarks.local_serve import run_app, start_local_serve, stop_local_serve

ROUTES = {
    "transcriptions": http_sender,
    "chat": chat_sender,
    "chat (stream)": lambda base_url, max_tokens: chat_sender(base_url, max_tokens, stream=True),
}


async def load(make_sender, base_url: str, max_tokens: int, clips: list, concurrency: int) -> dict:
    return await run_load(make_sender(base_url, max_tokens), clips, concurrency)  # a sender needs the running loop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=48, help="per route")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--clip-s", type=float, default=5.0)
    p.add_argument("--max-tokens", type=int, default=38, help="every answer's length (random weights never stop)")
    p.add_argument("--rounds", type=int, default=2, help="each route this many times, interleaved")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    offline()

    from fixtures.voxtral_checkpoint import build

    checkpoint = build(Path(tempfile.mkdtemp(prefix="tiny-voxtral-")), size="tiny")
    model = {"name": SERVED_NAME, "backend": "voxtral",
             "voxtral": {"model": str(checkpoint), "device": "cpu", "enforce_eager": True, "max_model_len": 2048,
                         "max_num_seqs": 8, "kv_cache_memory_bytes": 64 << 20},
             "deployment": {"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 16}}  # fmt: skip
    result: dict = {"command": command_line(), "machine": machine_info(), "requests_per_route": a.requests,
                    "concurrency": a.concurrency, "clip_s": a.clip_s, "completion_tokens": a.max_tokens, "rounds": []}  # fmt: skip
    port = start_local_serve(num_cpus=6)  # logical CPUs past the 2 cores, as the tests give fractional replicas
    try:
        run_app({"models": [model]})
        base = f"http://127.0.0.1:{port}"
        processes = replica_processes("stt")
        maker = ClipMaker(speech_pool(sorted(SHARED_AUDIO.glob("en_*.wav"))), seed=3)
        for _ in range(a.rounds):
            row = {}
            for route, sender in ROUTES.items():
                clips = [maker.clip(a.clip_s) for _ in range(a.requests)]
                before, started = cpu_seconds(processes), time.perf_counter()
                done = run_http(load(sender, base, a.max_tokens, clips, a.concurrency))
                wall, after = time.perf_counter() - started, cpu_seconds(processes)
                row[route] = {
                    "errors": done["errors"], "error_samples": done["error_samples"], "p50_s": done["p50_s"],
                    "wall_s": round(wall, 2),
                    "cpu_ms_per_request": {k: round(1000 * (after[k] - before[k]) / a.requests, 2) for k in after},
                }  # fmt: skip
                print(json.dumps({route: row[route]}), flush=True)
            result["rounds"].append(row)
            write_result(a.out, result, echo=False)  # partial
    finally:
        stop_local_serve()
    write_result(a.out, result)


if __name__ == "__main__":
    main()
