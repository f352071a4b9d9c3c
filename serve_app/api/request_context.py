"""What the access-log middleware learns about the request in flight, for the code that serves it."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from serve_app.api.protocol import new_id


@dataclass
class RequestInfo:
    """The request's id (Serve sets X-Request-ID) and, once a route has resolved it, the model's name."""

    request_id: str
    model: str = ""


_request_info: ContextVar[RequestInfo | None] = ContextVar("request_info", default=None)


def start_request(request_id: str | None) -> RequestInfo:
    info = RequestInfo(request_id or new_id("req"))
    _request_info.set(info)
    return info


def current_request() -> RequestInfo:
    """The request in flight; outside the middleware (a direct call) a fresh one."""
    info = _request_info.get()
    return info if info is not None else start_request(None)
