"""The one protocol every backend implements, and what the model replica does with any backend at start."""

from __future__ import annotations

import time
from typing import AsyncIterator, Protocol

import numpy as np

from serve_app.core.types import SAMPLE_RATE, ChatDelta, ChatOptions, ChatTurn, TranscribeOptions, Transcript


class Backend(Protocol):
    """What a model server does. Audio is always 16 kHz mono float32; nothing here knows about HTTP."""

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript: ...

    def chat_stream(self, turns: list[ChatTurn], options: ChatOptions) -> AsyncIterator[ChatDelta]:
        """The answer in pieces, each with the engine's token count so far; the last one has the finish reason."""
        ...

    async def check_health(self) -> None: ...


async def warm_up(backend: Backend) -> float:
    """One small request, so the first user does not pay for lazy initialisation; returns the seconds it took."""
    started = time.perf_counter()
    await backend.transcribe(np.zeros(SAMPLE_RATE, np.float32), TranscribeOptions(language="en"))
    return time.perf_counter() - started
