"""The transcription core: one path from decoded audio to a transcript, shared by the HTTP ingress and batch jobs.

It talks to any object with the backend protocol: a ``RemoteBackend`` over a Serve handle, or a backend loaded in
this process (batch actors).
"""

from __future__ import annotations

from typing import AsyncIterator

import numpy as np

from .transcript import Backend, TranscribeOptions, Transcript


class Transcriber:
    def __init__(self, backend: Backend):
        self.backend = backend

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        return await self.backend.transcribe(audio, options)

    async def stream(self, audio: np.ndarray, options: TranscribeOptions) -> AsyncIterator[str]:
        transcript = await self.transcribe(audio, options)
        yield transcript.text
