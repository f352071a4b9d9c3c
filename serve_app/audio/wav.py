"""The one WAV encoder: samples to an in-memory WAV file (Voxtral's chat prompts, tests and benchmarks)."""

from __future__ import annotations

import io

import numpy as np

from serve_app.core.types import SAMPLE_RATE


def wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> bytes:
    """``samples`` (1-D, or frames x channels) as a WAV file; ``subtype`` is libsndfile's (PCM_16, FLOAT, ...)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype=subtype)
    return buf.getvalue()
