"""The backend deployment: one replica holds one loaded model and serves the backend protocol over Serve handles."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import AsyncIterator

import numpy as np
from ray import serve

from .backends import make_backend
from .config import VoxtralModelConfig, WhisperModelConfig
from .errors import APIError, BackendUnavailable, Overloaded, RequestTimeout
from .metrics import ModelMetrics, log_request
from .transcript import ChatOptions, ChatTurn, TranscribeOptions, Transcript, duration_of

log = logging.getLogger("ray.serve")

# Audio crosses the handle as 16-bit PCM: half the bytes of float32, and Serve's gRPC transport between replicas costs
# per byte (a 30 s clip: 7.5-9.0 -> 4.0-4.8 ms a call on the 2-core box, benchmarks/handle_payload.py). Lossless
# for 16-bit sources (most uploads decode to multiples of 1/32768); samples past full scale are clipped.
_PCM_SCALE = 32768


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    scaled = np.multiply(audio, _PCM_SCALE, dtype=np.float32)
    np.clip(scaled, -_PCM_SCALE, _PCM_SCALE - 1, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.int16)


def from_pcm16(audio: np.ndarray) -> np.ndarray:
    """16 kHz float32 again; anything else (float32 from a caller that sends it as it is) passes through."""
    if not (isinstance(audio, np.ndarray) and audio.dtype == np.int16):
        return audio
    return np.multiply(audio, np.float32(1 / _PCM_SCALE), dtype=np.float32)


def _turns_as(turns: list[ChatTurn], convert) -> list[ChatTurn]:
    return [replace(t, parts=tuple(convert(p) if isinstance(p, np.ndarray) else p for p in t.parts)) for t in turns]


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
        warm_up = await self.backend.warm_up()
        log.info("model %s ready: load %.2f s, warm-up %.2f s", model.name, loaded, warm_up)

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        audio = from_pcm16(audio)
        with self._serving("transcribe", options.request_id, duration_of(audio)):
            return await self.backend.transcribe(audio, options)

    async def chat_stream(self, turns: list[ChatTurn], options: ChatOptions) -> AsyncIterator[str]:
        turns = _turns_as(turns, from_pcm16)
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


class RemoteBackend:
    """The backend protocol over a ``DeploymentHandle``: what the ingress holds for each model.

    A typed error raised in a replica comes back wrapped by Ray; it is unwrapped here so the ingress sees the
    original ``APIError``. A full queue becomes ``Overloaded`` (503 + Retry-After), a replica that died or cannot be
    reached ``BackendUnavailable`` (503), a call past ``timeout_s`` ``RequestTimeout`` (504); a call that ends early
    (timeout, client gone) is cancelled in the replica too.
    """

    def __init__(self, handle, timeout_s: float | None = None):
        self.handle = handle
        self.timeout_s = timeout_s

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        response = self.handle.transcribe.remote(to_pcm16(audio), options)
        with _unwrapped(response, self.timeout_s):
            return await asyncio.wait_for(_result(response), self.timeout_s)

    async def chat_stream(self, turns: list[ChatTurn], options: ChatOptions) -> AsyncIterator[str]:
        stream = self.handle.options(stream=True).chat_stream.remote(_turns_as(turns, to_pcm16), options)
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s
        with _unwrapped(stream, self.timeout_s):
            while True:
                try:
                    left = None if deadline is None else max(0.0, deadline - loop.time())
                    delta = await asyncio.wait_for(stream.__anext__(), left)
                except StopAsyncIteration:
                    return
                yield delta

    async def check_health(self) -> None:
        response = self.handle.check_health.remote()
        with _unwrapped(response, self.timeout_s):
            await asyncio.wait_for(_result(response), self.timeout_s)


async def _result(response):
    return await response


class _unwrapped:
    def __init__(self, response, timeout_s: float | None):
        self.response = response
        self.timeout_s = timeout_s

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        if isinstance(exc, (TimeoutError, asyncio.CancelledError, GeneratorExit)):
            _cancel(self.response)  # timed out or the client is gone: stop the work in the replica too
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            return False
        cause = _api_error(exc, self.timeout_s)
        if cause is None or cause is exc:
            return False
        raise cause from None


def _cancel(response) -> None:
    try:
        response.cancel()
    except Exception:  # cancel() re-raises the call's own error when it already failed: nothing left to stop
        pass


def _api_error(exc: BaseException, timeout_s: float | None) -> APIError | None:
    """The typed error a failed handle call stands for, or None for an unexpected error (a 500)."""
    from ray.exceptions import RayActorError, RayTaskError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, (APIError, BackPressureError)):
        exc = exc.cause
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BackPressureError):
        retry_after = max(1, math.ceil(exc.retry_after_s or 1))
        return Overloaded("The model is busy: too many requests are queued; retry shortly.", retry_after_s=retry_after)
    if isinstance(exc, TimeoutError):
        return RequestTimeout(f"The request did not finish within {timeout_s or 0:g} s.")
    if isinstance(exc, (RayActorError, DeploymentUnavailableError, ReplicaUnavailableError)):
        return BackendUnavailable("The model server is restarting; retry shortly.")
    return None
