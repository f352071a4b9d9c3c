"""The two pure ASGI middlewares every HTTP request passes (each ``@app.middleware("http")`` layer would cost a task
and two memory streams per request): the access log, outermost, then admission (size and API key)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.api.auth import bearer_token, key_matches
from serve_app.api.error_handlers import error_response
from serve_app.api.request_context import start_request
from serve_app.api.web import is_web_path
from serve_app.errors import BodyTimeout, InvalidRequest, PayloadTooLarge, Unauthorized
from serve_app.metrics import IngressMetrics, log_request

log = logging.getLogger("ray.serve")
OPEN_PATHS = frozenset({"/health"})
CLIENT_CLOSED_REQUEST = 499
_EPILOGUE_BYTES = 64  # what a client may send after a multipart body's closing delimiter (a CRLF, in practice)  # everything else needs an API key when keys are configured


class AccessLog:
    """Gives each request its id, then writes its log line and metrics (route, model, status, time) when it ends. A
    client that left before its answer is counted as 499 (nginx's "client closed request"), not as a server error."""

    def __init__(self, app: ASGIApp, metrics: IngressMetrics | None = None):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        info = start_request(request.headers.get("x-request-id"))
        started = time.perf_counter()
        status = None

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        except asyncio.CancelledError:
            status = status or CLIENT_CLOSED_REQUEST
            raise
        finally:
            self._done(request, info, status or 500, time.perf_counter() - started)

    def _done(self, request: Request, info, status: int, took: float) -> None:
        route = route_label(request)
        if self.metrics is not None:
            self.metrics.request_done(route, info.model, status, took)
        log_request(log, info.request_id, route=route, model=info.model, status=status, took_s=took)


class Admission:
    """Refuses what must not be read: a body declared or found to be over its bound (413, counted as it arrives, so
    a chunked upload cannot spool more), a body that does not arrive within ``body_timeout_s`` (408: slow senders do
    not hold the service), and a missing or wrong API key (401) when ``api_keys`` are configured."""

    def __init__(self, app: ASGIApp, limits: BodyLimits, api_keys: frozenset[str] = frozenset()):
        self.app = app
        self.limits = limits
        self.api_keys = api_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        content_type = request.headers.get("content-type")
        limit = self.limits.for_content_type(content_type)
        refusal = self.refusal(request, limit)
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, bounded_body(receive, limit, self.limits.body_timeout_s, closing_delimiter(content_type)), send)

    def refusal(self, request: Request, limit: int):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            return error_response(PayloadTooLarge(f"The request is larger than the limit of {limit} bytes."))
        path = route_path(request)
        if self.api_keys and path not in OPEN_PATHS and not is_web_path(path):
            token = bearer_token(request.headers.get("authorization"))
            if token is None or not key_matches(token, self.api_keys):
                missing = "Missing API key: send 'Authorization: Bearer <key>'."
                response = error_response(Unauthorized(missing if token is None else "Incorrect API key provided."))
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return None


@dataclass(frozen=True)
class BodyLimits:
    upload_bytes: int  # a multipart body: the file plus its form
    json_bytes: int  # a chat body: base64 audio is 4/3 of its bytes
    body_timeout_s: float

    def for_content_type(self, content_type: str | None) -> int:
        return self.upload_bytes if (content_type or "").startswith("multipart/") else self.json_bytes


def closing_delimiter(content_type: str | None) -> bytes | None:
    """The line that ends a multipart body (``--boundary--``), or None for other bodies."""
    if not (content_type or "").startswith("multipart/"):
        return None
    _, _, boundary = content_type.partition("boundary=")
    boundary = boundary.split(";")[0].strip().strip('"')
    return f"--{boundary}--".encode("latin-1", "replace") if boundary else None


def bounded_body(receive: Receive, limit: int, timeout_s: float, closing: bytes | None = None) -> Receive:
    """``receive`` that stops a body past ``limit`` bytes or ``timeout_s`` seconds (from the first read), or a
    multipart body that ends without its ``closing`` delimiter (cut short), with a typed error; the route's body
    parsing raises it, and the error handlers answer it."""
    received, deadline, done, tail = 0, None, False, b""

    async def receive_bounded() -> Message:
        nonlocal received, deadline, done, tail
        if done:
            return await receive()
        loop = asyncio.get_running_loop()
        deadline = deadline or loop.time() + timeout_s
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise BodyTimeout(f"The request body did not arrive within {timeout_s:g} s.") from None
        if message["type"] == "http.request":
            body = message.get("body", b"")
            received += len(body)
            if received > limit:
                raise PayloadTooLarge(f"The request is larger than the limit of {limit} bytes.")
            done = not message.get("more_body", False)
            if closing is not None:
                tail = (tail + body)[-(len(closing) + _EPILOGUE_BYTES) :]
                if done and closing not in tail:
                    raise InvalidRequest("The multipart body ends without its closing boundary: it was cut short.")
        return message

    return receive_bounded


def route_path(request: Request) -> str:
    """The path inside the app (without the route prefix the app is mounted at)."""
    path, root = request.url.path, request.scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


def route_label(request: Request) -> str:
    """A bounded metrics label: the matched route's template, or "other" for paths that match no route."""
    route = request.scope.get("route")
    if route is not None:
        return route.path
    path = route_path(request)
    return path if any(getattr(r, "path", None) == path for r in request.app.routes) else "other"
