"""faster-whisper backend: CTranslate2 Whisper on CPU or GPU.

Decoding runs in a pool of ``num_workers`` threads (CTranslate2 releases the GIL), so the replica's event loop stays
free and that many requests are decoded in parallel; each worker uses ``cpu_threads`` threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import numpy as np

from serve_app.config import WhisperConfig
from serve_app.core.types import (
    ChatDelta,
    ChatOptions,
    ChatTurn,
    Segment,
    TokenUsage,
    TranscribeOptions,
    Transcript,
    Word,
    duration_of,
)
from serve_app.errors import InvalidRequest, Overloaded

log = logging.getLogger("ray.serve")


_FALLBACK = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # temperatures tried in turn when a decode looks like a failure


class _Stopped(Exception):
    """A cancelled request's worker ends here."""


class WhisperBackend:
    def __init__(self, config: WhisperConfig):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel

        self.config = config
        started = time.perf_counter()
        self.model = WhisperModel(
            config.model_path(),
            device=config.device,
            compute_type=config.compute_type,
            cpu_threads=config.cpu_threads,
            num_workers=config.num_workers,
            download_root=config.download_root,
        )
        self._pool = ThreadPoolExecutor(config.num_workers, thread_name_prefix="whisper")
        self._busy = 0  # requests in the pool; a preview (best_effort) leaves a worker free for full requests
        log.info("whisper %s loaded in %.2f s", config.model_path(), time.perf_counter() - started)

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        if options.task == "translate" and not self.model.model.is_multilingual:
            raise InvalidRequest("This model is English-only and cannot translate; use a multilingual model.", param="model")
        if options.language and not self.model.model.is_multilingual and options.language != "en":
            raise InvalidRequest(f"This model is English-only; language {options.language!r} is not supported.", param="language")
        if options.best_effort and self._busy >= max(1, self.config.num_workers - 1):
            raise Overloaded("The model is busy with full requests; this preview is skipped.", retry_after_s=1)
        stop = threading.Event()
        work = asyncio.get_running_loop().run_in_executor(self._pool, self._transcribe_sync, audio, options, stop)
        self._busy += 1
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The caller left: the worker stops at its next 30 s window (or before it starts); the replica's
            # ongoing count stays true by waiting for that.
            stop.set()
            await asyncio.gather(work, return_exceptions=True)
            raise
        finally:
            self._busy -= 1

    def _transcribe_sync(self, audio: np.ndarray, options: TranscribeOptions, stop: threading.Event) -> Transcript:
        if stop.is_set():
            raise _Stopped
        try:
            segments, info = self.model.transcribe(
                audio,
                language=options.language,
                task=options.task,
                beam_size=1 if options.best_effort else self.config.beam_size,
                temperature=options.temperature if options.temperature > 0 or options.best_effort else _FALLBACK,
                without_timestamps=options.best_effort,
                initial_prompt=options.prompt or None,
                word_timestamps=options.word_timestamps,
                vad_filter=self.config.vad_filter,
            )
            out = []
            for i, s in enumerate(segments):  # decoded lazily, one 30 s window at a time
                if stop.is_set():
                    raise _Stopped
                out.append(_segment(i, s))
        except ValueError as e:  # faster-whisper's own checks, e.g. an unknown language code
            raise InvalidRequest(str(e)) from None
        text = " ".join(s.text.strip() for s in out if s.text.strip())
        return Transcript(text=text, language=info.language, duration=duration_of(audio), segments=out)

    async def chat_stream(self, turns: list[ChatTurn], options: ChatOptions) -> AsyncIterator[ChatDelta]:
        """Whisper cannot chat: the answer is the transcript of the audio in the conversation, cut at whole segments
        when it would pass ``max_tokens``."""
        clips = [p for t in turns for p in t.parts if isinstance(p, np.ndarray)]
        if not clips:
            raise InvalidRequest("This model transcribes audio; send at least one audio part.", param="messages")
        used = 0
        for i, clip in enumerate(clips):
            t = await self.transcribe(clip, TranscribeOptions(temperature=options.temperature, request_id=options.request_id))
            kept = _within_tokens(t.segments, None if options.max_tokens is None else options.max_tokens - used)
            used += sum(len(s.tokens) for s in kept)
            text = " ".join(s.text.strip() for s in kept if s.text.strip())
            cut = len(kept) < len(t.segments)
            yield ChatDelta((" " if i else "") + text, TokenUsage(0, used), "length" if cut else None)
            if cut:
                return
        yield ChatDelta("", TokenUsage(0, used), "stop")

    async def check_health(self) -> None:
        return None


def check_options(options: TranscribeOptions | ChatOptions) -> None:
    """Refuses what Whisper cannot honour, rather than dropping it: generation controls of generative models."""
    if isinstance(options, ChatOptions):
        if options.top_p != 1.0:
            raise InvalidRequest("Whisper models do not sample with top_p; send top_p 1 or none.", param="top_p")
        return
    if options.ignore_eos:
        raise InvalidRequest("ignore_eos applies to generative models; Whisper models always stop.", param="ignore_eos")
    if options.max_tokens is not None:
        raise InvalidRequest(
            "max_tokens applies to generative models; Whisper bounds its own output (224 tokens per 30 s window).",
            param="max_tokens",
        )


def _within_tokens(segments: list[Segment], budget: int | None) -> list[Segment]:
    """The leading segments whose tokens fit in ``budget`` (all of them when there is none)."""
    if budget is None:
        return segments
    kept, used = [], 0
    for s in segments:
        used += len(s.tokens)
        if used > budget:
            break
        kept.append(s)
    return kept


def _segment(i: int, s) -> Segment:
    words = None
    if s.words is not None:
        words = [Word(start=w.start, end=w.end, word=w.word, probability=w.probability) for w in s.words]
    return Segment(
        id=i,
        start=s.start,
        end=s.end,
        text=s.text,
        tokens=list(s.tokens),
        avg_logprob=s.avg_logprob,
        compression_ratio=s.compression_ratio,
        no_speech_prob=s.no_speech_prob,
        temperature=s.temperature or 0.0,
        words=words,
    )
