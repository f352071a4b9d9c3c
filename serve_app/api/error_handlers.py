"""One error style: every typed error, validation failure and unexpected exception becomes OpenAI's error JSON."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.errors import APIError, InvalidRequest

log = logging.getLogger("ray.serve")


def error_response(exc: APIError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)} if hasattr(exc, "retry_after_s") else None
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query")]
    param = ".".join(loc) or None
    message = f"Invalid request: {param + ': ' if param else ''}{first.get('msg', 'invalid parameters')}"
    return error_response(InvalidRequest(message, param=param))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own refusals (a malformed multipart body, a wrong method, an unknown path) in
    OpenAI's shape; a typed error raised while the body was read (too large, too slow) is answered as itself."""
    if isinstance(exc.__cause__, APIError):
        return error_response(exc.__cause__)
    error = APIError(str(exc.detail))
    error.status_code = exc.status_code
    error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(error)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(APIError("The server had an error while processing your request."))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
