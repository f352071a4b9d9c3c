"""The routes in-process: the app that the ingress builds, over a recording backend, without Ray (the fast tier).

Every route, request model and error path of the API, in milliseconds per test; the suites over real HTTP and
real models (test_api_whisper, test_voxtral, test_bad_input, ...) cover the same routes end to end.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import assert_openai_error, parse_srt, parse_vtt, read, wav_bytes

from serve_app.api.factory import body_limits, create_app
from serve_app.config import AppConfig
from serve_app.core.types import (
    SAMPLE_RATE,
    ChatDelta,
    ChatOptions,
    ChatTurn,
    Segment,
    TokenUsage,
    TranscribeOptions,
    Transcript,
    Word,
)
from serve_app.errors import BackendUnavailable, InvalidRequest, Overloaded

pytestmark = pytest.mark.fast

WORDS = [Word(0.1, 0.5, " hello", 0.9), Word(0.6, 1.2, " world", 0.8)]


@dataclass
class RecordingBackend:
    """Speaks the backend protocol: answers "hello world" with times and remembers what it was asked. ``usage``: the
    token counts it reports (None: none, as Whisper); ``answer``: the chat answer's pieces."""

    usage: TokenUsage | None = None
    answer: tuple[str, ...] = ("hello", " world")
    transcribed: list[TranscribeOptions] = field(default_factory=list)
    chats: list[tuple[list[ChatTurn], ChatOptions]] = field(default_factory=list)
    error: Exception | None = None
    closed_early: bool = False

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        self.transcribed.append(options)
        if self.error is not None:
            raise self.error
        segment = Segment(0, 0.1, 1.2, " hello world", words=WORDS if options.word_timestamps else None)
        return Transcript("hello world", options.language or "en", len(audio) / SAMPLE_RATE, [segment], self.usage)

    async def chat_stream(self, turns: list[ChatTurn], options: ChatOptions):
        self.chats.append((turns, options))
        if self.error is not None:
            raise self.error
        try:
            for i, text in enumerate(self.answer, start=1):
                finish = None if i < len(self.answer) else ("length" if i == options.max_tokens else "stop")
                yield ChatDelta(text, TokenUsage(50, i), finish)
        except GeneratorExit:
            self.closed_early = True
            raise

    async def check_health(self) -> None:
        if self.error is not None:
            raise self.error


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
    return {"fake-whisper": RecordingBackend(), "fake-voxtral": RecordingBackend(usage=TokenUsage(400, 7))}


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
    assert client.get("/health").json() == {"status": "ok", "models": {"fake-whisper": "ok", "fake-voxtral": "ok"}}
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["fake-whisper", "whisper-1", "fake-voxtral"]
    card = client.get("/v1/models/whisper-1").json()
    assert (card["id"], card["root"], card["backend"]) == ("whisper-1", "fake-whisper", "whisper")
    assert_openai_error(client.get("/v1/models/nope"), 404, "model_not_found")


def test_health_is_503_while_a_model_cannot_serve(client, backends):
    backends["fake-voxtral"].error = BackendUnavailable("The model server is restarting; retry shortly.")
    r = client.get("/health")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "models": {"fake-whisper": "ok", "fake-voxtral": "unavailable"}}


def test_transcription_form_becomes_the_backends_options(client, backends, speech):
    form = {"model": "whisper-1", "language": "en", "prompt": "go", "temperature": "0.2"}
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", speech)}, data=form, headers={"X-Request-ID": "rid-1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"text": "hello world", "usage": {"type": "duration", "seconds": 2.786}}
    (options,) = backends["fake-whisper"].transcribed
    expected = TranscribeOptions(language="en", prompt="go", temperature=0.2, task="transcribe", request_id="rid-1")
    assert replace(options, max_tokens=None) == expected  # the Transcriber's own budget, which Whisper ignores


def test_generation_controls_reach_a_generative_model(client, backends, speech):
    r = _upload(client, speech, model="fake-voxtral", max_tokens="7", ignore_eos="true")
    assert r.json() == {"text": "hello world", "usage": {"type": "tokens", "input_tokens": 400, "output_tokens": 7, "total_tokens": 407}}
    (options,) = backends["fake-voxtral"].transcribed
    assert (options.max_tokens, options.ignore_eos) == (7, True)


@pytest.mark.parametrize(
    "model, form, param",
    [
        ("fake-voxtral", {"prompt": "Kennedy"}, "prompt"),
        ("fake-voxtral", {"response_format": "verbose_json", "timestamp_granularities[]": "word"}, "timestamp_granularities[]"),
        ("whisper-1", {"max_tokens": "7"}, "max_tokens"),
        ("whisper-1", {"ignore_eos": "true"}, "ignore_eos"),
    ],
)
def test_a_parameter_the_backend_cannot_honour_is_refused(client, backends, speech, model, form, param):
    error = assert_openai_error(_upload(client, speech, model=model, **form), 400)
    assert error["param"] == param and param.rstrip("[]") in error["message"]
    assert backends["fake-voxtral"].transcribed == backends["fake-whisper"].transcribed == []


