"""Shared test helpers: English WER, subtitle parsing, synthetic audio and the OpenAI error shape."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from serve_app.audio.wav import wav_bytes  # noqa: F401  (tests import it from here)

NO_REFERENCE = "no reference"


# --- word error rate ---


@lru_cache(maxsize=1)
def _normaliser():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalise(text: str) -> str:
    """Whisper's English normaliser: case, punctuation, spelling variants and numerals made comparable."""
    return _normaliser()(text)


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate over the whole corpus (errors summed over all clips / reference words), both sides normalised."""
    import jiwer

    return jiwer.wer([normalise(r) for r in references], [normalise(h) for h in hypotheses])


def english_references(clip: dict) -> dict[str, str]:
    """The reference text(s) of a manifest row: {"": text}, {"left": .., "right": ..} for the stereo clip, or {}."""
    if clip["transcript"] != NO_REFERENCE:
        return {"": clip["transcript"]}
    return dict(clip.get("channel_transcripts") or {})


# --- subtitles ---


@dataclass
class Cue:
    start: float
    end: float
    text: str


_SRT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d),(\d{3})"
_VTT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})"


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_srt(body: str) -> list[Cue]:
    """Parse SubRip strictly: blocks of `n`, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, text; numbered 1, 2, 3, ..."""
    cues = []
    timing = re.compile(f"^{_SRT_TIME} --> {_SRT_TIME}$")
    for n, block in enumerate(_blocks(body), start=1):
        lines = block.split("\n")
        assert lines[0] == str(n), f"cue {n} has sequence number {lines[0]!r}"
        assert len(lines) >= 3, f"cue {n} lacks timing or text: {block!r}"
        match = timing.match(lines[1])
        assert match, f"cue {n} has a malformed timing line {lines[1]!r}"
        g = match.groups()
        cues.append(Cue(_seconds(*g[:4]), _seconds(*g[4:]), "\n".join(lines[2:])))
    return cues


def parse_vtt(body: str) -> list[Cue]:
    """Parse WebVTT strictly: the `WEBVTT` header, then cues of `HH:MM:SS.mmm --> HH:MM:SS.mmm` and text."""
    assert body.startswith("WEBVTT\n"), f"missing WEBVTT header: {body[:40]!r}"
    cues = []
    timing = re.compile(f"^{_VTT_TIME} --> {_VTT_TIME}$")
    for block in _blocks(body)[1:]:
        lines = block.split("\n")
        match = timing.match(lines[0])
        assert match, f"malformed cue timing line {lines[0]!r}"
        assert len(lines) >= 2, f"cue lacks text: {block!r}"
        g = match.groups()
        cues.append(Cue(_seconds(*g[:4]), _seconds(*g[4:]), "\n".join(lines[1:])))
    return cues


def _blocks(body: str) -> list[str]:
    return [b.strip("\n") for b in re.split(r"\n\s*\n", body.replace("\r\n", "\n")) if b.strip()]


def assert_timeline(spans: list[tuple[float, float]], duration: float, slack: float = 0.05) -> None:
    """Spans are well formed, in order, do not overlap and lie inside the clip (plus rounding slack)."""
    assert spans, "no timed segments"
    previous_end = 0.0
    for i, (start, end) in enumerate(spans):
        assert 0 <= start <= end, f"span {i}: start {start} > end {end}"
        assert start >= previous_end - slack, f"span {i} starts at {start}, before the previous end {previous_end}"
        assert end <= duration + slack, f"span {i} ends at {end}, after the clip's {duration} s"
        previous_end = end


# --- audio ---


def clip(manifest: list[dict], name: str) -> dict:
    return next(c for c in manifest if c["file"] == name)


def read(audio_dir: Path, name: str) -> bytes:
    return (audio_dir / name).read_bytes()


# --- HTTP ---


def assert_openai_error(response, status: int, code: str | None = None) -> dict:
    """The response has ``status`` and OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:500]}"
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error"), error
    if code is not None:
        assert error["code"] == code, error
    return error


def transcribe(url: str, data: bytes, filename: str = "audio.wav", content_type: str | None = None, **form):
    """POST /v1/audio/transcriptions as multipart, the way OpenAI clients send it; returns the httpx response."""
    import httpx

    form.setdefault("model", "whisper-1")
    file = (filename, data) if content_type is None else (filename, data, content_type)
    return httpx.post(f"{url}/v1/audio/transcriptions", files={"file": file}, data=form, timeout=120)


def scrape_metrics(metrics_url: str, timeout_s: float = 10) -> list[tuple[str, dict, float]]:
    """Ray's Prometheus endpoint, parsed: (name, labels, value) of every sample."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(metrics_url, timeout=timeout_s).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]
