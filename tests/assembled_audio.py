"""A long recording built from the shared clips with silences between them, where every clip's place is known.

Used by the long-audio tests and by benchmarks/bench_long_audio.py (which puts this folder on its path).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from serve_app.audio import load_file
from serve_app.transcript import SAMPLE_RATE

# English clips (tiny.en is English-only), the quiet FLEURS ones (peak near -45 dBFS) among them.
ENGLISH_CLIPS = [
    "en_librivox_sonnet001.mp3",
    "en_jfk_inaugural_16k.wav",
    "en_fleurs_002.ogg",
    "en_ljspeech_LJ050-0131.wav",
    "en_librivox_sense_and_sensibility_0870.wav",
    "en_fleurs_000.ogg",
    "en_librivox_sense_and_sensibility_0890.wav",
    "en_fleurs_003.ogg",
    "en_fleurs_001.ogg",
    "en_pocketsphinx_goforward.wav",
]
GAPS_S = [6.0, 9.0, 5.0, 8.0, 7.0, 10.0, 5.5, 8.5, 6.5]  # silence between clips
LEAD_S, TAIL_S = 2.0, 3.0


@dataclass
class Assembled:
    audio: np.ndarray
    speech: list[tuple[float, float]]  # where each clip lies, in seconds
    references: list[str]

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def gaps(self) -> list[tuple[float, float]]:
        """The inserted silences between clips."""
        return [(a[1], b[0]) for a, b in zip(self.speech, self.speech[1:])]

    def wav(self) -> bytes:
        buf = io.BytesIO()
        sf.write(buf, self.audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        return buf.getvalue()


def assemble(audio_dir: Path, manifest: list[dict], clips: list[str] = ENGLISH_CLIPS, repeat: int = 1) -> Assembled:
    """The clips (the list ``repeat`` times) with ``GAPS_S`` silences between them, as 16 kHz float32."""
    transcripts = {row["file"]: row["transcript"] for row in manifest}
    names = clips * repeat
    parts, speech, refs, t = [np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32)], [], [], LEAD_S
    for i, name in enumerate(names):
        clip = load_file(str(audio_dir / name))
        speech.append((t, t + len(clip) / SAMPLE_RATE))
        refs.append(transcripts[name])
        gap = GAPS_S[i % len(GAPS_S)] if i < len(names) - 1 else TAIL_S
        parts += [clip, np.zeros(int(gap * SAMPLE_RATE), np.float32)]
        t += (len(clip) + int(gap * SAMPLE_RATE)) / SAMPLE_RATE
    return Assembled(np.concatenate(parts), speech, refs)
