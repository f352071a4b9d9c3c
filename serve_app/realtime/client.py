"""A small realtime client: streams audio to ``/v1/realtime`` at a chosen pace and collects the server's events.

    python -m serve_app.realtime.client speech.wav --url ws://127.0.0.1:8000/v1/realtime   # a file, at 1x
    python -m serve_app.realtime.client --mic                                              # the microphone

It prints partial text as it grows and each final transcript. Tests and ``benchmarks/bench_realtime.py`` use
``stream`` for the same thing, with every event's arrival time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import numpy as np

from serve_app.audio.stream import StreamFormat, encode
from serve_app.core.types import SAMPLE_RATE

ITEM = "conversation.item.input_audio_transcription."


@dataclass
class Run:
    """One streamed session: the events with their arrival times (monotonic seconds) and when each chunk of
    audio left (``sent[i]`` = (time, stream ms at the chunk's end))."""

    events: list[tuple[float, dict]] = field(default_factory=list)
    sent: list[tuple[float, int]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict]:
        return [e for _, e in self.events if e["type"] == kind]

    def finals(self) -> list[str]:
        return [e["transcript"] for e in self.of(ITEM + "completed")]

    def sent_at(self, stream_ms: float) -> float:
        """When the audio at ``stream_ms`` of the stream had been sent."""
        return next((t for t, ms in self.sent if ms >= stream_ms), self.sent[-1][0])


def session_update(fmt: StreamFormat, model: str | None = None, turn_detection: dict | None | str = "server_vad", **transcription) -> dict:
    """A GA ``session.update`` for a transcription session."""
    audio_input: dict = {"format": {"type": fmt.type} | ({"rate": fmt.rate} if fmt.type == "audio/pcm" else {})}
    audio_input["transcription"] = {"model": model, **transcription} if model else transcription
    if turn_detection != "server_vad":
        audio_input["turn_detection"] = turn_detection
    return {"type": "session.update", "session": {"type": "transcription", "audio": {"input": audio_input}}}


async def stream(
    url: str,
    audio: np.ndarray,
    *,
    fmt: StreamFormat = StreamFormat(),
    update: dict | None = None,
    chunk_ms: int = 100,
    speed: float = 1.0,
    commit: bool = False,
    api_key: str | None = None,
    settle_s: float = 30.0,
    on_event: Callable[[dict], None] | None = None,
) -> Run:
    """Streams 16 kHz ``audio`` as ``fmt`` in ``chunk_ms`` pieces at ``speed`` x real time (0: as fast as it goes),
    then waits (up to ``settle_s``) until every utterance that started has its completed or failed event."""
    import websockets

    run = Run()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        reader = asyncio.create_task(_receive(ws, run, on_event))
        update = update or session_update(fmt)
        await ws.send(json.dumps(update))
        async for end_ms, piece in _paced(audio, fmt, chunk_ms, speed):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()}))
            run.sent.append((time.monotonic(), end_ms))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"} if commit else _no_change(update)))
        await _settled(run, commit, settle_s)
        reader.cancel()
    return run


def _no_change(update: dict) -> dict:
    """An update that changes nothing: the server answers it after every event sent before, so its answer marks
    the point where all the audio has been through the turn detector."""
    beta = update["type"] == "transcription_session.update"
    return {"type": update["type"], "session": {} if beta else {"type": "transcription"}}


async def _paced(audio: np.ndarray, fmt: StreamFormat, chunk_ms: int, speed: float) -> AsyncIterator[tuple[int, bytes]]:
    step = SAMPLE_RATE * chunk_ms // 1000
    started = time.monotonic()
    for i in range(0, len(audio), step):
        if speed > 0:
            await asyncio.sleep(max(0.0, started + i / SAMPLE_RATE / speed - time.monotonic()))
        yield (i + step) * 1000 // SAMPLE_RATE, encode(audio[i : i + step], fmt)


async def _receive(ws, run: Run, on_event) -> None:
    async for message in ws:
        event = json.loads(message)
        run.events.append((time.monotonic(), event))
        if on_event:
            on_event(event)


async def _settled(run: Run, commit: bool, settle_s: float) -> None:
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        started = {e["item_id"] for e in run.of("input_audio_buffer.speech_started")}
        committed = {e["item_id"] for e in run.of("input_audio_buffer.committed")}
        done = {e["item_id"] for _, e in run.events if e["type"] in (ITEM + "completed", ITEM + "failed")}
        answered = bool(committed) if commit else len([e for _, e in run.events if e["type"].endswith("updated")]) >= 2
        if answered and (started | committed) <= done:
            return
        await asyncio.sleep(0.02)


def _printer(event: dict) -> None:
    kind = event["type"]
    if kind == ITEM + "delta":
        print(event["delta"], end="", flush=True)
    elif kind == ITEM + "completed":
        print(f"\r\033[K{event['transcript']}", flush=True)
    elif kind == "error":
        print(f"\nerror: {event['error']['message']}", file=sys.stderr)


async def _microphone(url: str, fmt: StreamFormat, api_key: str | None) -> None:
    """Streams the default microphone until Ctrl-C (needs the ``sounddevice`` package and a sound card)."""
    import sounddevice
    import websockets

    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with websockets.connect(url, additional_headers=headers) as ws:
        reader = asyncio.create_task(_receive(ws, Run(), _printer))
        await ws.send(json.dumps(session_update(fmt)))
        callback = lambda data, *_: loop.call_soon_threadsafe(queue.put_nowait, data[:, 0].copy())  # noqa: E731
        with sounddevice.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32", blocksize=1600, callback=callback):
            while True:
                piece = encode(await queue.get(), fmt)
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()}))
        reader.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", help="an audio file in any common container")
    parser.add_argument("--mic", action="store_true", help="stream the microphone instead of a file")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime?intent=transcription")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--speed", type=float, default=1.0, help="x real time; 0 sends as fast as it can")
    args = parser.parse_args(argv)
    fmt = StreamFormat("audio/pcm", 24000)
    if args.mic:
        return asyncio.run(_microphone(args.url, fmt, args.api_key))
    if not args.file:
        parser.error("give a file or --mic")
    from serve_app.audio.decode import decode_audio

    with open(args.file, "rb") as f:
        audio = np.concatenate([decode_audio(f.read()), np.zeros(SAMPLE_RATE, np.float32)])  # a second of silence ends it
    asyncio.run(stream(args.url, audio, fmt=fmt, speed=args.speed, api_key=args.api_key, on_event=_printer))


if __name__ == "__main__":
    main()
