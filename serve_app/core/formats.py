"""Output formats: one pure renderer per ``response_format``, all in one table.

Each takes a Transcript and returns ``(body, media_type)``; ``body`` is a dict for JSON formats, else a string.
Timestamps are whole milliseconds, rounded (``round(s * 1000)``), so 1.001 s prints as 001 ms, never 000.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

from serve_app.core.types import Transcript


def usage(t: Transcript) -> dict:
    """OpenAI's usage object: tokens as the engine counted them, or the audio's duration for a backend without
    tokens (Whisper, and requests in which no speech reached the model)."""
    if t.usage is None:
        return {"type": "duration", "seconds": round(t.duration, 3)}
    u = t.usage
    return {"type": "tokens", "input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def _json(t: Transcript, task: str):
    return {"text": t.text, "usage": usage(t)}, "application/json"


def _text(t: Transcript, task: str):
    return t.text + "\n", "text/plain; charset=utf-8"


def _verbose_json(t: Transcript, task: str):
    segments = []
    for s in t.segments:
        seg = asdict(s)
        words = seg.pop("words")
        segments.append({"seek": 0, **seg} if words is None else {"seek": 0, **seg, "words": words})
    body = {
        "task": task,
        "language": t.language,
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": segments,
    }
    words = [w for s in t.segments for w in (s.words or [])]
    if words:
        body["words"] = [asdict(w) for w in words]
    body["usage"] = usage(t)
    return body, "application/json"


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _srt(t: Transcript, task: str):
    blocks = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(t.segments, start=1)
    ]
    return "\n".join(blocks), "application/x-subrip; charset=utf-8"


def _vtt(t: Transcript, task: str):
    blocks = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in t.segments]
    return "WEBVTT\n\n" + "\n".join(blocks), "text/vtt; charset=utf-8"


RENDERERS: dict[str, Callable[[Transcript, str], tuple[object, str]]] = {
    "json": _json,
    "text": _text,
    "verbose_json": _verbose_json,
    "srt": _srt,
    "vtt": _vtt,
}


def render(transcript: Transcript, response_format: str, task: str = "transcribe") -> tuple[object, str]:
    return RENDERERS[response_format](transcript, task)
