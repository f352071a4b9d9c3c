"""Slow senders against normal traffic: the latency of ordinary requests while hundreds of clients trickle their bodies.

It starts Ray and Serve in this process on a free loopback port with the app of ``serve_config_cpu.yaml`` (the
embedded Whisper tiny.en, HAProxy in front of the ingress, as `make serve` runs it), then measures one normal
transcription after another three ways: quiet; while ``--slow`` clients each send a multipart body at 100 bytes a
second (they are cut at ``limits.body_timeout_s`` and come back at once, so the slots stay taken for the whole
phase); and quiet again. Every connection goes to 127.0.0.1; the run ends by itself after the three phases.

    python -m benchmarks.bench_slow_clients --out benchmarks/results/slow_clients_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import httpx

from benchmarks.common import (
    REPO,
    SHARED_AUDIO,
    app_args,
    command_line,
    machine_info,
    offline,
    percentile,
    write_result,
)
from benchmarks.local_serve import run_app, start_local_serve, stop_local_serve

CLIP = "en_pocketsphinx_goforward.wav"  # 2.8 s of speech
BOUNDARY = "slowb0undary"


async def slow_sender(port: int, stop: asyncio.Event, counts: dict) -> None:
    """One client that opens a multipart upload and sends 100 bytes a second, reconnecting when it is cut."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
    request = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(head) + 1_000_000}\r\n\r\n"
    ).encode()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request + head)
            counts["connections"] += 1
            while not stop.is_set() and not reader.at_eof():
                writer.write(b"\0" * 100)
                await writer.drain()
                try:
                    answer = await asyncio.wait_for(reader.read(200), 1.0)
                except TimeoutError:
                    continue
                if answer:  # the service cut this client: "HTTP/1.1 408 ..."
                    status = answer.split(b" ", 2)[1].decode()
                    counts[status] = counts.get(status, 0) + 1
                    break
            writer.close()
        except (ConnectionError, OSError):
            await asyncio.sleep(0.5)


async def normal_requests(url: str, audio: bytes, n: int) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(timeout=120) as client:
        for _ in range(n):
            started = time.perf_counter()
            r = await client.post(f"{url}/v1/audio/transcriptions", files={"file": (CLIP, audio)}, data={"model": "whisper-1"})
            r.raise_for_status()
            latencies.append(time.perf_counter() - started)
    return latencies


async def phases(port: int, audio: bytes, n: int, slow: int) -> dict:
    url = f"http://127.0.0.1:{port}"
    await normal_requests(url, audio, 3)  # warm-up
    quiet = await normal_requests(url, audio, n)
    stop, counts = asyncio.Event(), {"connections": 0}
    senders = [asyncio.create_task(slow_sender(port, stop, counts)) for _ in range(slow)]
    await asyncio.sleep(5)  # every slow client connected and sending
    busy = await normal_requests(url, audio, n)
    stop.set()
    await asyncio.gather(*senders, return_exceptions=True)
    after = await normal_requests(url, audio, n)
    summary = {name: _stats(values) for name, values in (("quiet", quiet), ("with_slow_clients", busy), ("after", after))}
    return {"phases": summary, "slow_clients": {"clients": slow, **counts},
            "p95_with_slow_over_quiet": round(summary["with_slow_clients"]["p95_s"] / summary["quiet"]["p95_s"], 3)}  # fmt: skip


def _stats(values: list[float]) -> dict:
    return {"n": len(values), "p50_s": round(percentile(values, 50), 4), "p95_s": round(percentile(values, 95), 4),
            "max_s": round(max(values), 4)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "serve_config_cpu.yaml")
    p.add_argument("--audio-dir", type=Path, default=SHARED_AUDIO)
    p.add_argument("--slow", type=int, default=300, help="slow clients")
    p.add_argument("--requests", type=int, default=30, help="normal requests per phase")
    p.add_argument("--out", type=Path)
    opts = p.parse_args()
    offline()
    machine = machine_info()
    args = app_args(opts.config)
    port = start_local_serve()
    try:
        run_app(args)
        result = asyncio.run(phases(port, (opts.audio_dir / CLIP).read_bytes(), opts.requests, opts.slow))
    finally:
        stop_local_serve()
    body = {"benchmark": "slow_clients", "command": command_line(), "machine": machine, "config": str(opts.config),
            "limits": args.get("limits", {}), "clip": CLIP, **result}  # fmt: skip
    write_result(opts.out, body)


if __name__ == "__main__":
    main()
