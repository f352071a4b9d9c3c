"""The old clients' route with real models: chat completions get the transcription route's guards and truthful answers.

The request is the one the old vLLM server's clients send, byte for byte: a base64 WAV in ``audio_url``, the text
"Transcribe this audio.", ``max_tokens: 256``, ``temperature: 0``. Both backends of the ``vox`` app serve it: the tiny
random Voxtral through the real vLLM engine, and Whisper tiny.en.
"""

from __future__ import annotations

import base64
import json
import math
import time

import httpx
import numpy as np
import pytest
from helpers import assert_openai_error, clip, corpus_wer, read, wav_bytes

from serve_app.core.types import SAMPLE_RATE

VOXTRAL, WHISPER = "voxtral-tiny", "whisper-1"
SPEECH = "en_pocketsphinx_goforward.wav"  # 2.786 s: "go forward ten meters"
# The chat budget of audio (serve_app/core/token_budget.py, ChatConfig's defaults): 8 tokens/s, 16 slack, 128 answer.
BUDGET_2786MS = math.ceil(2.786 * 8) + 16 + 128


def tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return wav_bytes((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))


def old_client_request(model: str, audio: bytes, **extra) -> dict:
    b64 = base64.b64encode(audio).decode()
    content = [
        {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64}"}},
        {"type": "text", "text": "Transcribe this audio."},
    ]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 256, "temperature": 0, **extra}


def chat(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


@pytest.fixture(scope="module")
def speech(audio_dir) -> bytes:
    return read(audio_dir, SPEECH)


@pytest.fixture(scope="module")
def speech_seconds(voxtral_url, speech) -> float:
    """How long the old request with real speech takes Voxtral, warm: what a short clip costs."""
    chat(voxtral_url, old_client_request(VOXTRAL, speech))
    started = time.perf_counter()
    assert chat(voxtral_url, old_client_request(VOXTRAL, speech)).status_code == 200
    return time.perf_counter() - started


@pytest.mark.parametrize("model", [VOXTRAL, WHISPER])
@pytest.mark.parametrize(
    "audio", [tone(5), tone(10), wav_bytes(np.zeros(10 * SAMPLE_RATE, np.float32))], ids=["440Hz-5s", "440Hz-10s", "silence-10s"]
)
def test_no_invented_text_on_audio_without_speech(voxtral_url, speech_seconds, model, audio):
    started = time.perf_counter()
    r = chat(voxtral_url, old_client_request(model, audio))
    took = time.perf_counter() - started
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["choices"][0]["message"]["content"] == "" and answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}  # the engine never ran
    assert took < max(1.0, 2 * speech_seconds), f"{took:.2f} s against {speech_seconds:.2f} s for a short clip"


def test_whisper_still_transcribes_speech(voxtral_url, manifest, speech):
    answer = chat(voxtral_url, old_client_request(WHISPER, speech)).json()
    assert corpus_wer([clip(manifest, SPEECH)["transcript"]], [answer["choices"][0]["message"]["content"]]) <= 0.5
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["prompt_tokens"] == 0 and 0 < answer["usage"]["completion_tokens"] < 40


def test_voxtral_budget_follows_the_duration_not_max_tokens(voxtral_url, speech):
    """Random weights never stop by themselves: the answer ends at the budget of 2.8 s of audio (or a loop cut), far
    below the old request's 256 tokens."""
    answer = chat(voxtral_url, old_client_request(VOXTRAL, speech)).json()
    usage, choice = answer["usage"], answer["choices"][0]
    assert choice["message"]["content"]
    assert 0 < usage["completion_tokens"] <= BUDGET_2786MS < 256
    assert choice["finish_reason"] == ("length" if usage["completion_tokens"] == BUDGET_2786MS else "stop")


def test_voxtral_usage_is_the_engines_count(voxtral_url, speech, tiny_voxtral_dir):
    """prompt_tokens is the prompt the engine got (audio tokens included), tokenized here independently;
    completion_tokens is max_tokens when the answer was cut there."""
    from mistral_common.protocol.instruct.chunk import AudioChunk, TextChunk
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from serve_app.audio.decode import decode_audio

    tokenizer = MistralTokenizer.from_file(str(tiny_voxtral_dir / "tekken.json"))
    audio = AudioChunk(input_audio=wav_bytes(decode_audio(speech), subtype="FLOAT"))
    request = ChatCompletionRequest(messages=[UserMessage(content=[audio, TextChunk(text="Transcribe this audio.")])])
    prompt_tokens = len(tokenizer.encode_chat_completion(request).tokens)

    answer = chat(voxtral_url, old_client_request(VOXTRAL, speech, max_tokens=5)).json()
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5}

    lines = httpx.post(
        f"{voxtral_url}/v1/chat/completions",
        json=old_client_request(VOXTRAL, speech, max_tokens=5, stream=True, stream_options={"include_usage": True}),
        timeout=120,
    ).text.splitlines()
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == answer["usage"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]) == answer["choices"][0]["message"]["content"]


def test_voxtral_transcription_usage_and_language(voxtral_url, speech):
    def verbose(**form):
        r = httpx.post(
            f"{voxtral_url}/v1/audio/transcriptions",
            files={"file": ("s.wav", speech)},
            data={"model": VOXTRAL, "response_format": "verbose_json", **form},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        return r.json()

    body = verbose()
    assert body["language"] is None  # Voxtral does not say which language it heard
    usage = body["usage"]
    assert usage["type"] == "tokens" and usage["input_tokens"] > 35 and 0 < usage["output_tokens"] <= 40
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert verbose(language="en")["language"] == "en"


def test_whisper_transcription_usage_is_the_duration(voxtral_url, speech):
    r = httpx.post(f"{voxtral_url}/v1/audio/transcriptions", files={"file": ("s.wav", speech)}, data={"model": WHISPER}, timeout=120)
    assert r.json()["usage"] == {"type": "duration", "seconds": pytest.approx(2.786, abs=0.01)}


@pytest.mark.parametrize(
    "model, form, param",
    [
        (VOXTRAL, {"prompt": "Kennedy"}, "prompt"),
        (VOXTRAL, {"response_format": "verbose_json", "timestamp_granularities[]": "word"}, "timestamp_granularities[]"),
        (WHISPER, {"max_tokens": "8"}, "max_tokens"),
        (WHISPER, {"ignore_eos": "true"}, "ignore_eos"),
    ],
)
def test_parameters_a_backend_cannot_honour_are_refused(voxtral_url, speech, model, form, param):
    r = httpx.post(
        f"{voxtral_url}/v1/audio/transcriptions", files={"file": ("s.wav", speech)}, data={"model": model, **form}, timeout=60
    )
    assert assert_openai_error(r, 400)["param"] == param
    assert_openai_error(chat(voxtral_url, old_client_request(WHISPER, speech, top_p=0.5)), 400)
