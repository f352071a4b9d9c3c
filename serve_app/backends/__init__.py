"""Backends behind one protocol (``serve_app.transcript.Backend``); each is imported only when configured."""

from __future__ import annotations

from ..config import VoxtralModelConfig, WhisperModelConfig


def make_backend(model: WhisperModelConfig | VoxtralModelConfig, *, gpu_share: float | None = None):
    if model.backend == "whisper":
        from .whisper import WhisperBackend

        return WhisperBackend(model.whisper)
    from .voxtral import VoxtralBackend

    return VoxtralBackend(model.voxtral, gpu_share=gpu_share)
