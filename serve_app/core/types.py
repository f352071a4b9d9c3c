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
    # Extensions (vLLM-style): a cap on output tokens (Whisper applies it to each 30 s window), and, for generative
    # backends, generation that ignores the end-of-sequence token so benchmarks with random weights produce a fixed
    # length. A request without max_tokens gets one per chunk from the Transcriber, bounded by the chunk's duration.
    max_tokens: int | None = None
    ignore_eos: bool = False
    # A preview (the realtime route's partial text): a backend may decode it the quick way, and refuses it
    # (Overloaded) rather than let it wait for, or hold up, full requests.
    best_effort: bool = False


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


@dataclass(frozen=True)
class TokenUsage:
    """Tokens as the engine counted them: the prompt's (audio tokens included) and the generated ones."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


@dataclass
class Transcript:
    text: str
    language: str | None
    duration: float
    segments: list[Segment] = field(default_factory=list)
    usage: TokenUsage | None = None  # None: a backend that counts no tokens (Whisper); its usage is the duration


@dataclass(frozen=True)
class ChatTurn:
    """One chat message, audio already decoded: ``parts`` holds strings and 16 kHz float32 arrays in order."""

    role: str
    parts: tuple


@dataclass(frozen=True)
class ChatDelta:
    """A piece of a chat answer. ``usage`` is the engine's count so far; the last piece has the ``finish_reason``:
    ``stop`` (the model ended, or a guard did) or ``length`` (cut at the token budget)."""

    text: str
    usage: TokenUsage | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class ChatOptions:
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    request_id: str | None = None
    # False (a request without "stream"): the answer may come as one piece at its end, so that nothing is sent per
    # token between the engine, the model replica and the ingress.
    stream: bool = True


def duration_of(audio: np.ndarray) -> float:
    return len(audio) / SAMPLE_RATE
