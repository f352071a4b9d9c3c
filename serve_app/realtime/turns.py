"""Server-side turn detection: where speech starts and stops in a stream, from Silero's per-window probabilities.

The rule is the file path's (``audio.vad.speech_regions``), run causally: speech starts once ``START_WINDOWS``
windows in a row reach the threshold (one window alone is more often a click than a word), and stops after
``silence_duration_ms`` of windows below ``threshold - 0.15``; in between, speech goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.audio.vad import WINDOW, StreamingVAD
from serve_app.core.types import SAMPLE_RATE
from serve_app.realtime.protocol import TurnDetection

START_WINDOWS = 2  # 64 ms


@dataclass(frozen=True)
class Turn:
    """``started`` (at the first speech window) or ``stopped`` (once the silence is long enough), in stream samples."""

    kind: str
    sample: int


class TurnDetector:
    def __init__(self, settings: TurnDetection, origin: int = 0):
        """``origin``: the stream position of the first sample this detector will be given."""
        self.settings = settings
        self.origin = origin
        self.vad = StreamingVAD()
        self.in_speech = False
        self._window = 0  # index of the next window scored
        self._run = 0  # speech windows in a row (before a start) or silent windows in a row (during speech)
        self._silence_windows = max(1, round(settings.silence_duration_ms * SAMPLE_RATE / 1000 / WINDOW))

    def push(self, audio: np.ndarray) -> list[Turn]:
        turns = []
        for p in self.vad.push(audio).tolist():
            turn = self._step(p)
            self._window += 1
            if turn:
                turns.append(turn)
        return turns

    def _step(self, p: float) -> Turn | None:
        t = self.settings.threshold
        if not self.in_speech:
            self._run = self._run + 1 if p >= t else 0
            if self._run >= START_WINDOWS:
                self.in_speech, self._run = True, 0
                return Turn("started", self.origin + (self._window + 1 - START_WINDOWS) * WINDOW)
            return None
        if p < max(t - 0.15, 0.01):
            self._run += 1
            if self._run >= self._silence_windows:
                self.in_speech, self._run = False, 0
                return Turn("stopped", self.origin + (self._window + 1) * WINDOW)
        elif p >= t:
            self._run = 0
        return None

    def reset(self) -> None:
        """Ends speech without an event (a cleared buffer or a forced end): the next speech window starts anew."""
        self.in_speech, self._run = False, 0
