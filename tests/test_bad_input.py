"""Bad input over real HTTP: each request gets its 4xx in OpenAI's error shape, and the server keeps serving.

After every bad request, a good one must still succeed on the same app (no dead replica, no stuck worker).
"""

from __future__ import annotations

import base64
import struct

import httpx
import numpy as np
import pytest
from conftest import WHISPER_TEST_MODEL
from helpers import assert_openai_error, normalise, read, transcribe, wav_bytes

GOOD = "en_pocketsphinx_goforward.wav"  # 2.8 s, 89 KB: "go forward ten meters"
LIMITS = {"max_upload_bytes": 100_000, "max_duration_s": 2.0}


@pytest.fixture(scope="module")
def good_wav(audio_dir) -> bytes:
    return read(audio_dir, GOOD)


@pytest.fixture(scope="module")
def short_wav(good_wav) -> bytes:
    """The first 1.5 s of the good clip ("go forward"): fits the small limits of ``limited_url``."""
    import io

    import soundfile as sf

    samples, sr = sf.read(io.BytesIO(good_wav), dtype="int16")
    return wav_bytes(samples[: int(1.5 * sr)], sr)


@pytest.fixture(scope="module")
def limited_url(deploy_app) -> str:
    """A second app with small limits: 100 kB uploads, 2 s of audio."""
    return deploy_app("limited", {"models": [WHISPER_TEST_MODEL], "limits": LIMITS})


def assert_still_serves(url: str, data: bytes) -> None:
    r = transcribe(url, data, "good.wav")
    assert r.status_code == 200, r.text
    assert "forward" in normalise(r.json()["text"]), r.text


def chat(url: str, content, model: str = "whisper-1") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


# --- uploads ---


def test_empty_file(base_url, good_wav):
    assert_openai_error(transcribe(base_url, b"", "empty.wav", "audio/wav"), 400, "invalid_audio")
    assert_still_serves(base_url, good_wav)


def test_random_bytes(base_url, good_wav):
    noise = np.random.default_rng(7).bytes(64_000)
    assert_openai_error(transcribe(base_url, noise, "noise.wav", "audio/wav"), 400, "invalid_audio")
    assert_still_serves(base_url, good_wav)


def test_truncated_wav_transcribes_what_is_there(base_url, good_wav):
    # The header is intact (it still claims 2.786 s); the data stops mid-sample after 1.25 s. Like ffmpeg, we
    # decode the samples that arrived rather than refuse the file: 200, and the duration is what was really sent.
    cut = good_wav[: 44 + 40_001]
    r = transcribe(base_url, cut, "cut.wav", response_format="verbose_json")
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(1.25, abs=0.01)
    assert_still_serves(base_url, good_wav)


def test_wav_header_claiming_a_huge_length(base_url, good_wav):
    data = bytearray(good_wav)
    at = data.find(b"data")
    struct.pack_into("<I", data, at + 4, 0xFFFFFF00)  # claims ~37 h (8.5 GB as float32); 2.786 s are present
    struct.pack_into("<I", data, 4, 0xFFFFFF00 + at)
    r = transcribe(base_url, bytes(data), "huge.wav", response_format="verbose_json")
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(2.786, abs=0.01)
    assert "forward" in normalise(r.json()["text"])
    assert_still_serves(base_url, good_wav)


def test_wrong_extension_still_transcribes(base_url, good_wav):
    r = transcribe(base_url, good_wav, "clip.mp3", "audio/mpeg")
    assert r.status_code == 200, r.text
    assert normalise(r.json()["text"]) == normalise("go forward ten meters")


def test_text_file_is_unsupported_media_type(base_url, good_wav):
    r = transcribe(base_url, b"Minutes of the meeting\n- item one\n", "notes.txt", "text/plain")
    assert_openai_error(r, 415, "unsupported_media_type")
    assert_still_serves(base_url, good_wav)


def test_missing_file(base_url, good_wav):
    r = httpx.post(f"{base_url}/v1/audio/transcriptions", data={"model": "whisper-1"}, timeout=60)
    assert assert_openai_error(r, 400)["param"] == "file"
    # a multipart body whose audio is under another field name
    r = httpx.post(f"{base_url}/v1/audio/transcriptions", files={"audio": ("a.wav", good_wav)}, timeout=60)
    assert assert_openai_error(r, 400)["param"] == "file"
    assert_still_serves(base_url, good_wav)


