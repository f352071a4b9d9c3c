"""The FastAPI app, built from the typed config and the model backends: the Serve ingress builds it in each replica,
and tests build it in-process with any object that speaks the backend protocol."""

from __future__ import annotations

from fastapi import FastAPI

from serve_app.api.audio_input import AudioInput
from serve_app.api.error_handlers import install_error_handlers
from serve_app.api.middleware import AccessLog, Admission, BodyLimits
from serve_app.api.model_registry import ModelRegistry
from serve_app.api.realtime import RealtimeGate
from serve_app.api.realtime import router as realtime_router
from serve_app.api.routes import router
from serve_app.api.web import router as web_router
from serve_app.backends.base import Backend
from serve_app.config import AppConfig
from serve_app.metrics import IngressMetrics, RealtimeMetrics

# A multipart upload adds its form fields and boundaries to the file; a chat body carries base64 audio (4/3 of its
# bytes) and its messages.
_FORM_OVERHEAD = 1 << 20


def body_limits(config: AppConfig) -> BodyLimits:
    limits = config.limits
    return BodyLimits(
        upload_bytes=limits.max_upload_bytes + _FORM_OVERHEAD,
        json_bytes=limits.max_upload_bytes * 4 // 3 + _FORM_OVERHEAD,
        body_timeout_s=limits.body_timeout_s,
    )


def create_app(
    config: AppConfig,
    backends: dict[str, Backend],
    api_keys: frozenset[str] = frozenset(),
    metrics: IngressMetrics | None = None,
    realtime_metrics: RealtimeMetrics | None = None,
) -> FastAPI:
    app = FastAPI(title="Speech-to-text (OpenAI-compatible)", version="0.1.0")
    app.state.models = ModelRegistry(config, backends)
    app.state.audio_input = AudioInput(config.limits, metrics)
    app.state.realtime = RealtimeGate(config, api_keys, realtime_metrics)
    app.include_router(router)
    app.include_router(realtime_router)
    app.include_router(web_router)
    install_error_handlers(app)
    app.add_middleware(Admission, limits=body_limits(config), api_keys=api_keys)
    app.add_middleware(AccessLog, metrics=metrics)  # added last: the outermost layer, so it logs refusals too
    return app
