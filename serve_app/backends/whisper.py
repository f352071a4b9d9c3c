"""faster-whisper backend: CTranslate2 Whisper on CPU or GPU.

Decoding runs in a pool of ``num_workers`` threads (CTranslate2 releases the GIL), so the replica's event loop stays
free and that many requests are decoded in parallel; each worker uses ``cpu_threads`` threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import numpy as np

from serve_app.config import WhisperConfig
from serve_app.core.types import (
    ChatOptions,
    ChatTurn,
    Segment,
    TranscribeOptions,
    Transcript,
    Word,
    duration_of,
)
from serve_app.errors import InvalidRequest

log = logging.getLogger("ray.serve")


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
        log.info("whisper %s loaded in %.2f s", config.model_path(), time.perf_counter() - started)

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        if options.task == "translate" and not self.model.model.is_multilingual:
            raise InvalidRequest("This model is English-only and cannot translate; use a multilingual model.", param="model")
        if options.language and not self.model.model.is_multilingual and options.language != "en":
            raise InvalidRequest(f"This model is English-only; language {options.language!r} is not supported.", param="language")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._transcribe_sync, audio, options)

    def _transcribe_sync(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        try:
            segments, info = self.model.transcribe(
                audio,
                language=options.language,
                task=options.task,
                beam_size=self.config.beam_size,
                temperature=options.temperature if options.temperature > 0 else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
                initial_prompt=options.prompt or None,
                word_timestamps=options.word_timestamps,
                vad_filter=self.config.vad_filter,
            )
            out = [_segment(i, s) for i, s in enumerate(segments)]
        except ValueError as e:  # faster-whisper's own checks, e.g. an unknown language code
            raise InvalidRequest(str(e)) from None
        text = " ".join(s.text.strip() for s in out if s.text.strip())
        return Transcript(text=text, language=info.language, duration=duration_of(audio), segments=out)

    async def chat_stream(self, turns: list[ChatTurn], options: ChatOptions) -> AsyncIterator[str]:
        """Whisper cannot chat: the answer is the transcript of the audio in the conversation."""
        clips = [p for t in turns for p in t.parts if isinstance(p, np.ndarray)]
        if not clips:
            raise InvalidRequest("This model transcribes audio; send at least one audio part.", param="messages")
        for i, clip in enumerate(clips):
            t = await self.transcribe(clip, TranscribeOptions(request_id=options.request_id))
            yield (" " if i else "") + t.text

    async def check_health(self) -> None:
        return None


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
