"""A bounded load generator: distinct clips, a fixed number of requests at a fixed concurrency, latency statistics.

Each request gets different audio (a random window of real speech plus faint noise), so no cache can help. The
target is an async callable taking a 16 kHz float32 array: our HTTP API on 127.0.0.1, or the engine directly.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np

from benchmarks.common import percentile
from serve_app.core.types import SAMPLE_RATE


def speech_pool(paths: list[Path]) -> np.ndarray:
    """Real speech from the given files, decoded and concatenated (the source of every benchmark clip)."""
    from serve_app.audio.decode import load_file

    return np.concatenate([load_file(str(p), max_duration_s=3600) for p in paths])


class ClipMaker:
    def __init__(self, pool: np.ndarray, seed: int = 0):
        self.pool = pool
        self.rng = np.random.default_rng(seed)

    def clip(self, seconds: float) -> np.ndarray:
        n = int(seconds * SAMPLE_RATE)
        source = self.pool if len(self.pool) > n else np.tile(self.pool, n // len(self.pool) + 2)
        start = int(self.rng.integers(0, len(source) - n))
        noise = self.rng.normal(0, 1e-3, n).astype(np.float32)
        return (source[start : start + n] + noise).astype(np.float32)


def upload_form(wav: bytes, **fields: str):
    """A transcription request's multipart body, as an OpenAI client sends it: form fields and the WAV file."""
    import aiohttp

    form = aiohttp.FormData()
    for key, value in fields.items():
        form.add_field(key, value)
    form.add_field("file", wav, filename="a.wav", content_type="audio/wav")
    return form


def prepared(send, clip: np.ndarray):
    """What ``send`` takes for ``clip``: ``send.prepare(clip)`` when it has one (an upload encoded before the clock
    starts, as a client's file exists before it is sent), else the clip itself."""
    prepare = getattr(send, "prepare", None)
    return prepare(clip) if prepare else clip


_sessions: dict = {}


def http_session():
    """One aiohttp session (and connection pool) per event loop, sized for the largest concurrency we run."""
    import aiohttp

    loop = asyncio.get_running_loop()
    if loop not in _sessions:
        connector = aiohttp.TCPConnector(limit=512)
        _sessions[loop] = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300))
    return _sessions[loop]


def run_http(coro):
    """``asyncio.run(coro)``, closing the HTTP session that ``coro`` opened on its loop before the loop ends."""

    async def main():
        try:
            return await coro
        finally:
            session = _sessions.pop(asyncio.get_running_loop(), None)
            if session is not None:
                await session.close()

    return asyncio.run(main())


async def run_load(
    send: Callable[[np.ndarray], Awaitable[object]],
    clips: list[np.ndarray],
    concurrency: int,
    timeout_s: float = 300.0,
    keep_timeline: bool = False,
) -> dict:
    """Send every clip once, ``concurrency`` at a time; returns latency percentiles and throughput (and with
    ``keep_timeline`` when each request was sent and how long it took). A ``send`` with a ``prepare`` attribute gets
    ``prepare(clip)`` instead of the clip, made before the clock starts (a client's upload exists before it is sent).
    """
    queue: asyncio.Queue = asyncio.Queue()
    for c in clips:
        queue.put_nowait(prepared(send, c))
    timeline: list[tuple[float, float]] = []  # (sent at, latency) per request, seconds from the start
    errors: list[str] = []

    async def worker():
        while not queue.empty():
            clip = queue.get_nowait()
            sent = time.perf_counter()
            try:
                await asyncio.wait_for(send(clip), timeout_s)
                timeline.append((sent - started, time.perf_counter() - sent))
            except Exception as e:  # counted and reported, never hidden
                errors.append(f"{type(e).__name__}: {e}"[:200])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies = [latency for _, latency in timeline]
    rounded = [(round(s, 3), round(latency, 3)) for s, latency in sorted(timeline)]
    audio_s = sum(len(c) for c in clips) / SAMPLE_RATE
    return {
        "concurrency": concurrency,
        "requests": len(clips),
        "errors": len(errors),
        "error_samples": errors[:3],
        "p50_s": round(percentile(latencies, 50), 4),
        "p95_s": round(percentile(latencies, 95), 4),
        "mean_s": round(float(np.mean(latencies)), 4) if latencies else None,
        "wall_s": round(wall, 3),
        "audio_s_per_s": round(audio_s / wall, 1),
        **({"timeline": rounded} if keep_timeline else {}),
    }
