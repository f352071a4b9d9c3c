"""Raw audio that arrives in pieces (a realtime session's appends) to 16 kHz mono float32, piece by piece.

The formats are those of OpenAI's Realtime API: 16-bit little-endian PCM (at 24 kHz, its rate, or at 16 kHz), and
G.711 mu-law (``audio/pcmu``) and A-law (``audio/pcma``) at 8 kHz, which telephony sends. The resampler (soxr) keeps
its state across pieces, so a stream cut anywhere resamples as if it were one piece.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.core.types import SAMPLE_RATE

PCM_RATES = (24000, 16000)
G711_RATE = 8000


def _mu_law_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.uint8)
    magnitude = ((((u & 0x0F).astype(np.int32) << 3) + 0x84) << ((u >> 4) & 0x07)) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.float32) / 32768


def _a_law_table() -> np.ndarray:
    a = np.arange(256, dtype=np.uint8) ^ 0x55
    exponent, mantissa = ((a >> 4) & 0x07).astype(np.int32), (a & 0x0F).astype(np.int32)
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.float32) / 32768


_G711 = {"audio/pcmu": _mu_law_table(), "audio/pcma": _a_law_table()}


@dataclass(frozen=True)
class StreamFormat:
    """``type`` is ``audio/pcm``, ``audio/pcmu`` or ``audio/pcma``; ``rate`` in Hz."""

    type: str = "audio/pcm"
    rate: int = 24000

    def __post_init__(self):
        if self.type == "audio/pcm" and self.rate not in PCM_RATES:
            raise ValueError(f"audio/pcm is taken at {' or '.join(map(str, PCM_RATES))} Hz, not {self.rate}")
        if self.type in _G711 and self.rate != G711_RATE:
            raise ValueError(f"{self.type} is 8 kHz audio")
        if self.type != "audio/pcm" and self.type not in _G711:
            raise ValueError(f"unknown audio format {self.type!r}")

    @property
    def bytes_per_second(self) -> int:
        return self.rate * (2 if self.type == "audio/pcm" else 1)


class StreamDecoder:
    """Bytes of one stream in, 16 kHz float32 out. A PCM piece may end mid-sample: the odd byte waits for the next.

    ``quality`` is soxr's. Its filters hold samples back: "MQ" up to 38 ms of a 24 kHz stream and 118 ms of an 8 kHz
    one (measured with 20 ms pieces), which is audio for a model; "QQ" (cubic interpolation) holds back none, which is
    what a turn detector wants. Both give the same sample positions.
    """

    def __init__(self, fmt: StreamFormat, quality: str = "MQ"):
        self.format = fmt
        self.quality = quality
        self._resampler = self._new_resampler()
        self._odd = b""

    def _new_resampler(self):
        import soxr

        if self.format.rate == SAMPLE_RATE:
            return None
        return soxr.ResampleStream(self.format.rate, SAMPLE_RATE, 1, "float32", quality=self.quality)

    def decode(self, data: bytes) -> np.ndarray:
        if self.format.type == "audio/pcm":
            data, self._odd = self._odd + data, b""
            if len(data) % 2:
                data, self._odd = data[:-1], data[-1:]
            samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768
        else:
            samples = _G711[self.format.type][np.frombuffer(data, np.uint8)]
        if self._resampler is None:
            return samples
        return self._resampler.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        """The samples the resampler still holds (the stream is complete for now: a commit)."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        rest = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        self._resampler = self._new_resampler()
        return rest


def encode(audio: np.ndarray, fmt: StreamFormat) -> bytes:
    """16 kHz float32 as ``fmt``'s bytes: what a client sends (the realtime client, tests and benchmarks)."""
    import soxr

    if fmt.rate != SAMPLE_RATE:
        audio = soxr.resample(audio, SAMPLE_RATE, fmt.rate)
    pcm = np.clip(np.rint(np.asarray(audio, np.float64) * 32768), -32768, 32767).astype(np.int32)
    if fmt.type == "audio/pcm":
        return pcm.astype("<i2").tobytes()
    return (_mu_law_encode(pcm) if fmt.type == "audio/pcmu" else _a_law_encode(pcm)).tobytes()


def _mu_law_encode(pcm: np.ndarray) -> np.ndarray:
    """ITU-T G.711 mu-law, on the 14-bit magnitude as the reference implementation computes it."""
    v = pcm >> 2
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), 8159) + 0x21
    segment = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), v)
    code = np.where(segment > 7, 0x7F, (np.minimum(segment, 7) << 4) | ((v >> (np.minimum(segment, 7) + 1)) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _a_law_encode(pcm: np.ndarray) -> np.ndarray:
    sign = np.where(pcm >= 0, 0x80, 0)
    magnitude = np.where(pcm >= 0, pcm, -pcm - 1) >> 3  # 13-bit A-law input
    exponent = np.clip(np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4, 0, 7)
    mantissa = np.where(exponent == 0, magnitude >> 1, magnitude >> exponent) & 0x0F
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8)
