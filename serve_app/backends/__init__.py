"""Backends behind one protocol (``base.Backend``); each is imported only when configured."""

from __future__ import annotations

from importlib import import_module

from serve_app.backends.base import Backend, warm_up
from serve_app.config import VoxtralModelConfig, WhisperModelConfig
from serve_app.core.types import ChatOptions, TranscribeOptions

__all__ = ["Backend", "check_options", "make_backend", "warm_up"]


def check_options(backend: str, options: TranscribeOptions | ChatOptions) -> None:
    """Refuses (400) a request parameter the backend cannot honour, before any work is done."""
    import_module(f"serve_app.backends.{backend}").check_options(options)


def make_backend(model: WhisperModelConfig | VoxtralModelConfig, *, gpu_share: float | None = None) -> Backend:
    if model.backend == "whisper":
        from serve_app.backends.whisper import WhisperBackend

        return WhisperBackend(model.whisper)
    from serve_app.backends.voxtral import VoxtralBackend

    return VoxtralBackend(model.voxtral, gpu_share=gpu_share)
