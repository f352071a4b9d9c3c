"""The backend deployment: one replica holds one loaded model and serves the backend protocol over Serve handles."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from typing import AsyncIterator

import numpy as np
from ray import serve

from serve_app.backends import make_backend, warm_up
from serve_app.config import VoxtralModelConfig, WhisperModelConfig
from serve_app.core.types import ChatDelta, ChatOptions, ChatTurn, TranscribeOptions, Transcript, duration_of
from serve_app.errors import APIError
from serve_app.metrics import ModelMetrics, log_request
from serve_app.serving.wire import from_pcm16, turns_as

log = logging.getLogger("ray.serve")

# A replica whose backend fails this many requests in a row with unexpected errors reports itself unhealthy,
# and Serve replaces it (a backend's own check_health catches a dead engine sooner).
FAILURES_BEFORE_UNHEALTHY = 3


@serve.deployment
class ModelServer:
    async def __init__(self, model: WhisperModelConfig | VoxtralModelConfig):
        started = time.perf_counter()
        gpu_share = model.deployment.ray_actor_options.get("num_gpus")
        self.name = model.name
        self.backend = make_backend(model, gpu_share=gpu_share)
        self.metrics = ModelMetrics(model.name)
        self.consecutive_failures = 0
        loaded = time.perf_counter() - started
        warmed = await warm_up(self.backend)
        log.info("model %s ready: load %.2f s, warm-up %.2f s", model.name, loaded, warmed)

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        audio = from_pcm16(audio)
        with self._serving("transcribe", options.request_id, duration_of(audio)):
            return await self.backend.transcribe(audio, options)

    async def chat_stream(self, turns: list[ChatTurn], options: ChatOptions) -> AsyncIterator[ChatDelta]:
        turns = turns_as(turns, from_pcm16)
        audio_s = sum(duration_of(p) for t in turns for p in t.parts if isinstance(p, np.ndarray))
        with self._serving("chat", options.request_id, audio_s):
            async for delta in self.backend.chat_stream(turns, options):
                yield delta

    async def check_health(self) -> None:
        if self.consecutive_failures >= FAILURES_BEFORE_UNHEALTHY:
            raise RuntimeError(f"{self.consecutive_failures} requests in a row failed in the {self.name} backend")
        await self.backend.check_health()

    @contextmanager
    def _serving(self, task: str, request_id: str | None, audio_s: float):
        """Metrics, one log line per request (with the ingress's request id) and the failure count for health."""
        self.metrics.started()
        started = time.perf_counter()
        try:
            yield
        except APIError as e:
            log_request(log, request_id, e.message, model=self.name, task=task, status=e.status_code)
            raise
        except asyncio.CancelledError:  # the caller left: the backend has stopped the work (see its transcribe)
            self.metrics.was_cancelled()
            log_request(log, request_id, "cancelled", model=self.name, task=task, status=499)
            raise
        except Exception:
            self.consecutive_failures += 1
            self.metrics.failed()
            log.exception("request_id=%s model=%s task=%s failed in the backend", request_id, self.name, task)
            raise
        else:
            self.consecutive_failures = 0
            took = time.perf_counter() - started
            self.metrics.processed(audio_s, took)
            rtf = took / audio_s if audio_s else 0.0
            log_request(log, request_id, model=self.name, task=task, audio_s=audio_s, took_s=took, rtf=rtf)
        finally:
            self.metrics.finished()

    def __del__(self):
        shutdown = getattr(getattr(self, "backend", None), "shutdown", None)
        if shutdown:
            shutdown()


