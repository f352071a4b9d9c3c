"""The form audio takes between the ingress and the model replicas."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from serve_app.core.types import ChatTurn

# Audio crosses the handle as 16-bit PCM: half the bytes of float32, and Serve's gRPC transport between replicas costs
# per byte (a 30 s clip: 7.5-9.0 -> 4.0-4.8 ms a call on the 2-core box, benchmarks/results/handle_payload_cpu.json). Lossless
# for 16-bit sources (most uploads decode to multiples of 1/32768); samples past full scale are clipped.
_PCM_SCALE = 32768


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    scaled = np.multiply(audio, _PCM_SCALE, dtype=np.float32)
    np.clip(scaled, -_PCM_SCALE, _PCM_SCALE - 1, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.int16)


def from_pcm16(audio: np.ndarray) -> np.ndarray:
    """16 kHz float32 again; anything else (float32 from a caller that sends it as it is) passes through."""
    if not (isinstance(audio, np.ndarray) and audio.dtype == np.int16):
        return audio
    return np.multiply(audio, np.float32(1 / _PCM_SCALE), dtype=np.float32)


def turns_as(turns: list[ChatTurn], convert) -> list[ChatTurn]:
    return [replace(t, parts=tuple(convert(p) if isinstance(p, np.ndarray) else p for p in t.parts)) for t in turns]
