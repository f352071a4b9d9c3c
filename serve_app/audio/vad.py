"""Voice-activity detection: cuts audio into speech chunks with the Silero VAD that faster-whisper ships (offline ONNX).

The model gives one speech probability per 32 ms window. Speech regions are found with a hysteresis threshold, padded,
and packed in order into chunks of at most ``max_chunk_s``; a region longer than that is cut at its quietest window.
Silence between chunks is dropped. A chunk keeps its place in the audio, so a time inside it is an offset from
``chunk.start_s``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from serve_app.config import ChunkingConfig
from serve_app.core.types import SAMPLE_RATE

WINDOW = 512  # samples per speech probability (32 ms)
_WINDOW_MS = WINDOW * 1000 / SAMPLE_RATE
# Silero misses speech quieter than about -50 dBFS, and quiet speech soon after loud speech, so the audio is first
# brought to full scale by its loudest sample within 5 s either side (in 100 ms blocks). A stretch whose peak is below
# -80 dBFS (digital silence, dither) is left alone rather than amplified into noise.
_SILENCE_PEAK = 1e-4
_GAIN_BLOCK = SAMPLE_RATE // 10
_GAIN_REACH_BLOCKS = 50
# The model is recurrent over windows: a slice run on its own starts with 8 s of the audio before it to settle.
_WARM_UP_WINDOWS = 250
_MIN_SLICE_WINDOWS = 1875  # 60 s: shorter audio is not worth splitting over threads


@dataclass(frozen=True)
class Chunk:
    """A stretch of the request's audio, in samples (end exclusive)."""

    start: int
    end: int

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def speech_chunks(audio: np.ndarray, config: ChunkingConfig) -> list[Chunk]:
    """The speech in ``audio`` as ordered, non-overlapping chunks of at most ``config.max_chunk_s``; [] if none."""
    probs = speech_probabilities(audio, config.vad_threads)
    regions = speech_regions(
        probs, config.threshold, _windows(config.min_silence_ms), _windows(config.min_speech_ms)
    )
    regions = padded(regions, _windows(config.speech_pad_ms), len(probs))
    max_len = int(config.max_chunk_s * 1000 / _WINDOW_MS)
    packed = pack(regions, probs, max_len, _windows(config.max_gap_s * 1000))
    return [Chunk(s * WINDOW, min(e * WINDOW, len(audio))) for s, e in packed]


