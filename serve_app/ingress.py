"""The HTTP ingress: OpenAI-compatible routes. It decodes and validates audio, then routes by ``model`` to a backend.

Nothing but decoded audio and plain dataclasses crosses to the backends; every error is a typed ``APIError``, turned
into OpenAI's error JSON by the handlers at the bottom of this module.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import AsyncIterator, Optional

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from ray import serve

from . import formats
from .audio import decode_audio
from .auth import bearer_token, key_matches, load_api_keys
from .config import AppConfig
from .errors import APIError, InvalidAudio, InvalidRequest, ModelNotFound, PayloadTooLarge, Unauthorized
from .metrics import IngressMetrics, log_request
from .model_server import RemoteBackend
from .protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    ResponseFormat,
    TranscriptTextDelta,
    TranscriptTextDone,
    dump,
    new_id,
)
from .transcribe import Transcriber
from .vad import has_speech
from .transcript import SAMPLE_RATE, ChatOptions, ChatTurn, TranscribeOptions

log = logging.getLogger("ray.serve")

app = FastAPI(title="Speech-to-text (OpenAI-compatible)", version="0.1.0")
_MULTIPART_OVERHEAD = 1 << 20
_OPEN_PATHS = {"/health"}  # everything else needs an API key when keys are configured


@dataclass
class RequestInfo:
    """What the middleware learns about a request in flight: its id (Serve sets X-Request-ID) and model."""

    request_id: str
    model: str = ""


_request_info: ContextVar[RequestInfo | None] = ContextVar("request_info", default=None)


def _current_request() -> RequestInfo:
    info = _request_info.get()
    if info is None:  # outside the HTTP middleware (direct calls)
        info = RequestInfo(new_id("req"))
        _request_info.set(info)
    return info


class Gate:
    """The one middleware, pure ASGI (each ``@app.middleware("http")`` layer costs a task and two memory streams per
    request): the request id and the log line and metrics of every request, then the size and API-key checks."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        info = RequestInfo(request.headers.get("x-request-id") or new_id("req"))
        _request_info.set(info)
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = await _refusal(request)
            if refusal is not None:
                await refusal(scope, receive, send_and_note_status)
            else:
                await self.app(scope, receive, send_and_note_status)
        finally:
            took = time.perf_counter() - started
            route = _route_label(request)
            metrics = getattr(request.app.state, "metrics", None)
            if metrics is not None:
                metrics.request_done(route, info.model, status, took)
            log_request(log, info.request_id, route=route, model=info.model, status=status, took_s=took)


async def _refusal(request: Request) -> Response | None:
    """A body declared over the limit (refused before it is read and spooled), or a missing or wrong API key (the
    ``auth`` config; 401 in OpenAI's shape); None lets the request through."""
    limit = getattr(request.app.state, "max_request_bytes", None)
    length = request.headers.get("content-length")
    if limit and length and length.isdigit() and int(length) > limit:
        return await _api_error(request, PayloadTooLarge(f"The request is larger than the limit of {limit} bytes."))
    keys = getattr(request.app.state, "api_keys", None)
    if keys and _route_path(request) not in _OPEN_PATHS:
        token = bearer_token(request.headers.get("authorization"))
        if token is None or not key_matches(token, keys):
            message = "Missing API key: send 'Authorization: Bearer <key>'." if token is None else "Incorrect API key provided."
            response = await _api_error(request, Unauthorized(message))
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
    return None


app.add_middleware(Gate)


def _route_path(request: Request) -> str:
    """The path inside the app (without the route prefix the app is mounted at)."""
    path, root = request.url.path, request.scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


def _route_label(request: Request) -> str:
    """A bounded metrics label: the matched route's template, or "other" for paths that match no route."""
    route = request.scope.get("route")
    if route is not None:
        return route.path
    path = _route_path(request)
    return path if any(getattr(r, "path", None) == path for r in request.app.routes) else "other"


# --- one error style: typed errors to OpenAI's error JSON ---


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)} if hasattr(exc, "retry_after_s") else None
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query")]
    param = ".".join(loc) or None
    message = f"Invalid request: {param + ': ' if param else ''}{first.get('msg', 'invalid parameters')}"
    return JSONResponse(InvalidRequest(message, param=param).to_dict(), status_code=400)


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return JSONResponse(APIError("The server had an error while processing your request.").to_dict(), status_code=500)


