"""What a batch job has done this run, counted and shown as it goes."""

from __future__ import annotations

import sys
import time


class Progress:
    """Files done, audio hours done and the rate (audio hours per wall-clock hour), on stderr."""

    def __init__(self, total: int, done: int, quiet: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, unit="file", disable=quiet, file=sys.stderr, dynamic_ncols=True)
        self.started = time.perf_counter()
        self.files = self.errors = 0
        self.audio_s = 0.0

    def update(self, rows: list[dict]) -> None:
        self.files += len(rows)
        self.errors += sum(1 for r in rows if r["error"])
        self.audio_s += sum(r["duration"] or 0.0 for r in rows if not r["error"])
        rate = self.audio_s / max(self.wall_s(), 1e-9)
        self.bar.set_postfix_str(f"audio {self.audio_s / 3600:.3f} h, {rate:.1f} audio-h/h, {self.errors} errors")
        self.bar.update(len(rows))

    def wall_s(self) -> float:
        return time.perf_counter() - self.started

    def close(self) -> None:
        self.bar.close()
