"""The client side of a model replica: the backend protocol over a Serve ``DeploymentHandle``."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from contextlib import contextmanager
from typing import AsyncIterator, Callable

import numpy as np

from serve_app.core.types import ChatDelta, ChatOptions, ChatTurn, TranscribeOptions, Transcript
from serve_app.errors import APIError, BackendUnavailable, Overloaded, RequestTimeout
from serve_app.serving.wire import to_pcm16, turns_as

MAX_RETRY_AFTER_S = 120


class RemoteBackend:
    """The backend protocol over a ``DeploymentHandle``: what the ingress holds for each model.

    A typed error raised in a replica comes back wrapped by Ray; it is unwrapped here so the ingress sees the
    original ``APIError`` (``typed_errors``). A full queue becomes ``Overloaded`` (503 + Retry-After), a replica that died or cannot be
    reached ``BackendUnavailable`` (503), a call past ``timeout_s`` ``RequestTimeout`` (504); a call that ends early
    (timeout, client gone) is cancelled in the replica too.
    """

    def __init__(self, handle, timeout_s: float | None = None):
        self.handle = handle
        self.timeout_s = timeout_s
        self.queue = QueueDrain()

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        response = self.handle.transcribe.remote(to_pcm16(audio), options)
        with self.queue.tracked(), typed_errors(response, self.timeout_s, self.queue.seconds):
            return await asyncio.wait_for(_result(response), self.timeout_s)

    async def chat_stream(self, turns: list[ChatTurn], options: ChatOptions) -> AsyncIterator[ChatDelta]:
        stream = self.handle.options(stream=True).chat_stream.remote(turns_as(turns, to_pcm16), options)
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s
        with self.queue.tracked(), typed_errors(stream, self.timeout_s, self.queue.seconds):
            while True:
                try:
                    left = None if deadline is None else max(0.0, deadline - loop.time())
                    delta = await asyncio.wait_for(stream.__anext__(), left)
                except StopAsyncIteration:
                    return
                yield delta

    async def check_health(self) -> None:
        response = self.handle.check_health.remote()
        with typed_errors(response, self.timeout_s):
            await asyncio.wait_for(_result(response), self.timeout_s)


async def _result(response):
    return await response


class QueueDrain:
    """How soon this ingress's calls to one model drain: the calls in flight over the recent completion rate. It is
    the Retry-After of an ``Overloaded`` answer, so a client waits for the queue that was measured."""

    def __init__(self, window: int = 64):
        self.in_flight = 0
        self.completions: deque[float] = deque(maxlen=window)

    @contextmanager
    def tracked(self):
        self.in_flight += 1
        try:
            yield
            self.completions.append(time.monotonic())
        finally:
            self.in_flight -= 1

    def seconds(self) -> int:
        if len(self.completions) < 2:
            return 1
        span = self.completions[-1] - self.completions[0]
        rate = (len(self.completions) - 1) / span if span > 0 else math.inf
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(self.in_flight / rate)))


class typed_errors:
    """Turns what a failed handle call raises into the service's typed error (or lets it through), and cancels the
    call in the replica when the caller gave up."""

    def __init__(self, response, timeout_s: float | None, retry_after_s: Callable[[], int] = lambda: 1):
        self.response = response
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        if isinstance(exc, (TimeoutError, asyncio.CancelledError, GeneratorExit)):
            _cancel(self.response)  # timed out or the client is gone: stop the work in the replica too
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            return False
        cause = _typed_error(exc, self.timeout_s, self.retry_after_s)
        if cause is None or cause is exc:
            return False
        raise cause from None


def _cancel(response) -> None:
    try:
        response.cancel()
    except Exception:  # cancel() re-raises the call's own error when it already failed: nothing left to stop
        pass


def _typed_error(exc: BaseException, timeout_s: float | None, retry_after_s: Callable[[], int]) -> APIError | None:
    """The typed error a failed handle call stands for, or None for an unexpected error (a 500)."""
    from ray.exceptions import RayActorError, RayTaskError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, (APIError, BackPressureError)):
        exc = exc.cause
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BackPressureError):
        retry_after = max(1, math.ceil(exc.retry_after_s or 1), retry_after_s())
        return Overloaded("The model is busy: too many requests are queued; retry shortly.", retry_after_s=retry_after)
    if isinstance(exc, TimeoutError):
        return RequestTimeout(f"The request did not finish within {timeout_s or 0:g} s.")
    if isinstance(exc, (RayActorError, DeploymentUnavailableError, ReplicaUnavailableError)):
        return BackendUnavailable("The model server is restarting; retry shortly.")
    return None
