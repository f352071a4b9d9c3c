"""How many tokens a generative backend may produce: the guard against a model that never stops.

Speech carries a bounded number of words per second, so every budget follows the audio's duration. A client's own
``max_tokens`` is a ceiling on that, except where it asked for a fixed length (``ignore_eos``: benchmarks with
random weights).
"""

from __future__ import annotations

import math

# Room past the duration's share for a short clip's punctuation and end-of-sequence token.
_SLACK_TOKENS = 16
# A chat without audio has no duration to follow: it gets this many unless the client asks for fewer or more.
TEXT_CHAT_TOKENS = 256


def chunk_tokens(duration_s: float, tokens_per_s: float, floor: int) -> int:
    """The Transcriber's budget for one chunk of a request that set no ``max_tokens``."""
    return max(floor, math.ceil(duration_s * tokens_per_s))


def audio_tokens(duration_s: float, tokens_per_s: float) -> int:
    """The most tokens a model may spend on ``duration_s`` of speech."""
    return math.ceil(duration_s * tokens_per_s) + _SLACK_TOKENS


def transcription_tokens(duration_s: float, tokens_per_s: float, requested: int | None, ignore_eos: bool) -> int:
    bound = audio_tokens(duration_s, tokens_per_s)
    if ignore_eos and requested:
        return requested
    return min(bound, requested) if requested else bound


def chat_tokens(audio_s: float, tokens_per_s: float, requested: int | None, answer_tokens: int = TEXT_CHAT_TOKENS) -> int:
    """A chat's budget: what its audio can hold plus ``answer_tokens`` for the answer's own words, lowered by the
    client's ``max_tokens``; without audio, the client's ``max_tokens`` or ``TEXT_CHAT_TOKENS``."""
    if audio_s <= 0:
        return requested or TEXT_CHAT_TOKENS
    budget = audio_tokens(audio_s, tokens_per_s) + answer_tokens
    return min(budget, requested) if requested else budget