# --- helpers of the routes ---
# They must be defined above the class: serve.ingress(app) freezes a cloudpickled copy of the app and its routes
# when the class is decorated, and a global defined after that point is missing from the copy (NameError).


def _b64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidAudio("The audio data is not valid base64.", param="messages") from None


def _data_url(url: str) -> tuple[bytes, str | None]:
    """Only ``data:`` URLs are accepted: fetching arbitrary URLs from inside the cluster is a security risk."""
    if not url.startswith("data:"):
        raise InvalidRequest("audio_url must be a data: URL (data:audio/...;base64,...).", param="messages")
    header, sep, payload = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidRequest("audio_url must be base64-encoded (data:audio/...;base64,...).", param="messages")
    return _b64(payload), header[: -len(";base64")] or None


async def _started(deltas: AsyncIterator[str]) -> AsyncIterator[str]:
    """Wait for the first delta before the response starts, so an overloaded, failed or timed-out backend is
    answered with its own status code rather than an error event inside a 200 stream."""
    return _chain(await anext(deltas, None), deltas)


async def _chain(first: str | None, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    if first is None:
        return
    yield first
    async for delta in rest:
        yield delta


def _sse(events: AsyncIterator[dict], done_marker: bool = True) -> StreamingResponse:
    async def body():
        try:
            async for event in events:
                yield f"data: {json.dumps(event)}\n\n"
        except APIError as e:
            yield f"data: {json.dumps(e.to_dict())}\n\n"
        except Exception:
            log.exception("stream failed")
            yield f"data: {json.dumps({'error': {'message': 'internal error', 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
        if done_marker:
            yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _chat_chunks(request_id: str, model: str, deltas: AsyncIterator[str]) -> AsyncIterator[dict]:
    created = int(time.time())

    def chunk(delta: Delta, finish: str | None = None) -> dict:
        return dump(ChatCompletionChunk(id=request_id, created=created, model=model, choices=[ChunkChoice(delta=delta, finish_reason=finish)]))

    yield chunk(Delta(role="assistant", content=""))
    async for text in deltas:
        if text:
            yield chunk(Delta(content=text))
    yield chunk(Delta(), "stop")


async def _transcript_events(deltas: AsyncIterator[str]) -> AsyncIterator[dict]:
    text = []
    async for delta in deltas:
        if delta:
            text.append(delta)
            yield dump(TranscriptTextDelta(delta=delta))
    yield dump(TranscriptTextDone(text="".join(text).strip()))


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, config: AppConfig, models: dict):
        self.config = config
        self.limits = config.limits
        self.names = config.model_names()
        self.default_model = config.default_model or config.models[0].name
        self.backends = {name: RemoteBackend(handle, self.limits.request_timeout_s) for name, handle in models.items()}
        self.transcribers = {name: Transcriber(backend, config.chunking) for name, backend in self.backends.items()}
        self.kinds = {m.name: m.backend for m in config.models}
        self.metrics = IngressMetrics()
        # base64 in chat requests inflates audio by 4/3; multipart adds a little.
        app.state.max_request_bytes = self.limits.max_upload_bytes * 4 // 3 + _MULTIPART_OVERHEAD
        app.state.api_keys = load_api_keys(config.auth)
        app.state.metrics = self.metrics
        if config.chunking.enabled:  # load the VAD now: a missing dependency fails the deploy, not the first request
            started = time.perf_counter()
            has_speech(np.zeros(SAMPLE_RATE, np.float32), config.chunking)
            log.info("VAD loaded and warmed up in %.2f s", time.perf_counter() - started)
        log.info("API keys %s", f"required ({len(app.state.api_keys)} configured)" if app.state.api_keys else "not configured: the API is open")

    # --- routes ---

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(self) -> dict:
        cards = [ModelCard(id=alias, backend=self.kinds[name], root=name) for alias, name in self.names.items()]
        return dump(ModelList(data=cards))

    @app.get("/v1/models/{model_id}")
    async def get_model(self, model_id: str) -> dict:
        name = self._resolve(model_id)
        return dump(ModelCard(id=model_id, backend=self.kinds[name], root=name))

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        self,
        file: UploadFile = File(...),
        model: Optional[str] = Form(None),
        language: Optional[str] = Form(None),
        prompt: Optional[str] = Form(None),
        response_format: ResponseFormat = Form("json"),
        temperature: float = Form(0.0, ge=0.0, le=1.0),
        timestamp_granularities: list[str] = Form([], alias="timestamp_granularities[]"),
        stream: bool = Form(False),
        max_tokens: Optional[int] = Form(None, ge=1),
        ignore_eos: bool = Form(False),
    ) -> Response:
        extra = {"max_tokens": max_tokens, "ignore_eos": ignore_eos}
        return await self._speech_to_text(
            "transcribe", file, model, language, prompt, response_format, temperature, timestamp_granularities, stream, extra
        )

    @app.post("/v1/audio/translations")
    async def translations(
        self,
        file: UploadFile = File(...),
        model: Optional[str] = Form(None),
        prompt: Optional[str] = Form(None),
        response_format: ResponseFormat = Form("json"),
        temperature: float = Form(0.0, ge=0.0, le=1.0),
    ) -> Response:
        return await self._speech_to_text("translate", file, model, None, prompt, response_format, temperature, [], False, {})

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: ChatCompletionRequest) -> Response:
        name = self._resolve(request.model)
        request_id = new_id("chatcmpl")
        turns = await asyncio.gather(*(self._turn(m) for m in request.messages))
        options = ChatOptions(
            max_tokens=request.max_completion_tokens or request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            request_id=_current_request().request_id,
        )
        deltas = self.backends[name].chat_stream(list(turns), options)
        model_id = request.model or name
        if request.stream:
            return _sse(_chat_chunks(request_id, model_id, await _started(deltas)))
        text = "".join([d async for d in deltas])
        return JSONResponse(dump(ChatCompletion(id=request_id, model=model_id, choices=[Choice(message=AssistantMessage(content=text))])))

    # --- helpers ---

    def _resolve(self, model: str | None) -> str:
        if not model:
            name = self.default_model
        elif model in self.names:
            name = self.names[model]
        else:
            raise ModelNotFound(f"The model {model!r} does not exist. Available: {', '.join(self.names)}.", param="model")
        _current_request().model = name
        return name

    async def _read_upload(self, file: UploadFile) -> bytes:
        if file.size is not None and file.size > self.limits.max_upload_bytes:
            raise PayloadTooLarge(f"The file is larger than the limit of {self.limits.max_upload_bytes} bytes.", param="file")
        data = await file.read()
        if len(data) > self.limits.max_upload_bytes:
            raise PayloadTooLarge(f"The file is larger than the limit of {self.limits.max_upload_bytes} bytes.", param="file")
        return data

    async def _decode(self, data: bytes, filename: str | None, content_type: str | None) -> np.ndarray:
        try:
            return await asyncio.to_thread(
                decode_audio,
                data,
                filename=filename,
                content_type=content_type,
                max_duration_s=self.limits.max_duration_s,
                min_duration_s=self.limits.min_duration_s,
            )
        except APIError as e:
            self.metrics.decode_failed(e.code)
            raise

    async def _speech_to_text(
        self, task, file, model, language, prompt, response_format, temperature, granularities, stream, extra
    ) -> Response:
        name = self._resolve(model)
        unknown = set(granularities) - {"segment", "word"}
        if unknown:
            raise InvalidRequest(f"Unknown timestamp granularities: {sorted(unknown)}.", param="timestamp_granularities[]")
        if granularities and response_format != "verbose_json":
            raise InvalidRequest("timestamp_granularities requires response_format verbose_json.", param="timestamp_granularities[]")
        data = await self._read_upload(file)
        audio = await self._decode(data, file.filename, file.content_type)
        options = TranscribeOptions(
            language=language or None,
            prompt=prompt,
            temperature=temperature,
            task=task,
            word_timestamps="word" in granularities,
            request_id=_current_request().request_id,
            **extra,
        )
        if stream:
            deltas = await _started(self.transcribers[name].stream(audio, options))
            return _sse(_transcript_events(deltas), done_marker=False)
        transcript = await self.transcribers[name].transcribe(audio, options)
        body, media_type = formats.render(transcript, response_format, task)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=media_type)

    async def _turn(self, message: ChatMessage) -> ChatTurn:
        content = message.content
        if content is None or isinstance(content, str):
            return ChatTurn(role=message.role, parts=(content or "",))
        parts = []
        for part in content:
            if part.type == "text":
                parts.append(part.text)
            elif part.type == "audio_url":
                data, mime = _data_url(part.audio_url.url)
                parts.append(await self._decode(data, None, mime))
            else:
                fmt = part.input_audio.format
                parts.append(await self._decode(_b64(part.input_audio.data), f"audio.{fmt}" if fmt else None, None))
        return ChatTurn(role=message.role, parts=tuple(parts))