def test_unknown_model(base_url, good_wav):
    error = assert_openai_error(transcribe(base_url, good_wav, model="whisper-42"), 404, "model_not_found")
    assert error["param"] == "model" and "whisper-1" in error["message"]  # it lists what exists
    assert_still_serves(base_url, good_wav)


def test_bad_response_format(base_url, good_wav):
    error = assert_openai_error(transcribe(base_url, good_wav, response_format="docx"), 400)
    assert error["param"] == "response_format"
    assert_still_serves(base_url, good_wav)


@pytest.mark.parametrize("temperature", ["5", "-0.1", "hot"])
def test_bad_temperature(base_url, good_wav, temperature):
    error = assert_openai_error(transcribe(base_url, good_wav, temperature=temperature), 400)
    assert error["param"] == "temperature"
    assert_still_serves(base_url, good_wav)


def test_word_timestamps_need_verbose_json(base_url, good_wav):
    r = transcribe(base_url, good_wav, **{"timestamp_granularities[]": "word"})
    assert_openai_error(r, 400)
    assert_still_serves(base_url, good_wav)


# --- limits (a second app with small limits) ---


def test_oversize_upload(limited_url, audio_dir, short_wav):
    big = read(audio_dir, "en_jfk_inaugural_16k.wav")  # 352 kB > 100 kB
    assert_openai_error(transcribe(limited_url, big, "big.wav"), 413, "payload_too_large")
    assert_still_serves(limited_url, short_wav)


def test_oversize_body_is_refused_before_it_is_read(limited_url, short_wav):
    # A chat body is bounded only by the request size limit (100 kB * 4/3 for base64, plus 1 MiB of slack).
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(short_wav).decode(), "format": "wav"}}
    padding = {"type": "text", "text": "x" * 1_500_000}
    assert_openai_error(chat(limited_url, [padding, audio]), 413, "payload_too_large")
    assert_still_serves(limited_url, short_wav)


def test_over_duration(limited_url, good_wav, short_wav):
    assert len(good_wav) < LIMITS["max_upload_bytes"]  # small enough to upload, but 2.786 s > 2 s
    error = assert_openai_error(transcribe(limited_url, good_wav), 413, "payload_too_large")
    assert "2 s" in error["message"]
    assert_still_serves(limited_url, short_wav)


# --- chat completions ---


def test_chat_with_a_non_data_url(base_url, good_wav):
    part = {"type": "audio_url", "audio_url": {"url": "http://127.0.0.1:9/clip.wav"}}
    assert assert_openai_error(chat(base_url, [part]), 400)["param"] == "messages"
    assert_still_serves(base_url, good_wav)


def test_chat_with_invalid_base64(base_url, good_wav):
    part = {"type": "input_audio", "input_audio": {"data": "this is not base64!!", "format": "wav"}}
    assert_openai_error(chat(base_url, [part]), 400, "invalid_audio")
    url_part = {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,%%%"}}
    assert_openai_error(chat(base_url, [url_part]), 400, "invalid_audio")
    assert_still_serves(base_url, good_wav)


def test_chat_without_audio(base_url, good_wav):
    assert assert_openai_error(chat(base_url, "Hello, how are you?"), 400)["param"] == "messages"
    assert assert_openai_error(chat(base_url, [{"type": "text", "text": "hi"}]), 400)["param"] == "messages"
    assert_still_serves(base_url, good_wav)


def test_chat_with_undecodable_audio(base_url, good_wav):
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"\0" * 1000).decode(), "format": "wav"}}
    assert_openai_error(chat(base_url, [part]), 400, "invalid_audio")
    assert_still_serves(base_url, good_wav)


def test_chat_with_an_unknown_model(base_url, good_wav):
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(good_wav).decode(), "format": "wav"}}
    assert_openai_error(chat(base_url, [part], model="gpt-4o"), 404, "model_not_found")
    assert_still_serves(base_url, good_wav)