def has_speech(audio: np.ndarray, config: ChunkingConfig, first_s: float = 2.0) -> bool:
    """Whether ``speech_chunks`` would find speech, mostly from the first seconds alone.

    Short uploads only need this yes or no (they go to the backend whole). Real speech usually starts within the
    first ``first_s`` seconds, so the model runs on a prefix that grows fourfold until speech or the end is reached:
    about a fifth of a full pass for a typical clip, and 1.3 passes at worst (silence).
    """
    if len(audio) == 0:
        return False
    from faster_whisper.vad import get_vad_model

    model = get_vad_model()
    n, k = -(-len(audio) // WINDOW), max(1, _windows(first_s * 1000))
    min_silence, min_speech = _windows(config.min_silence_ms), _windows(config.min_speech_ms)
    while True:
        probs = model(prefix_windows(audio, k).reshape(-1)).reshape(-1)
        if speech_regions(probs, config.threshold, min_silence, min_speech):
            return True
        if k >= n:
            return False
        k *= 4


def speech_probabilities(audio: np.ndarray, threads: int = 1) -> np.ndarray:
    """One Silero speech probability per 32 ms window; long audio runs as slices on ``threads`` threads."""
    from faster_whisper.vad import get_vad_model  # loaded once per process, on first use

    model = get_vad_model()
    if len(audio) == 0:
        return np.zeros(0, np.float32)
    windows = model_windows(audio)
    n = len(windows)
    parts = max(1, min(threads, n // _MIN_SLICE_WINDOWS))
    bounds = np.linspace(0, n, parts + 1).astype(int)

    def run(lo: int, hi: int) -> np.ndarray:
        start = max(0, lo - _WARM_UP_WINDOWS)
        # A copy: the model writes into its input's last window.
        return model(windows[start:hi].copy().reshape(-1)).reshape(-1)[lo - start :]

    if parts == 1:
        return run(0, n)
    with ThreadPoolExecutor(parts, thread_name_prefix="vad") as pool:  # onnxruntime releases the GIL
        return np.concatenate(list(pool.map(run, bounds[:-1], bounds[1:])))


def prefix_windows(audio: np.ndarray, k: int) -> np.ndarray:
    """``model_windows(audio)[:k]``, normalising only the audio those windows and their gain depend on."""
    end = k * WINDOW + (_GAIN_REACH_BLOCKS + 1) * _GAIN_BLOCK
    return model_windows(audio[:end])[:k]


def model_windows(audio: np.ndarray) -> np.ndarray:
    """The Silero model's input: the normalised audio, zero-padded, as (windows, WINDOW)."""
    return np.pad(normalised(audio), (0, -len(audio) % WINDOW)).reshape(-1, WINDOW)


def normalised(audio: np.ndarray) -> np.ndarray:
    """``audio`` scaled, 100 ms at a time, by the loudest sample within 5 s either side (see ``_SILENCE_PEAK``)."""
    # One float32 copy, scaled in place block by block: long audio costs the VAD about twice its size, not five times.
    scaled = np.pad(audio.astype(np.float32), (0, -len(audio) % _GAIN_BLOCK)).reshape(-1, _GAIN_BLOCK)
    blocks = np.maximum(scaled.max(axis=1), -scaled.min(axis=1))
    reach = _GAIN_REACH_BLOCKS
    local_peak = np.lib.stride_tricks.sliding_window_view(np.pad(blocks, reach), 2 * reach + 1).max(axis=1)
    gain = np.where(local_peak > _SILENCE_PEAK, 1 / np.maximum(local_peak, _SILENCE_PEAK), 1.0)
    scaled *= gain[:, None]
    return scaled.reshape(-1)[: len(audio)]


def speech_regions(probs: np.ndarray, threshold: float, min_silence: int, min_speech: int) -> list[tuple[int, int]]:
    """Runs of speech as window ranges [start, end): speech starts at ``threshold`` and ends after ``min_silence``
    windows below ``threshold - 0.15`` (between the two, speech goes on); runs shorter than ``min_speech`` are dropped.
    """
    low = max(threshold - 0.15, 0.01)
    regions: list[tuple[int, int]] = []
    start = silent_since = None
    for i, p in enumerate(probs.tolist()):
        if start is None:
            if p >= threshold:
                start, silent_since = i, None
        elif p < low:
            if silent_since is None:
                silent_since = i
            if i + 1 - silent_since >= min_silence:
                regions.append((start, silent_since))
                start = None
        elif p >= threshold:
            silent_since = None
    if start is not None:
        regions.append((start, len(probs) if silent_since is None else silent_since))
    return [(s, e) for s, e in regions if e - s >= max(min_speech, 1)]


def padded(regions: list[tuple[int, int]], pad: int, n: int) -> list[tuple[int, int]]:
    """Each region widened by ``pad`` windows, but never past the midpoint of the silence to its neighbour."""
    out = []
    for i, (s, e) in enumerate(regions):
        lo = max(s - pad, 0 if i == 0 else (regions[i - 1][1] + s) // 2)
        hi = min(e + pad, n if i == len(regions) - 1 else (e + regions[i + 1][0]) // 2)
        out.append((lo, hi))
    return out


def pack(regions: list[tuple[int, int]], probs: np.ndarray, max_len: int, max_gap: int) -> list[tuple[int, int]]:
    """Regions merged in order into chunks of at most ``max_len`` windows; a silence over ``max_gap`` ends a chunk.

    A region longer than ``max_len`` is cut at its least speech-like window in the second half of each piece (the
    latest such window on a tie).
    """
    pieces = []
    for s, e in regions:
        while e - s > max_len:
            lo = s + max_len // 2
            tail = probs[lo : s + max_len][::-1]
            cut = s + max_len - 1 - int(np.argmin(tail))
            pieces.append((s, cut))
            s = cut
        pieces.append((s, e))
    chunks: list[tuple[int, int]] = []
    for s, e in pieces:
        if chunks and e - chunks[-1][0] <= max_len and s - chunks[-1][1] <= max_gap:
            chunks[-1] = (chunks[-1][0], e)
        else:
            chunks.append((s, e))
    return chunks


def _windows(ms: float) -> int:
    return int(round(ms / _WINDOW_MS))


class StreamingVAD:
    """Silero over audio that arrives in pieces: the model's recurrent state and its 64-sample context are kept
    between pieces, so each window is scored once and as if the stream were one file.

    The gain that ``normalised`` applies looks 5 s ahead; a stream cannot, so a window is scaled by the loudest
    sample of the 5 s up to and including it (a loud onset is at full scale at once, quiet speech after loud
    speech is brought up as the loud part leaves the reach).
    """

    _CONTEXT = 64

    def __init__(self):
        from faster_whisper.vad import get_vad_model

        self._session = get_vad_model().session
        self._state = np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros((1, self._CONTEXT), np.float32)
        self._pending = np.zeros(0, np.float32)
        self._peaks = np.zeros(0, np.float32)  # of the windows within the gain's reach, oldest first

    def push(self, audio: np.ndarray) -> np.ndarray:
        """The speech probability of every whole 32 ms window the stream now holds that was not scored yet."""
        samples = np.concatenate([self._pending, audio.astype(np.float32, copy=False)])
        n = len(samples) // WINDOW
        self._pending = samples[n * WINDOW :]
        if n == 0:
            return np.zeros(0, np.float32)
        windows = samples[: n * WINDOW].reshape(n, WINDOW)
        reach = _GAIN_REACH_BLOCKS * _GAIN_BLOCK // WINDOW
        peaks = np.concatenate([self._peaks, np.abs(windows).max(axis=1)])
        local_peak = np.lib.stride_tricks.sliding_window_view(np.pad(peaks, (reach, 0)), reach + 1).max(axis=1)[-n:]
        self._peaks = peaks[-reach:]
        gain = np.where(local_peak > _SILENCE_PEAK, 1 / np.maximum(local_peak, _SILENCE_PEAK), 1.0)
        windows = (windows * gain[:, None]).astype(np.float32)
        contexts = np.concatenate([self._context, windows[:-1, -self._CONTEXT :]])
        self._context = windows[-1:, -self._CONTEXT :]
        h, c = self._state
        probs, h, c = self._session.run(None, {"input": np.concatenate([contexts, windows], 1), "h": h, "c": c})
        self._state = h, c
        return probs.reshape(-1)
