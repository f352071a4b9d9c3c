"""The backend deployment: one replica holds one loaded model and serves the backend protocol over Serve handles."""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator

import numpy as np
from ray import serve

from .backends import make_backend
from .config import VoxtralModelConfig, WhisperModelConfig
from .errors import APIError, BackendUnavailable
from .transcript import ChatOptions, ChatTurn, TranscribeOptions, Transcript

log = logging.getLogger("ray.serve")


@serve.deployment
class ModelServer:
    async def __init__(self, model: WhisperModelConfig | VoxtralModelConfig):
        started = time.perf_counter()
        gpu_share = model.deployment.ray_actor_options.get("num_gpus")
        self.backend = make_backend(model, gpu_share=gpu_share)
        loaded = time.perf_counter() - started
        warm_up = await self.backend.warm_up()
        log.info("model %s ready: load %.2f s, warm-up %.2f s", model.name, loaded, warm_up)

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        return await self.backend.transcribe(audio, options)

    async def chat_stream(self, turns: list[ChatTurn], options: ChatOptions) -> AsyncIterator[str]:
        async for delta in self.backend.chat_stream(turns, options):
            yield delta

    async def check_health(self) -> None:
        await self.backend.check_health()

    def __del__(self):
        shutdown = getattr(getattr(self, "backend", None), "shutdown", None)
        if shutdown:
            shutdown()


class RemoteBackend:
    """The backend protocol over a ``DeploymentHandle``: what the ingress holds for each model.

    A typed error raised in a replica comes back wrapped by Ray; it is unwrapped here so the ingress sees the
    original ``APIError``. A replica that died or cannot be reached becomes ``BackendUnavailable`` (503).
    """

    def __init__(self, handle):
        self.handle = handle

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        with _unwrapped():
            return await self.handle.transcribe.remote(audio, options)

    async def chat_stream(self, turns: list[ChatTurn], options: ChatOptions) -> AsyncIterator[str]:
        with _unwrapped():
            async for delta in self.handle.options(stream=True).chat_stream.remote(turns, options):
                yield delta

    async def check_health(self) -> None:
        with _unwrapped():
            await self.handle.check_health.remote()


class _unwrapped:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, GeneratorExit):
            return False
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

        if isinstance(exc, APIError):
            cause = exc
        elif isinstance(exc, RayTaskError) and isinstance(exc.cause, APIError):
            cause = exc.cause
        elif isinstance(exc, (ActorDiedError, ActorUnavailableError)):
            cause = BackendUnavailable("The model server is restarting; retry shortly.")
        else:
            return False
        if cause is exc:
            return False
        raise cause from None
