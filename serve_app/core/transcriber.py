"""The transcription core: one path from decoded audio to a transcript, shared by the HTTP ingress and batch jobs.

It talks to any object with the backend protocol: a ``RemoteBackend`` over a Serve handle, or a backend loaded in
this process (batch actors). Long audio is cut by the VAD into speech chunks that go to the backend concurrently
(vLLM batches them, Whisper's workers decode them in parallel) and are stitched back in order with absolute times.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import AsyncIterator

import numpy as np

from serve_app.audio.vad import Chunk, has_speech, speech_chunks
from serve_app.backends.base import Backend
from serve_app.config import ChunkingConfig
from serve_app.core.repetition import cut_repetition
from serve_app.core.token_budget import chunk_tokens
from serve_app.core.types import Segment, TokenUsage, TranscribeOptions, Transcript, Word, duration_of


@dataclass
class ChunkResult:
    """One chunk's transcript placed in the request's audio: stripped text, segments in absolute seconds."""

    text: str
    language: str | None
    segments: list[Segment]
    usage: TokenUsage | None = None


class Transcriber:
    def __init__(self, backend: Backend, chunking: ChunkingConfig):
        self.backend = backend
        self.chunking = chunking

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        results = [r async for r in self._results(audio, options)]
        return stitch(results, duration_of(audio), options.language)

    async def stream(self, audio: np.ndarray, options: TranscribeOptions) -> AsyncIterator[str]:
        """Each chunk's text, in order, as soon as it and every chunk before it are done; joined by single spaces."""
        first = True
        async for result in self._results(audio, options):
            if result.text:
                yield result.text if first else " " + result.text
                first = False

    async def _chunks(self, audio: np.ndarray) -> list[Chunk]:
        """Where the backend is called: nothing when the VAD hears no speech, the whole audio when it is short."""
        whole = [Chunk(0, len(audio))]
        if not self.chunking.enabled:
            return whole
        if duration_of(audio) <= self.chunking.chunk_above_s:  # sent whole, if there is any speech at all
            return whole if await asyncio.to_thread(has_speech, audio, self.chunking) else []
        return await asyncio.to_thread(speech_chunks, audio, self.chunking)

    def _checks_alongside(self, audio: np.ndarray) -> bool:
        c = self.chunking
        return c.enabled and c.speech_check == "alongside" and duration_of(audio) <= c.chunk_above_s

    async def _results(self, audio: np.ndarray, options: TranscribeOptions) -> AsyncIterator[ChunkResult]:
        """All chunks start at once (up to ``max_parallel_chunks``); their results come back in order."""
        limit = asyncio.Semaphore(self.chunking.max_parallel_chunks)  # per request
        start = lambda chunk: asyncio.ensure_future(self._chunk(audio, chunk, options, limit))  # noqa: E731
        tasks: list[asyncio.Future] = []
        try:
            if self._checks_alongside(audio):
                tasks = [start(Chunk(0, len(audio)))]
                if not await asyncio.to_thread(has_speech, audio, self.chunking):
                    return  # silence: the answer is empty, whatever the backend would have said
            else:
                tasks = [start(c) for c in await self._chunks(audio)]
            for task in tasks:
                yield await task
        finally:  # the client went away, a chunk failed or there was no speech: stop the rest
            for task in tasks:
                task.cancel()
                task.add_done_callback(consume_outcome)

    async def _chunk(
        self, audio: np.ndarray, chunk: Chunk, options: TranscribeOptions, limit: asyncio.Semaphore
    ) -> ChunkResult:
        if options.max_tokens is None:  # a request's own max_tokens (a benchmark's, say) applies to each chunk as is
            budget = chunk_tokens(chunk.duration_s, self.chunking.max_tokens_per_s, self.chunking.min_max_tokens)
            options = replace(options, max_tokens=budget)
        async with limit:
            t = await self.backend.transcribe(audio[chunk.start : chunk.end], options)
        return place(t, chunk, self.chunking.cut_repetitions)


def consume_outcome(task: asyncio.Future) -> None:
    """Marks a dropped task's outcome as seen, so asyncio logs no 'exception was never retrieved' for it."""
    if not task.cancelled():
        task.exception()


def place(t: Transcript, chunk: Chunk, cut_repetitions: bool = True) -> ChunkResult:
    """A chunk's transcript in absolute time: segments shifted by the chunk's start and kept inside it.

    A backend that gives no times (no segments) gets one segment spanning the chunk. A runaway loop at the end of the
    text is cut, and the segments with it.
    """
    text = t.text.strip()
    if cut_repetitions:
        text = cut_repetition(text)
    segments = [s for s in t.segments if s.text.strip()] or ([Segment(0, 0.0, chunk.duration_s, text)] if text else [])
    if len(text) < len(t.text.strip()):
        segments = _keep_chars(segments, len(text))
    start, end = chunk.start_s, chunk.end_s
    placed = []
    for s in segments:
        s_start = min(max(start + s.start, start), end)
        s_end = min(max(start + s.end, s_start), end)
        words = None if s.words is None else [_shift_word(w, start, end) for w in s.words]
        placed.append(replace(s, start=s_start, end=s_end, words=words))
    return ChunkResult(text=text, language=t.language, segments=placed, usage=t.usage)


def stitch(results: list[ChunkResult], duration: float, language: str | None = None) -> Transcript:
    """Chunk results in order as one transcript; segments renumbered and made non-overlapping."""
    segments, previous_end = [], 0.0
    for r in results:
        for s in r.segments:
            s_start = max(s.start, previous_end)
            s_end = max(s.end, s_start)
            segments.append(replace(s, id=len(segments), start=s_start, end=s_end))
            previous_end = s_end
    text = " ".join(r.text for r in results if r.text)
    language = language or next((r.language for r in results if r.language), None)
    usages = [r.usage for r in results if r.usage is not None]
    usage = sum(usages, TokenUsage()) if usages else None
    return Transcript(text=text, language=language, duration=duration, segments=segments, usage=usage)


def _keep_chars(segments: list[Segment], kept: int) -> list[Segment]:
    """The segments covering the first ``kept`` characters of their space-joined texts, the last one cut to fit."""
    out, used = [], 0
    for s in segments:
        if used >= kept:
            break
        text = s.text.strip()
        if len(text) > kept - used:
            text = text[: kept - used].rstrip()
            words = None if s.words is None else s.words[: len(text.split())]
            s = replace(s, text=text, words=words)
        out.append(s)
        used += len(text) + 1
    return out


def _shift_word(w: Word, start: float, end: float) -> Word:
    w_start = min(start + w.start, end)
    return replace(w, start=w_start, end=min(max(start + w.end, w_start), end))
