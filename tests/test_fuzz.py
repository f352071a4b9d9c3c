"""Fuzzing: malformed audio and form fields never cause a 5xx or a dead replica.

Thousands of cases go to ``decode_audio`` in process (the code every upload goes through), and several hundred
through HTTP to the default app: random bytes, real wav/flac/ogg/mp3/aiff/webm/mp4/aac files with mutated headers,
truncated files, and random model/language/response_format/temperature/timestamp_granularities values.
"""

from __future__ import annotations

import base64
import string
from collections import Counter

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replicas import all_running, replica_actor_names

from serve_app.audio.decode import decode_audio
from serve_app.core.types import SAMPLE_RATE
from serve_app.errors import APIError

# libsndfile's seek callback in python-soundfile raises on a negative offset that a mutated mp3 asks for; cffi reports
# and ignores it (the decode then fails or goes on, and its result is checked below like any other).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SEED_FILES = [
    "en_pocketsphinx_goforward.wav",
    "en_jfk_inaugural.flac",
    "en_fleurs_003.ogg",  # Opus
    "en_librivox_sonnet001_head.ogg",  # Vorbis
    "en_librivox_sonnet001.mp3",
    "en_librivox_sonnet001_head.aiff",
    "en_librivox_sonnet001_head.webm",
    "en_librivox_sonnet001_head.mp4",
    "en_librivox_sonnet001_head.aac",
]
SEED_BYTES = 24 * 1024  # the start of each file: its header and a little audio
MAX_DURATION_S = 30.0
MIN_DURATION_S = 0.05
FUZZ = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
OUTCOMES: Counter = Counter()  # what the cases came to, so the last test can show they covered both outcomes


def _seeds() -> list[bytes]:
    from conftest import AUDIO_DIR

    return [(AUDIO_DIR / name).read_bytes()[:SEED_BYTES] for name in SEED_FILES]


SEEDS = _seeds()


@st.composite
def mutated_audio(draw) -> bytes:
    """A real file's start with bytes overwritten, inserted or deleted, mostly in the header, then maybe cut."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        in_header = draw(st.booleans())
        pos = draw(st.integers(0, min(len(data), 64) - 1 if in_header else len(data) - 1))
        op = draw(st.sampled_from(["set", "insert", "delete", "extreme"]))
        if op == "set":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:  # sizes, rates and counts set to 0 or all ones
            data[pos : pos + 4] = draw(st.sampled_from([b"\x00" * 4, b"\xff" * 4, b"\x7f\xff\xff\xff"]))
        if not data:
            break
    return bytes(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


truncated_audio = st.builds(lambda seed, n: seed[:n], st.sampled_from(SEEDS), st.integers(0, 4096))
audio_bytes = st.one_of(st.binary(max_size=4096), mutated_audio(), truncated_audio)
filenames = st.one_of(
    st.none(),
    st.sampled_from(["a.wav", "a.flac", "a.ogg", "a.mp3", "a.txt", "a.json", "a.png", "noext", ".wav"]),
    st.text(string.ascii_letters + string.digits + "._- ", max_size=20),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(["audio/wav", "audio/mpeg", "audio/ogg", "text/plain", "application/json", "image/png",
                     "application/octet-stream", "audio/x-nonsense"]),
)


def _check_decoded(audio: np.ndarray) -> None:
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert MIN_DURATION_S * SAMPLE_RATE <= len(audio) <= (MAX_DURATION_S + 1) * SAMPLE_RATE
    assert np.isfinite(audio).all()


@settings(max_examples=3000, **FUZZ)
@given(data=audio_bytes, filename=filenames, content_type=content_types)
def test_decode_audio_returns_audio_or_a_4xx(data, filename, content_type):
    try:
        audio = decode_audio(
            data, filename=filename, content_type=content_type, max_duration_s=MAX_DURATION_S, min_duration_s=MIN_DURATION_S
        )
    except APIError as e:
        assert 400 <= e.status_code < 500, e
        OUTCOMES[f"decode {e.status_code}"] += 1
        return
    _check_decoded(audio)
    OUTCOMES["decode ok"] += 1


# --- through HTTP ---

short_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
form_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from(["whisper-1", "whisper-tiny.en", "", "gpt-4o-transcribe"]), short_text),
        "language": st.one_of(st.sampled_from(["en", "de", "xx", "", "english", "EN"]), short_text),
        "response_format": st.one_of(st.sampled_from(["json", "text", "srt", "verbose_json", "vtt", "xml", ""]), short_text),
        "temperature": st.one_of(
            st.sampled_from(["0", "0.2", "1", "-1", "2", "nan", "inf", "-inf", "1e308", "", "0x1"]),
            st.floats(allow_nan=True, allow_infinity=True).map(repr),
            short_text,
        ),
        "prompt": short_text,
        "stream": st.sampled_from(["true", "false", "1", "maybe", ""]),
        "timestamp_granularities[]": st.lists(st.one_of(st.sampled_from(["word", "segment"]), short_text), max_size=3),
    },
)


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def replicas_before(base_url) -> dict[str, set[str]]:
    """The default app's replica actors before the HTTP fuzzing (the last test checks they are all still there)."""
    return replica_actor_names("stt")


