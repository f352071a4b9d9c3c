"""The data every backend speaks: options in, a transcript with timed segments out. Audio is 16 kHz mono float32."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    task: str = "transcribe"  # or "translate"
    word_timestamps: bool = False
    request_id: str | None = None
    # Extensions (vLLM-style) for generative backends: a cap on output tokens, and generation that ignores the
    # end-of-sequence token so benchmarks with random weights produce a fixed length. A request without max_tokens
    # gets one per chunk from the Transcriber, bounded by the chunk's duration (Whisper ignores both).
    max_tokens: int | None = None
    ignore_eos: bool = False


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float = 1.0


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0
    words: list[Word] | None = None


@dataclass
class Transcript:
    text: str
    language: str | None
    duration: float
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class ChatTurn:
    """One chat message, audio already decoded: ``parts`` holds strings and 16 kHz float32 arrays in order."""

    role: str
    parts: tuple


@dataclass(frozen=True)
class ChatOptions:
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    request_id: str | None = None


def duration_of(audio: np.ndarray) -> float:
    return len(audio) / SAMPLE_RATE
