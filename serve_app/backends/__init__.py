"""Backends behind one protocol (``base.Backend``); each is imported only when configured."""

from __future__ import annotations

from serve_app.backends.base import Backend, warm_up
from serve_app.config import VoxtralModelConfig, WhisperModelConfig

__all__ = ["Backend", "make_backend", "warm_up"]


def make_backend(model: WhisperModelConfig | VoxtralModelConfig, *, gpu_share: float | None = None) -> Backend:
    if model.backend == "whisper":
        from serve_app.backends.whisper import WhisperBackend

        return WhisperBackend(model.whisper)
    from serve_app.backends.voxtral import VoxtralBackend

    return VoxtralBackend(model.voxtral, gpu_share=gpu_share)
