"""The routes in-process: the app that the ingress builds, over a recording backend, without Ray (the fast tier).

Every route, request model and error path of the API, in milliseconds per test; the suites over real HTTP and
real models (test_api_whisper, test_voxtral, test_bad_input, ...) cover the same routes end to end.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import assert_openai_error, parse_srt, parse_vtt, read, wav_bytes

from serve_app.api.factory import create_app, max_request_bytes
from serve_app.config import AppConfig
from serve_app.core.types import SAMPLE_RATE, ChatOptions, ChatTurn, Segment, TranscribeOptions, Transcript, Word
from serve_app.errors import InvalidRequest, Overloaded

pytestmark = pytest.mark.fast

WORDS = [Word(0.1, 0.5, " hello", 0.9), Word(0.6, 1.2, " world", 0.8)]


@dataclass
class RecordingBackend:
    """Speaks the backend protocol: answers "hello world" with times and remembers what it was asked."""

    transcribed: list[TranscribeOptions] = field(default_factory=list)
    chats: list[tuple[list[ChatTurn], ChatOptions]] = field(default_factory=list)
    error: Exception | None = None

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        self.transcribed.append(options)
        if self.error is not None:
            raise self.error
        segment = Segment(0, 0.1, 1.2, " hello world", words=WORDS if options.word_timestamps else None)
        return Transcript("hello world", options.language or "en", len(audio) / SAMPLE_RATE, [segment])

    async def chat_stream(self, turns: list[ChatTurn], options: ChatOptions):
        self.chats.append((turns, options))
        if self.error is not None:
            raise self.error
        for delta in ("hello", " world"):
            yield delta

    async def check_health(self) -> None:
        return None


CONFIG = AppConfig.model_validate(
    {
        "models": [
            {"name": "fake-whisper", "backend": "whisper", "aliases": ["whisper-1"]},
            {"name": "fake-voxtral", "backend": "voxtral"},
        ],
        "limits": {"max_upload_bytes": 2_000_000},
    }
)


@pytest.fixture
def backends() -> dict[str, RecordingBackend]:
    return {"fake-whisper": RecordingBackend(), "fake-voxtral": RecordingBackend()}


@pytest.fixture
def client(backends) -> TestClient:
    return TestClient(create_app(CONFIG, backends))


@pytest.fixture(scope="module")
def speech(audio_dir) -> bytes:
    return read(audio_dir, "en_pocketsphinx_goforward.wav")


def _upload(client, data: bytes, route: str = "transcriptions", **form):
    return client.post(f"/v1/audio/{route}", files={"file": ("clip.wav", data)}, data=form)


def _data_url(data: bytes) -> str:
    return "data:audio/wav;base64," + base64.b64encode(data).decode()


def test_health_and_models(client):
    assert client.get("/health").json() == {"status": "ok"}
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["fake-whisper", "whisper-1", "fake-voxtral"]
    card = client.get("/v1/models/whisper-1").json()
    assert (card["id"], card["root"], card["backend"]) == ("whisper-1", "fake-whisper", "whisper")
    assert_openai_error(client.get("/v1/models/nope"), 404, "model_not_found")


def test_transcription_form_becomes_the_backends_options(client, backends, speech):
    form = {"model": "whisper-1", "language": "en", "prompt": "go", "temperature": "0.2", "max_tokens": "7", "ignore_eos": "true"}
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", speech)}, data=form, headers={"X-Request-ID": "rid-1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"text": "hello world"}
    (options,) = backends["fake-whisper"].transcribed
    assert options == TranscribeOptions(
        language="en", prompt="go", temperature=0.2, task="transcribe", request_id="rid-1", max_tokens=7, ignore_eos=True
    )


def test_translation_is_the_translate_task(client, backends, speech):
    assert _upload(client, speech, "translations", model="fake-voxtral").json() == {"text": "hello world"}
    (options,) = backends["fake-voxtral"].transcribed
    assert (options.task, options.language, options.word_timestamps) == ("translate", None, False)


def test_default_model_takes_requests_without_one(client, backends, speech):
    assert _upload(client, speech).status_code == 200
    assert len(backends["fake-whisper"].transcribed) == 1


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt", "verbose_json"])
def test_response_formats(client, speech, fmt):
    r = _upload(client, speech, response_format=fmt)
    assert r.status_code == 200, r.text
    if fmt == "text":
        assert r.text == "hello world\n"
    elif fmt == "srt":
        assert [(c.start, c.end, c.text) for c in parse_srt(r.text)] == [(0.1, 1.2, "hello world")]
    elif fmt == "vtt":
        assert [(c.start, c.end, c.text) for c in parse_vtt(r.text)] == [(0.1, 1.2, "hello world")]
    else:
        body = r.json()
        assert (body["task"], body["language"], body["text"]) == ("transcribe", "en", "hello world")
        assert body["duration"] == pytest.approx(2.786, abs=1e-3)
        assert [(s["start"], s["end"]) for s in body["segments"]] == [(0.1, 1.2)]
        assert "words" not in body


def test_word_timestamps(client, backends, speech):
    r = _upload(client, speech, response_format="verbose_json", **{"timestamp_granularities[]": ["word", "segment"]})
    assert r.status_code == 200, r.text
    assert [w["word"] for w in r.json()["words"]] == [" hello", " world"]
    assert backends["fake-whisper"].transcribed[0].word_timestamps


@pytest.mark.parametrize(
    "form",
    [
        {"timestamp_granularities[]": "word"},
        {"timestamp_granularities[]": "sentence", "response_format": "verbose_json"},
        {"temperature": "1.5"},
        {"response_format": "xml"},
        {"max_tokens": "0"},
    ],
)
def test_invalid_fields_are_400s(client, backends, speech, form):
    assert_openai_error(_upload(client, speech, **form), 400)
    assert backends["fake-whisper"].transcribed == []


def test_missing_file_is_a_400(client):
    error = assert_openai_error(client.post("/v1/audio/transcriptions", data={"model": "whisper-1"}), 400)
    assert error["param"] == "file"


def test_unknown_model_is_a_404(client, speech):
    assert_openai_error(_upload(client, speech, model="gpt-9"), 404, "model_not_found")


def test_silence_never_reaches_the_backend(client, backends):
    silence = wav_bytes(np.zeros(2 * SAMPLE_RATE, np.float32))
    assert _upload(client, silence).json() == {"text": ""}
    assert backends["fake-whisper"].transcribed == []


def test_audio_errors(client):
    assert_openai_error(_upload(client, b""), 400, "invalid_audio")
    assert_openai_error(_upload(client, b"not audio at all" * 10), 400, "invalid_audio")
    r = client.post("/v1/audio/transcriptions", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert_openai_error(r, 415, "unsupported_media_type")


def test_oversize_upload_is_a_413_before_it_is_read(client):
    body = b"x" * (max_request_bytes(CONFIG) + 1)
    r = client.post("/v1/audio/transcriptions", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_openai_error(r, 413, "payload_too_large")
    assert_openai_error(_upload(client, b"\0" * 2_000_001), 413, "payload_too_large")


def test_backend_errors_keep_their_status(client, backends, speech):
    backends["fake-whisper"].error = Overloaded("busy", retry_after_s=3)
    r = _upload(client, speech)
    assert_openai_error(r, 503, "overloaded")
    assert r.headers["retry-after"] == "3"
    backends["fake-whisper"].error = InvalidRequest("no such language", param="language")
    assert assert_openai_error(_upload(client, speech), 400)["param"] == "language"


def test_unexpected_errors_are_500s_in_openais_shape(backends, speech):
    backends["fake-whisper"].error = RuntimeError("boom")
    client = TestClient(create_app(CONFIG, backends), raise_server_exceptions=False)
    error = assert_openai_error(_upload(client, speech), 500)
    assert "boom" not in error["message"]


def test_streamed_transcription(client, speech):
    r = _upload(client, speech, stream="true")
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events == [{"type": "transcript.text.delta", "delta": "hello world"}, {"type": "transcript.text.done", "text": "hello world"}]


def test_chat_with_audio_url_and_input_audio(client, backends, speech):
    content = [
        {"type": "audio_url", "audio_url": {"url": _data_url(speech)}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(speech).decode(), "format": "wav"}},
        {"type": "text", "text": "Transcribe this audio."},
    ]
    body = {"model": "fake-voxtral", "messages": [{"role": "user", "content": content}], "max_tokens": 9, "temperature": 0}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["object"] == "chat.completion" and answer["model"] == "fake-voxtral"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "hello world"}
    ((turn,), options) = backends["fake-voxtral"].chats[0]
    assert [type(p).__name__ for p in turn.parts] == ["ndarray", "ndarray", "str"]
    assert len(turn.parts[0]) == len(turn.parts[1]) == pytest.approx(2.786 * SAMPLE_RATE, abs=8)
    assert (options.max_tokens, options.temperature) == (9, 0.0)


def test_streamed_chat(client, speech):
    content = [{"type": "audio_url", "audio_url": {"url": _data_url(speech)}}]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], "stream": True})
    chunks = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert chunks[-1] == "[DONE]"
    deltas = [json.loads(c)["choices"][0] for c in chunks[:-1]]
    assert "".join(d["delta"].get("content") or "" for d in deltas) == "hello world"
    assert deltas[0]["delta"]["role"] == "assistant" and deltas[-1]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "part",
    [
        {"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}},
        {"type": "audio_url", "audio_url": {"url": "data:audio/wav,raw"}},
        {"type": "input_audio", "input_audio": {"data": "%%% not base64", "format": "wav"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ],
)
def test_chat_audio_errors(client, backends, part):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [part]}]})
    assert_openai_error(r, 400)
    assert backends["fake-whisper"].chats == []


def test_api_keys(backends, speech):
    client = TestClient(create_app(CONFIG, backends, api_keys=frozenset({"sk-right"})))
    assert client.get("/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        r = client.get("/v1/models", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models", headers={"Authorization": "Bearer sk-right"}).status_code == 200
