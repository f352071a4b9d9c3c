"""The two pure ASGI middlewares every HTTP request passes (each ``@app.middleware("http")`` layer would cost a task
and two memory streams per request): the access log, outermost, then admission (size and API key)."""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.api.auth import bearer_token, key_matches
from serve_app.api.error_handlers import error_response
from serve_app.api.request_context import start_request
from serve_app.errors import PayloadTooLarge, Unauthorized
from serve_app.metrics import IngressMetrics, log_request

log = logging.getLogger("ray.serve")
OPEN_PATHS = frozenset({"/health"})  # everything else needs an API key when keys are configured


class AccessLog:
    """Gives each request its id, then writes its log line and metrics (route, model, status, time) when it ends."""

    def __init__(self, app: ASGIApp, metrics: IngressMetrics | None = None):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        info = start_request(request.headers.get("x-request-id"))
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            took = time.perf_counter() - started
            route = route_label(request)
            if self.metrics is not None:
                self.metrics.request_done(route, info.model, status, took)
            log_request(log, info.request_id, route=route, model=info.model, status=status, took_s=took)


class Admission:
    """Refuses a body declared over ``max_request_bytes`` before it is read and spooled, and a missing or wrong API
    key (401 in OpenAI's shape) when ``api_keys`` are configured."""

    def __init__(self, app: ASGIApp, max_request_bytes: int, api_keys: frozenset[str] = frozenset()):
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.api_keys = api_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(Request(scope))
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, request: Request):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_request_bytes:
            return error_response(PayloadTooLarge(f"The request is larger than the limit of {self.max_request_bytes} bytes."))
        if self.api_keys and route_path(request) not in OPEN_PATHS:
            token = bearer_token(request.headers.get("authorization"))
            if token is None or not key_matches(token, self.api_keys):
                missing = "Missing API key: send 'Authorization: Bearer <key>'."
                response = error_response(Unauthorized(missing if token is None else "Incorrect API key provided."))
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return None


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