def test_translation_is_the_translate_task(client, backends, speech):
    assert _upload(client, speech, "translations", model="fake-voxtral").json()["text"] == "hello world"
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
    assert _upload(client, silence).json()["text"] == ""
    assert backends["fake-whisper"].transcribed == []


def test_audio_errors(client):
    assert_openai_error(_upload(client, b""), 400, "invalid_audio")
    assert_openai_error(_upload(client, b"not audio at all" * 10), 400, "invalid_audio")
    r = client.post("/v1/audio/transcriptions", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert_openai_error(r, 415, "unsupported_media_type")


def test_oversize_upload_is_a_413_before_it_is_read(client):
    body = b"x" * (body_limits(CONFIG).upload_bytes + 1)
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
    assert answer["usage"] == {"prompt_tokens": 50, "completion_tokens": 2, "total_tokens": 52}
    assert answer["choices"][0]["finish_reason"] == "stop"


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


def _chat(client, audio: bytes | None, text: str = "Transcribe this audio.", **body):
    """The old vLLM server's clients' request: base64 WAV in ``audio_url``, the instruction, max_tokens, temperature."""
    content = [{"type": "text", "text": text}]
    if audio is not None:
        content.insert(0, {"type": "audio_url", "audio_url": {"url": _data_url(audio)}})
    body = {"model": "fake-voxtral", "messages": [{"role": "user", "content": content}], "max_tokens": 256, "temperature": 0, **body}
    return client.post("/v1/chat/completions", json=body)


def _tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return wav_bytes((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))


@pytest.mark.parametrize("audio", [_tone(5), _tone(10), wav_bytes(np.zeros(5 * SAMPLE_RATE, np.float32))], ids=["tone5", "tone10", "silence"])
def test_chat_audio_without_speech_is_answered_empty_without_the_model(client, backends, audio):
    r = _chat(client, audio)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("", "stop")
    assert r.json()["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert backends["fake-voxtral"].chats == []


def test_chat_audio_without_speech_reaches_the_model_when_configured(backends):
    config = CONFIG.model_copy(update={"chat": CONFIG.chat.model_copy(update={"on_no_speech": "model"})})
    client = TestClient(create_app(config, backends))
    assert _chat(client, _tone(5)).json()["choices"][0]["message"]["content"] == "hello world"
    ((_, options),) = backends["fake-voxtral"].chats
    assert options.max_tokens == 40 + 16 + CONFIG.chat.answer_tokens  # 5 s at 8 tokens/s, the slack, the answer


@pytest.mark.parametrize("max_tokens, budget", [(256, 23 + 16 + 128), (None, 23 + 16 + 128), (9, 9)])
def test_chat_budget_follows_the_audio_and_max_tokens_is_a_ceiling(client, backends, speech, max_tokens, budget):
    assert _chat(client, speech, max_tokens=max_tokens).status_code == 200
    ((_, options),) = backends["fake-voxtral"].chats
    assert options.max_tokens == budget


def test_chat_without_audio_keeps_the_clients_max_tokens(client, backends):
    assert _chat(client, None, "Hello?", max_tokens=1000).status_code == 200
    assert backends["fake-voxtral"].chats[0][1].max_tokens == 1000


def test_chat_cut_at_the_budget_says_length(client, backends, speech):
    backends["fake-voxtral"].answer = ("a", " b", " c")
    answer = _chat(client, speech, max_tokens=3).json()
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 50, "completion_tokens": 3, "total_tokens": 53}


def test_runaway_repetition_is_stopped_and_cut(client, backends, speech):
    backends["fake-voxtral"].answer = ("And so my fellow Americans.",) + (" Thank you.",) * 40
    answer = _chat(client, speech).json()
    assert answer["choices"][0]["message"]["content"] == "And so my fellow Americans. Thank you."
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] < 10
    assert backends["fake-voxtral"].closed_early


def test_a_streamed_loop_is_stopped_where_it_is_found(client, backends, speech):
    backends["fake-voxtral"].answer = ("And so my fellow Americans.",) + (" Thank you.",) * 40
    r = _chat(client, speech, stream=True)
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.startswith("And so my fellow Americans. Thank you.") and text.count("Thank you.") <= 4
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and backends["fake-voxtral"].closed_early


def test_streamed_chat_reports_usage_last_when_asked(client, speech):
    r = _chat(client, speech, stream=True, stream_options={"include_usage": True})
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    *body, last = chunks
    assert last["choices"] == [] and last["usage"] == {"prompt_tokens": 50, "completion_tokens": 2, "total_tokens": 52}
    assert all("usage" not in c for c in body) and body[-1]["choices"][0]["finish_reason"] == "stop"
    plain = _chat(client, speech, stream=True)
    assert all("usage" not in json.loads(line[6:]) for line in plain.text.splitlines() if line.startswith("data: {"))


def test_whisper_chat_refuses_top_p(client, backends, speech):
    error = assert_openai_error(_chat(client, speech, model="whisper-1", top_p=0.5), 400)
    assert error["param"] == "top_p" and backends["fake-whisper"].chats == []
