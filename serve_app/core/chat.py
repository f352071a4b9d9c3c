"""Chat completions with audio, guarded as transcriptions are: no model call for audio without speech, a token
budget from the audio's duration, and a runaway loop cut to its first copy (stopped where it is found while the
answer streams; a backend may send an answer without ``stream`` as one piece)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import AsyncIterator

import numpy as np

from serve_app.audio.vad import has_speech
from serve_app.backends.base import Backend
from serve_app.config import ChatConfig, ChunkingConfig
from serve_app.core.repetition import cut_repetition
from serve_app.core.token_budget import chat_tokens
from serve_app.core.types import ChatDelta, ChatOptions, ChatTurn, TokenUsage, duration_of


class Chat:
    def __init__(self, backend: Backend, config: ChatConfig, chunking: ChunkingConfig):
        self.backend = backend
        self.config = config
        self.chunking = chunking

    async def stream(self, turns: list[ChatTurn], options: ChatOptions) -> AsyncIterator[ChatDelta]:
        """The answer's pieces as they come; the last one has the finish reason and the engine's token count. A loop
        is stopped once found; the copies already sent stay sent."""
        text = RunawayText(self.config.cut_repetitions)
        deltas = self._generate(turns, options)
        try:
            async for delta in deltas:
                sent = len(text.text)
                kept = text.add(delta.text)
                if kept is not None:
                    yield ChatDelta(kept[sent:], delta.usage, "stop")
                    return
                yield delta
        finally:
            await deltas.aclose()  # cancels the generation when the client went away or a loop was stopped

    async def complete(self, turns: list[ChatTurn], options: ChatOptions) -> ChatDelta:
        """The whole answer as one piece; a loop in it is cut to its first copy."""
        text, last = RunawayText(self.config.cut_repetitions), ChatDelta("")
        deltas = self._generate(turns, options)
        try:
            async for last in deltas:
                kept = text.add(last.text)
                if kept is not None:
                    return ChatDelta(kept, last.usage, "stop")
        finally:
            await deltas.aclose()
        return ChatDelta(text.text, last.usage, last.finish_reason or "stop")

    async def _generate(self, turns: list[ChatTurn], options: ChatOptions) -> AsyncIterator[ChatDelta]:
        clips = [p for t in turns for p in t.parts if isinstance(p, np.ndarray)]
        if clips and not await self._may_reach_model(clips):
            yield ChatDelta("", TokenUsage(), "stop")
            return
        audio_s = sum(map(duration_of, clips))
        budget = chat_tokens(audio_s, self.config.max_tokens_per_s, options.max_tokens, self.config.answer_tokens)
        deltas = self.backend.chat_stream(turns, replace(options, max_tokens=budget))
        try:
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()

    async def _may_reach_model(self, clips: list[np.ndarray]) -> bool:
        if self.config.on_no_speech == "model" or not self.chunking.enabled:
            return True
        for clip in clips:
            if await asyncio.to_thread(has_speech, clip, self.chunking):
                return True
        return False


class RunawayText:
    """An answer as it grows, watched for a runaway loop at its end (``core.repetition``)."""

    def __init__(self, watch: bool = True):
        self.watch = watch
        self.text = ""

    def add(self, piece: str) -> str | None:
        """The text so far cut to the loop's first copy once it ends in a loop; None while it does not."""
        self.text += piece
        if not self.watch:
            return None
        kept = cut_repetition(self.text)
        return kept if len(kept) < len(self.text.rstrip()) else None