def _assert_not_5xx(r: httpx.Response) -> None:
    OUTCOMES[f"http {r.status_code}"] += 1
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["message"] and error["type"], error


@settings(max_examples=300, **FUZZ)
@given(
    route=st.sampled_from(["/v1/audio/transcriptions", "/v1/audio/translations"]),
    data=audio_bytes,
    filename=filenames,
    content_type=content_types,
    fields=form_fields,
)
def test_http_uploads_never_5xx(http, replicas_before, route, data, filename, content_type, fields):
    files = {"file": (filename or "upload", data, content_type or "application/octet-stream")}
    _assert_not_5xx(http.post(route, files=files, data=fields))


@settings(max_examples=100, **FUZZ)
@given(route=st.sampled_from(["/v1/audio/transcriptions", "/v1/audio/translations"]), fields=form_fields)
def test_http_form_fields_with_real_audio_never_5xx(http, replicas_before, audio_dir, route, fields):
    audio = (audio_dir / "en_pocketsphinx_goforward.wav").read_bytes()
    _assert_not_5xx(http.post(route, files={"file": ("goforward.wav", audio, "audio/wav")}, data=fields))


@settings(max_examples=100, **FUZZ)
@given(
    data=audio_bytes,
    fmt=st.one_of(st.none(), st.sampled_from(["wav", "mp3", "flac", "ogg", ""]), short_text),
    as_url=st.booleans(),
    mime=st.sampled_from(["audio/wav", "audio/ogg", "text/plain", ""]),
    stream=st.booleans(),
)
def test_http_chat_audio_never_5xx(http, replicas_before, data, fmt, as_url, mime, stream):
    encoded = base64.b64encode(data).decode()
    if as_url:
        part = {"type": "audio_url", "audio_url": {"url": f"data:{mime};base64,{encoded}"}}
    else:
        part = {"type": "input_audio", "input_audio": {"data": encoded, "format": fmt}}
    body = {"model": "whisper-1", "stream": stream, "messages": [{"role": "user", "content": [part]}]}
    _assert_not_5xx(http.post("/v1/chat/completions", json=body))


def test_no_replica_died_while_fuzzing(replicas_before):
    assert replica_actor_names("stt") == replicas_before, "a replica died or was replaced while fuzzing"
    assert all_running("stt")
    print(f"\nfuzz outcomes: {dict(sorted(OUTCOMES.items()))}")
    if OUTCOMES["http 200"] + OUTCOMES["http 400"]:  # the HTTP cases ran: they reached the model, and were refused
        assert OUTCOMES["http 200"] >= 10 and OUTCOMES["http 400"] >= 100
    if OUTCOMES["decode ok"] + OUTCOMES["decode 400"]:
        assert OUTCOMES["decode ok"] >= 100 and OUTCOMES["decode 400"] >= 1000
