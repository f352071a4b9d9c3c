"""The session's input audio buffer: 16 kHz samples addressed by their position in the whole stream."""

from __future__ import annotations

import numpy as np


class SampleBuffer:
    def __init__(self):
        self.start = 0  # stream position of the first sample held
        self.end = 0  # stream position after the last sample received
        self._parts: list[np.ndarray] = []

    def append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._parts.append(samples)
            self.end += len(samples)

    def __len__(self) -> int:
        return self.end - self.start

    def view(self, start: int, end: int | None = None) -> np.ndarray:
        """A copy of the samples in [start, end) of the stream (clamped to what is held)."""
        held = np.concatenate(self._parts) if len(self._parts) != 1 else self._parts[0]
        self._parts = [held] if len(held) else []
        lo = max(start, self.start) - self.start
        hi = (self.end if end is None else min(end, self.end)) - self.start
        return held[lo:hi].copy()

    def drop_before(self, position: int) -> None:
        """Forgets the samples before ``position``."""
        position = min(max(position, self.start), self.end)
        if position == self.start:
            return
        rest = self.view(position)
        self._parts, self.start = ([rest] if len(rest) else []), position
