"""Voxtral end to end: HTTP -> ingress -> ModelServer -> vLLM AsyncLLM (CPU build) with a tiny random Voxtral.

Random weights make no sense of speech, but they do make the engine's output depend on the audio, so these tests
check the plumbing (prompt, audio features, sampling, every response format, chat, streaming) for real.
"""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from serve_app.audio.wav import wav_bytes

MODEL = "voxtral-tiny"


@pytest.fixture(scope="module")
def client(voxtral_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=voxtral_url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def speech(audio_dir) -> bytes:
    return (audio_dir / "en_jfk_inaugural_16k.wav").read_bytes()


def test_models_lists_voxtral(client):
    ids = {m.id for m in client.models.list().data}
    assert {MODEL, "whisper-tiny.en", "whisper-1"} <= ids


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
def test_transcription_every_format(client, speech, fmt):
    out = client.audio.transcriptions.create(model=MODEL, file=("jfk.wav", speech), response_format=fmt, language="en")
    if fmt == "json":
        assert out.text.strip()
    elif fmt == "text":
        assert isinstance(out, str) and out.strip()
    elif fmt == "verbose_json":
        assert out.duration == pytest.approx(11.0, abs=0.05)
        assert out.segments and out.segments[0].start == 0.0 and out.segments[-1].end <= out.duration + 1e-6
        assert out.text.strip() == " ".join(s.text.strip() for s in out.segments)
    elif fmt == "srt":
        assert out.startswith("1\n00:00:00,000 --> 00:00:11,000\n")
    else:
        assert out.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:11.000\n")


def test_speech_and_silence_differ(client, speech):
    silence = wav_bytes(np.zeros(16000 * 11, np.float32))
    a = client.audio.transcriptions.create(model=MODEL, file=("s.wav", speech), language="en").text
    b = client.audio.transcriptions.create(model=MODEL, file=("z.wav", silence), language="en").text
    again = client.audio.transcriptions.create(model=MODEL, file=("s.wav", speech), language="en").text
    assert a == again, "temperature 0 must be deterministic"
    assert a != b


def test_max_tokens_bounded_by_duration(client, speech):
    """A 1 s clip may produce at most ~8 tokens/s + 16: random weights never stop early, so this bound shows.

    One second of speech: noise would be dropped by the VAD before it reached the model.
    """
    samples, sr = sf.read(io.BytesIO(speech), dtype="float32")
    short = wav_bytes(samples[sr : 2 * sr])
    out = client.audio.transcriptions.create(model=MODEL, file=("n.wav", short))
    again = client.audio.transcriptions.create(model=MODEL, file=("n.wav", short))
    assert 0 < len(out.text) and len(out.text) == len(again.text)
    assert len(out.text) < 200


def test_translation_is_served(client, speech):
    out = client.audio.translations.create(model=MODEL, file=("jfk.wav", speech))
    assert out.text.strip()


def _chat_audio_url(data: bytes) -> list[dict]:
    b64 = base64.b64encode(data).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64}"}},
                {"type": "text", "text": "What is said in this audio?"},
            ],
        }
    ]


def test_chat_with_audio_url(client, speech):
    out = client.chat.completions.create(model=MODEL, messages=_chat_audio_url(speech), max_tokens=12)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content


def test_chat_with_input_audio_differs_by_audio(client, speech):
    silence = wav_bytes(np.zeros(16000 * 11, np.float32))

    def ask(data):
        msg = [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}},
            {"type": "text", "text": "Transcribe."},
        ]}]  # fmt: skip
        return client.chat.completions.create(model=MODEL, messages=msg, max_tokens=12).choices[0].message.content

    assert ask(speech) != ask(silence)


def test_streaming_chat(client, speech):
    stream = client.chat.completions.create(model=MODEL, messages=_chat_audio_url(speech), max_tokens=12, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    full = client.chat.completions.create(model=MODEL, messages=_chat_audio_url(speech), max_tokens=12)
    assert len(chunks) > 3 and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert text == full.choices[0].message.content


def test_seed_client_request_shape(voxtral_url, speech):
    """The raw JSON the old vLLM server's clients send, byte for byte, over plain HTTP."""
    body = {"model": MODEL, "messages": _chat_audio_url(speech), "temperature": 0.0, "max_tokens": 8}
    r = httpx.post(voxtral_url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "files, status",
    [
        ({"file": ("x.wav", b"")}, 400),
        ({"file": ("x.wav", np.random.default_rng(1).bytes(4000))}, 400),
        ({"file": ("x.txt", b"hello world")}, 415),
    ],
)
def test_bad_audio_is_4xx(voxtral_url, files, status):
    r = httpx.post(voxtral_url + "/v1/audio/transcriptions", files=files, data={"model": MODEL}, timeout=60)
    assert r.status_code == status and r.json()["error"]["message"]


def test_long_audio_is_chunked_but_chat_over_context_is_400(voxtral_url, speech):
    """2048 tokens of context hold about 160 s of audio at 12.5 tokens/s. A 200 s transcription is cut by the VAD into
    chunks of at most 30 s, each within the context, so it is served; chat audio is not cut, so 200 s of it must be
    refused, not crash. (Random weights may say nothing on a chunk, so only the times of what they say are checked.)"""
    samples, sr = sf.read(io.BytesIO(speech), dtype="float32")
    long = wav_bytes(np.tile(samples, int(np.ceil(200 * sr / len(samples))))[: 200 * sr])
    r = httpx.post(
        voxtral_url + "/v1/audio/transcriptions",
        files={"file": ("l.wav", long)},
        data={"model": MODEL, "response_format": "verbose_json"},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duration"] == pytest.approx(200.0, abs=0.01)
    segs = body["segments"]
    assert all(0 <= s["start"] < s["end"] <= 200 and s["end"] - s["start"] <= 30.0 + 1e-6 for s in segs)
    assert all(a["end"] <= b["start"] for a, b in zip(segs, segs[1:]))
    b64 = base64.b64encode(long).decode()
    msg = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}}]}]
    r = httpx.post(voxtral_url + "/v1/chat/completions", json={"model": MODEL, "messages": msg, "max_tokens": 4}, timeout=120)
    assert r.status_code == 400, r.text
    ok = httpx.post(voxtral_url + "/v1/audio/transcriptions", files={"file": ("s.wav", speech)}, data={"model": MODEL}, timeout=60)
    assert ok.status_code == 200


