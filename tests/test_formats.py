"""The response renderers (serve_app/formats.py), without Ray: timestamps, subtitle layout, JSON shapes."""

from __future__ import annotations

import pytest
from helpers import assert_timeline, parse_srt, parse_vtt

from serve_app.core.formats import RENDERERS, render
from serve_app.core.types import Segment, TokenUsage, Transcript, Word

pytestmark = pytest.mark.fast


def transcript(*spans: tuple[float, float, str], duration: float = 10.0, words=None) -> Transcript:
    segments = [Segment(id=i, start=s, end=e, text=t) for i, (s, e, t) in enumerate(spans)]
    if words is not None:
        segments[0].words = words
    return Transcript(text=" ".join(t.strip() for _, _, t in spans), language="en", duration=duration, segments=segments)


def srt_timing(start: float, end: float = 0.0) -> str:
    body, _ = render(transcript((start, end, " x")), "srt")
    return body.split("\n")[1]


@pytest.mark.parametrize(
    "seconds, expected",
    [
        (0.0, "00:00:00,000"),
        (1.001, "00:00:01,001"),  # 1.001 * 1000 = 1000.999...: rounding, not truncation, gives 001
        (2.9999, "00:00:03,000"),  # carries into the seconds
        (59.9996, "00:01:00,000"),  # carries into the minutes
        (0.0015, "00:00:00,002"),
        # Python's round() is round-half-to-even, as in openai-whisper's format_timestamp: an exact half
        # millisecond goes to the even neighbour. 0.0005 s becomes 0 ms, 0.0025 s becomes 2 ms.
        (0.0005, "00:00:00,000"),
        (0.0025, "00:00:00,002"),
        (3661.5, "01:01:01,500"),
        (36000.0, "10:00:00,000"),
        (360000.25, "100:00:00,250"),  # hours are not wrapped at 100
        (-0.2, "00:00:00,000"),  # a slightly negative start from a model is clamped, never printed as -1 ms
    ],
)
def test_srt_timestamp(seconds, expected):
    assert srt_timing(seconds, seconds).split(" --> ")[0] == expected


def test_vtt_uses_a_dot_and_the_same_rounding():
    body, media_type = render(transcript((1.001, 3661.5, " hello")), "vtt")
    assert media_type.startswith("text/vtt")
    assert body == "WEBVTT\n\n00:00:01.001 --> 01:01:01.500\nhello\n"


def test_srt_layout_parses_and_numbers_cues():
    t = transcript((0.0, 2.5, " First line."), (2.5, 4.0, " Second."), (4.2, 9.75, " Third one."))
    body, media_type = render(t, "srt")
    assert media_type.startswith("application/x-subrip")
    assert body == (
        "1\n00:00:00,000 --> 00:00:02,500\nFirst line.\n\n"
        "2\n00:00:02,500 --> 00:00:04,000\nSecond.\n\n"
        "3\n00:00:04,200 --> 00:00:09,750\nThird one.\n"
    )
    cues = parse_srt(body)
    assert [c.text for c in cues] == ["First line.", "Second.", "Third one."]
    assert_timeline([(c.start, c.end) for c in cues], t.duration)


def test_vtt_layout_parses():
    t = transcript((0.0, 2.5, " a"), (2.5, 4.0, " b"))
    cues = parse_vtt(render(t, "vtt")[0])
    assert [(c.start, c.end, c.text) for c in cues] == [(0.0, 2.5, "a"), (2.5, 4.0, "b")]


def test_empty_transcript_renders_empty_subtitles():
    t = Transcript(text="", language="en", duration=1.0, segments=[])
    assert render(t, "srt")[0] == ""
    assert render(t, "vtt")[0] == "WEBVTT\n\n"
    assert render(t, "text")[0] == "\n"
    assert render(t, "json")[0] == {"text": "", "usage": {"type": "duration", "seconds": 1.0}}


def test_json_and_text():
    t = transcript((0.0, 1.0, " Hello there."))
    assert render(t, "json") == ({"text": "Hello there.", "usage": {"type": "duration", "seconds": 10.0}}, "application/json")
    body, media_type = render(t, "text")
    assert body == "Hello there.\n" and media_type.startswith("text/plain")


def test_verbose_json_shape():
    words = [Word(start=0.0, end=0.4, word=" Hello", probability=0.9), Word(start=0.5, end=1.0, word=" there.")]
    t = transcript((0.0, 1.0, " Hello there."), (1.2, 2.0, " Bye."), duration=2.3456, words=words)
    body, media_type = render(t, "verbose_json", "translate")
    assert media_type == "application/json"
    assert body["task"] == "translate" and body["language"] == "en" and body["duration"] == 2.346
    assert body["text"] == "Hello there. Bye."
    first, second = body["segments"]
    assert first["id"] == 0 and first["seek"] == 0 and (first["start"], first["end"]) == (0.0, 1.0)
    assert [w["word"] for w in first["words"]] == [" Hello", " there."]
    assert "words" not in second  # no word timings were asked for that segment
    assert [w["word"] for w in body["words"]] == [" Hello", " there."]
    assert {"tokens", "avg_logprob", "compression_ratio", "no_speech_prob", "temperature"} <= set(first)


def test_verbose_json_without_words_has_no_words_key():
    body, _ = render(transcript((0.0, 1.0, " a")), "verbose_json")
    assert "words" not in body and "words" not in body["segments"][0]


def test_every_openai_response_format_has_a_renderer():
    assert set(RENDERERS) == {"json", "text", "srt", "verbose_json", "vtt"}


def test_usage_is_tokens_where_the_engine_counted_them_else_the_duration():
    t = transcript((0.0, 1.0, " Hi."), duration=2.3456)
    assert render(t, "json")[0]["usage"] == {"type": "duration", "seconds": 2.346}
    t.usage = TokenUsage(prompt_tokens=400, completion_tokens=7)
    tokens = {"type": "tokens", "input_tokens": 400, "output_tokens": 7, "total_tokens": 407}
    assert render(t, "json")[0]["usage"] == tokens
    assert render(t, "verbose_json")[0]["usage"] == tokens


def test_a_language_nobody_reported_is_null():
    t = Transcript(text="", language=None, duration=1.0, segments=[])
    assert render(t, "verbose_json")[0]["language"] is None
