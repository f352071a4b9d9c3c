"""Server-side turn detection: where speech starts and stops in a stream, from Silero's per-window probabilities.

The rule is the file path's (``audio.vad.speech_regions``), run causally: speech starts once ``START_WINDOWS``
windows in a row reach the threshold (one window alone is more often a click than a word), and stops after
``silence_duration_ms`` of windows below ``threshold - 0.15``; in between, speech goes on.

Speech is ``pausing`` once ``pause_ms`` of that silence have passed (the config's ``early_final_pause_ms``): the
utterance has probably ended, and the session starts its final decode then rather than after the whole silence. Any
window that is not silent after that ``resumed`` it (the decode is dropped); otherwise ``stopped`` follows.
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
    """``started`` (at the first speech window), ``pausing`` / ``resumed``, or ``stopped`` (once the silence is long
    enough), at a stream position in samples."""

    kind: str
    sample: int


class TurnDetector:
    def __init__(self, settings: TurnDetection, pause_ms: int, origin: int = 0):
        """``origin``: the stream position of the first sample this detector will be given."""
        self.settings = settings
        self.origin = origin
        self.vad = StreamingVAD()
        self.in_speech = False
        self._window = 0  # index of the next window scored
        self._run = 0  # speech windows in a row (before a start) or silent windows in a row (during speech)
        self._silence_windows = max(1, round(settings.silence_duration_ms * SAMPLE_RATE / 1000 / WINDOW))
        self._pause_windows = max(1, round(pause_ms * SAMPLE_RATE / 1000 / WINDOW))
        self.pausing = False

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
        here = self.origin + (self._window + 1) * WINDOW
        if p < max(t - 0.15, 0.01):
            self._run += 1
            if self._run >= self._silence_windows:
                self.reset()
                return Turn("stopped", here)
            if self._run == min(self._pause_windows, self._silence_windows - 1):
                self.pausing = True
                return Turn("pausing", here)
            return None
        if p >= t:
            self._run = 0
        if self.pausing:
            self.pausing = False
            return Turn("resumed", here)
        return None

    def reset(self) -> None:
        """Ends speech without an event (a cleared buffer or a forced end): the next speech window starts anew."""
        self.in_speech, self._run, self.pausing = False, 0, False
