"""Typed errors of the service.

Every error a user can cause is one of these; the ingress maps them to OpenAI's error JSON in one handler.
Backends raise them too (they cross Ray handles), so this module imports nothing from FastAPI.
"""

from __future__ import annotations


def quoted(value: str, limit: int = 64) -> str:
    """User input as an error message may quote it: repr'd, and cut to ``limit`` characters."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


class APIError(Exception):
    status_code = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __reduce__(self):  # keep param/code when pickled across Ray
        return (_rebuild, (type(self), self.message, self.param, self.code))


def _rebuild(cls, message, param, code):
    return cls(message, param=param, code=code)


class InvalidRequest(APIError):
    status_code = 400
    type = "invalid_request_error"


class InvalidAudio(InvalidRequest):
    code = "invalid_audio"


class Unauthorized(APIError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class BodyTimeout(APIError):
    """408: the request's body did not arrive in time (a slow or stalled sender)."""

    status_code = 408
    type = "invalid_request_error"
    code = "body_timeout"


class ModelNotFound(APIError):
    status_code = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(APIError):
    status_code = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(APIError):
    status_code = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class ServiceUnavailable(APIError):
    """503: the client should come back after ``retry_after_s`` (sent as the Retry-After header)."""

    status_code = 503
    type = "server_error"

    def __init__(self, message: str, *, retry_after_s: int = 1, **kw):
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class Overloaded(ServiceUnavailable):
    code = "overloaded"


class BackendUnavailable(ServiceUnavailable):
    code = "backend_unavailable"


class RequestTimeout(APIError):
    status_code = 504
    type = "server_error"
    code = "timeout"
