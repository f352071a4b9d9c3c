"""Can the load generator itself send 128 uploads at once? httpx against aiohttp, on a server that does no work.

The server (Starlette on uvicorn, 127.0.0.1, a child process) reads each multipart upload and answers at the next
1.4 s boundary, so every request in flight finishes together, as one engine batch of 128 sequences does; then 128
new uploads leave the client at once. For each request it records when it arrived, and the client records when it
sent it (matched by a header), so the lag between the two is the client's own delay. A client that can keep up
shows ~1.4 s latency and a lag of milliseconds.

    python benchmarks/client_burst.py --out benchmarks/results/client_burst_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import http_session, percentile, run_load, upload_form, wav_bytes  # noqa: E402
from local_serve import free_port  # noqa: E402

BATCH_S = 1.4

SERVER = f"""
import asyncio, time
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

arrivals = {{}}

async def transcribe(request):
    arrived = time.time()
    form = await request.form()
    await form["file"].read()
    await asyncio.sleep({BATCH_S} - time.time() % {BATCH_S})  # finish with everything else in flight
    arrivals[request.headers["x-burst-id"]] = arrived
    return JSONResponse({{"text": "x" * 100}})

async def log(request):
    return JSONResponse(arrivals)

app = Starlette(routes=[Route("/v1/audio/transcriptions", transcribe, methods=["POST"]), Route("/log", log)])
"""


def httpx_sender(base: str, sent: dict):
    import httpx

    client = httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=512, max_keepalive_connections=512))
    ids = itertools.count()

    async def send(clip: np.ndarray):
        i = f"httpx-{next(ids)}"
        sent[i] = time.time()
        r = await client.post(f"{base}/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(clip))},
                              data={"model": "m"}, headers={"x-burst-id": i})  # fmt: skip
        r.raise_for_status()

    return send


def aiohttp_sender(base: str, sent: dict):
    session = http_session()
    ids = itertools.count()

    async def send(clip: np.ndarray):
        i = f"aiohttp-{next(ids)}"
        form = upload_form(wav_bytes(clip), model="m")
        sent[i] = time.time()
        async with session.post(f"{base}/v1/audio/transcriptions", data=form, headers={"x-burst-id": i}) as r:
            r.raise_for_status()
            await r.read()

    return send


async def one_client(name: str, base: str, clips: list[np.ndarray], concurrency: int) -> dict:
    import httpx

    sent: dict[str, float] = {}
    send = {"httpx": httpx_sender, "aiohttp": aiohttp_sender}[name](base, sent)
    result = await run_load(send, clips, concurrency)
    arrivals = httpx.get(f"{base}/log", timeout=30).json()
    lags = [arrivals[i] - t for i, t in sent.items() if i in arrivals]
    ms = lambda x: round(1000 * x, 1)  # noqa: E731
    return {
        "client": name,
        **{k: result[k] for k in ("concurrency", "requests", "errors", "p50_s", "p95_s", "wall_s", "audio_s_per_s")},
        "send_to_arrival_ms": {"p50": ms(percentile(lags, 50)), "p95": ms(percentile(lags, 95)), "max": ms(max(lags))},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--requests", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--clip-s", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    port = free_port()
    server_file = Path(f"/tmp/client_burst_server_{os.getpid()}.py")
    server_file.write_text(SERVER)
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"{server_file.stem}:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--app-dir", str(server_file.parent)],
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(100):  # up within 10 s
            try:
                httpx.get(f"{base}/log", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        rng = np.random.default_rng(0)
        clips = [(0.1 * rng.standard_normal(int(a.clip_s * 16000))).astype(np.float32) for _ in range(a.requests)]
        runs = []
        for _ in range(a.rounds):
            for name in ("httpx", "aiohttp"):
                row = asyncio.run(one_client(name, base, clips, a.concurrency))
                print(json.dumps(row), flush=True)
                runs.append(row)
    finally:
        server.terminate()
        server.wait(10)
        server_file.unlink(missing_ok=True)
    out = {
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "httpx": __import__("httpx").__version__, "aiohttp": __import__("aiohttp").__version__},  # fmt: skip
        "server": f"answers every upload at the next {BATCH_S} s boundary (all requests in flight finish together)",
        "runs": runs,
    }
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