def test_chat_rejects_non_data_url(voxtral_url):
    body = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": "http://127.0.0.1/x.wav"}}]}]}
    r = httpx.post(voxtral_url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


@pytest.mark.parametrize("seconds, language", [(1.0, None), (3.0, "en"), (29.9, "fr"), (31.0, None)])
def test_cached_transcription_prompt_equals_encode_transcription(tiny_voxtral_dir, seconds, language):
    """The per-length token cache must give exactly what mistral_common's encode_transcription gives."""
    from mistral_common.protocol.transcription.request import TranscriptionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from serve_app.backends.voxtral import transcription_prompt

    instruct = MistralTokenizer.from_file(str(tiny_voxtral_dir / "tekken.json")).instruct_tokenizer
    audio = np.random.default_rng(3).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)
    expected = instruct.encode_transcription(TranscriptionRequest(audio=wav_bytes(audio, subtype="FLOAT"), language=language))
    cache: dict = {}
    for _ in range(2):  # computed, then served from the cache
        got = transcription_prompt(instruct, audio, language, cache)
        assert got["prompt_token_ids"] == expected.tokens
        (array, sr), = got["multi_modal_data"]["audio"]
        assert sr == 16000 and array is audio  # not copied: vLLM's audio processor pads it, with the same tokenizer
        assert np.allclose(instruct.audio_encoder.pad(array, sr), expected.audios[0].audio_array, atol=1e-6)
    assert len(cache) == 1


def test_cached_chat_prompt_equals_encode_chat_completion(tiny_voxtral_dir):
    """The chat prompt's tokens, cached by the conversation's shape, are exactly mistral_common's for the real clips;
    the clips go to the engine uncopied, in order, and pad to what mistral_common gives."""
    from mistral_common.protocol.instruct.chunk import AudioChunk, TextChunk
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from serve_app.backends.voxtral import CHAT_PROMPTS_KEPT, chat_prompt
    from serve_app.core.types import ChatTurn
    from serve_app.errors import InvalidRequest

    mistral = MistralTokenizer.from_file(str(tiny_voxtral_dir / "tekken.json"))
    rng = np.random.default_rng(4)
    first, second = (rng.normal(0, 0.1, int(s * 16000)).astype(np.float32) for s in (3.0, 31.0))
    turns = [ChatTurn("user", (first, "What is said?")), ChatTurn("assistant", ("Hello.",)), ChatTurn("user", ("And here?", second))]
    expected = mistral.encode_chat_completion(ChatCompletionRequest(messages=[
        UserMessage(content=[AudioChunk(input_audio=wav_bytes(first, subtype="FLOAT")), TextChunk(text="What is said?")]),
        AssistantMessage(content="Hello."),
        UserMessage(content=[TextChunk(text="And here?"), AudioChunk(input_audio=wav_bytes(second, subtype="FLOAT"))]),
    ]))  # fmt: skip
    cache: dict = {}
    for _ in range(2):  # computed, then served from the cache
        got = chat_prompt(mistral, turns, cache)
        assert got["prompt_token_ids"] == expected.tokens
        clips = got["multi_modal_data"]["audio"]
        assert len(clips) == 2 and all(a is b for (a, _), b in zip(clips, (first, second)))
        for (array, sr), padded in zip(clips, expected.audios):
            assert sr == 16000 and np.allclose(mistral.instruct_tokenizer.audio_encoder.pad(array, sr), padded.audio_array, atol=1e-6)
    assert len(cache) == 1
    (turns_shape,) = cache
    other = chat_prompt(mistral, [ChatTurn("user", (first, "Transcribe."))], cache)  # another shape: its own tokens
    assert len(cache) == 2 and other["prompt_token_ids"] != expected.tokens
    with pytest.raises(InvalidRequest, match="Invalid conversation"):  # mistral_common's validation still applies
        chat_prompt(mistral, [ChatTurn("system", ("Be brief.",)), ChatTurn("user", (first,))], cache)
    assert len(cache) == 2
    for i in range(CHAT_PROMPTS_KEPT + 5):  # a client that varies its text cannot grow the cache without bound
        chat_prompt(mistral, [ChatTurn("user", (first, f"Transcribe #{i}."))], cache)
    assert len(cache) == CHAT_PROMPTS_KEPT and turns_shape not in cache  # the oldest shapes went first
