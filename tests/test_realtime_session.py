"""The realtime pieces without Ray: stream formats, the streaming VAD and turn detector on real speech, the partial
text rule, event parsing, and whole sessions over the in-process app with a scripted backend."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import read
from starlette.websockets import WebSocketDisconnect

from serve_app.api.factory import create_app
from serve_app.audio.decode import decode_audio
from serve_app.audio.stream import _G711, StreamDecoder, StreamFormat, _a_law_encode, _mu_law_encode, encode
from serve_app.audio.vad import WINDOW, StreamingVAD, speech_probabilities, speech_regions
from serve_app.config import AppConfig, RealtimeConfig
from serve_app.core.types import SAMPLE_RATE, Transcript
from serve_app.errors import Overloaded
from serve_app.realtime.client import ITEM, session_update
from serve_app.realtime.partials import PartialText
from serve_app.realtime.protocol import EventError, SessionSettings, apply_changes, parse_event
from serve_app.realtime.turns import TurnDetector

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def clip(audio_dir) -> np.ndarray:
    return decode_audio(read(audio_dir, "en_pocketsphinx_goforward.wav"))


def test_g711_matches_the_reference_codec_for_every_sample():
    audioop = pytest.importorskip("audioop")  # in the standard library up to Python 3.12
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    raw = pcm.astype("<i2").tobytes()
    for kind, encoder, to_codes, to_linear in (
        ("audio/pcmu", _mu_law_encode, audioop.lin2ulaw, audioop.ulaw2lin),
        ("audio/pcma", _a_law_encode, audioop.lin2alaw, audioop.alaw2lin),
    ):
        codes = to_codes(raw, 2)
        assert encoder(pcm).tobytes() == codes
        expected = np.frombuffer(to_linear(codes, 2), "<i2").astype(np.float32) / 32768
        assert np.array_equal(_G711[kind][np.frombuffer(codes, np.uint8)], expected)


@pytest.mark.parametrize("fmt", [StreamFormat("audio/pcm", 24000), StreamFormat("audio/pcm", 16000), StreamFormat("audio/pcmu", 8000)])
def test_a_stream_cut_anywhere_decodes_as_one_piece(clip, fmt):
    data = encode(clip, fmt)
    for quality in ("MQ", "QQ"):
        one = StreamDecoder(fmt, quality)
        whole = np.concatenate([one.decode(data), one.flush()])
        decoder, pieces, i, held_back = StreamDecoder(fmt, quality), [], 0, 0
        for size in [1, 3, 7, 640, 4801, 333] * 2000:  # odd sizes cut PCM samples in half
            pieces.append(decoder.decode(data[i : i + size]))
            i += size
            held_back = max(held_back, min(i, len(data)) * SAMPLE_RATE // fmt.bytes_per_second - sum(map(len, pieces)))
            if i >= len(data):
                break
        streamed = np.concatenate([*pieces, decoder.flush()])
        assert abs(len(streamed) - len(clip)) <= 2 and len(whole) == len(streamed)
        assert np.abs(whole - streamed).max() < 1e-3
        if quality == "QQ":
            assert held_back <= 8, "the turn detector's stream is not delayed"


def test_unsupported_formats_are_refused():
    for kind, rate in (("audio/pcm", 44100), ("audio/pcmu", 16000), ("audio/opus", 48000)):
        with pytest.raises(ValueError):
            StreamFormat(kind, rate)


def test_the_streaming_vad_scores_the_same_however_the_audio_is_cut(clip):
    def scores(step: int) -> np.ndarray:
        vad = StreamingVAD()
        return np.concatenate([vad.push(clip[i : i + step]) for i in range(0, len(clip), step)])

    a, b = scores(320), scores(16000)
    assert len(a) == len(b) == len(clip) // WINDOW
    assert np.allclose(a, b, atol=1e-5)


def test_speech_start_is_found_within_100_ms_of_the_onset_and_the_stop_after_the_silence(clip):
    lead, tail = SAMPLE_RATE, 2 * SAMPLE_RATE
    audio = np.concatenate([np.zeros(lead, np.float32), clip, np.zeros(tail, np.float32)])
    regions = speech_regions(speech_probabilities(audio), 0.5, 10, 3)  # the file path's view of the same audio
    onset, offset = regions[0][0] * WINDOW, regions[-1][1] * WINDOW
    detector, seen = TurnDetector(SessionSettings(model="m").turn_detection, RealtimeConfig().early_final_pause_ms), []
    for i in range(0, len(audio), 320):  # 20 ms appends, as telephony sends them
        seen += [(t.kind, t.sample, i + 320) for t in detector.push(audio[i : i + 320])]
    kinds = [k for k, _, _ in seen if k in ("started", "stopped")]
    assert kinds[0] == "started" and kinds[-1] == "stopped" and kinds.count("started") == kinds.count("stopped")
    for i, (kind, sample, _) in enumerate(seen):  # the final decode may start 192 ms into the silence that ends it
        if kind == "stopped":
            assert seen[i - 1][:2] == ("pausing", sample - (16 - 6) * WINDOW)
    _, start, received = seen[0]
    assert abs(start - onset) <= 2 * WINDOW
    assert received - onset <= 0.1 * SAMPLE_RATE, "speech_started is known within 100 ms of the onset"
    _, stop, _ = seen[-1]
    assert offset + 0.5 * SAMPLE_RATE - 2 * WINDOW <= stop <= offset + 0.5 * SAMPLE_RATE + 8 * WINDOW


def test_the_early_final_decode_starts_at_the_pause_length_it_is_given(clip):
    audio = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), clip, np.zeros(2 * SAMPLE_RATE, np.float32)])
    started = {}
    for pause_ms, windows in ((192, 6), (320, 10)):
        detector, seen = TurnDetector(SessionSettings(model="m").turn_detection, pause_ms), []
        for i in range(0, len(audio), 1600):
            seen += [(t.kind, t.sample) for t in detector.push(audio[i : i + 1600])]
        stops = [i for i, (kind, _) in enumerate(seen) if kind == "stopped"]
        assert stops and all(seen[i - 1] == ("pausing", seen[i][1] - (16 - windows) * WINDOW) for i in stops)
        started[pause_ms] = sum(kind == "pausing" for kind, _ in seen)
    assert started[320] <= started[192]  # a later start is dropped less often when speech resumes


def test_partial_text_is_append_only_and_spells_the_final():
    p = PartialText()
    deltas = [p.update("The quick"), p.update("The quick brown fax"), p.update("The quick brown fox jumps."), p.update("The quick brown fox jumps over")]
    assert deltas == ["", "The", " quick brown", " fox"]  # never a decode's last word
    last, final = p.final("The quick brown fox jumps over the lazy dog.")
    assert "".join(deltas) + last == final == "The quick brown fox jumps over the lazy dog."


def test_partial_text_keeps_what_was_sent_when_the_final_disagrees():
    p = PartialText()
    sent = p.update("And so my fellow") + p.update("And so my fellow Americans")
    assert sent == "And so my"
    last, final = p.final("And so am I fellow Americans, ask not.")
    assert sent + last == final == "And so my fellow Americans, ask not."


def test_events_parse_or_say_what_is_wrong():
    assert parse_event('{"type": "input_audio_buffer.commit", "event_id": "e1"}').event_id == "e1"
    cases = {
        "[1": "invalid_json",
        "[1, 2]": "invalid_event",
        '{"type": "response.create"}': "invalid_value",
        '{"type": "input_audio_buffer.append"}': "invalid_value",
        '{"type": "session.update", "session": {"type": "realtime"}}': "invalid_value",
        '{"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}}': "invalid_value",
    }
    for text, code in cases.items():
        with pytest.raises(EventError) as e:
            parse_event(text)
        assert e.value.code == code, text


def test_an_update_changes_only_the_fields_it_names():
    s = SessionSettings(model="m", language="en")
    ga = parse_event(json.dumps(session_update(StreamFormat("audio/pcmu", 8000))))
    s2 = apply_changes(s, ga.session.changes())
    assert (s2.format.type, s2.language, s2.turn_detection) == ("audio/pcmu", "en", s.turn_detection)
    off = parse_event('{"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"turn_detection": null}}}}')
    assert apply_changes(s2, off.session.changes()).turn_detection is None
    beta = parse_event('{"type": "transcription_session.update", "session": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 800}}}')
    s3 = apply_changes(s, beta.session.changes())
    assert (s3.turn_detection.silence_duration_ms, s3.turn_detection.threshold, s3.format) == (800, 0.5, s.format)


@dataclass
class WordsBackend:
    """Two words a second of audio, so partial decodes grow and agree; records how many calls it got."""

    calls: int = 0

    async def transcribe(self, audio, options) -> Transcript:
        self.calls += 1
        words = " ".join(f"w{i}" for i in range(int(len(audio) / SAMPLE_RATE * 2)))
        return Transcript(words, "en", len(audio) / SAMPLE_RATE, [])

    async def check_health(self) -> None:
        return None


def _app(backend=None, **realtime) -> TestClient:
    config = AppConfig.model_validate({"models": [{"name": "words", "backend": "whisper"}], "realtime": realtime})
    return TestClient(create_app(config, {"words": backend or WordsBackend()}))


def _append(ws, audio: np.ndarray, fmt=StreamFormat(), step_s: float = 0.1, pace_s: float = 0.0) -> None:
    import time

    step = int(step_s * SAMPLE_RATE)
    for i in range(0, len(audio), step):
        time.sleep(pace_s)  # lets the server's loop run its partial decodes between appends, as at 1x
        ws.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(encode(audio[i : i + step], fmt)).decode()}))


def _until(ws, kind: str) -> list[dict]:
    events = []
    while not events or events[-1]["type"] != kind:
        events.append(ws.receive_json())
    return events


def test_a_session_streams_partials_then_the_final(clip):
    speech = np.concatenate([clip] * 3)  # 8 s of speech
    with _app(partial_interval_s=0.5).websocket_connect("/v1/realtime?intent=transcription") as ws:
        assert ws.receive_json()["type"] == "session.created"
        _append(ws, np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)]), pace_s=0.01)
        events = _until(ws, ITEM + "completed")
    deltas = [e["delta"] for e in events if e["type"] == ITEM + "delta"]
    stopped = next(i for i, e in enumerate(events) if e["type"] == "input_audio_buffer.speech_stopped")
    completed = events[-1]
    assert any(e["type"] == ITEM + "delta" for e in events[:stopped]), "partial text while the speaker talks"
    assert "".join(deltas) == completed["transcript"] and len(completed["transcript"].split()) >= 4
    assert completed["usage"]["type"] == "duration" and completed["usage"]["seconds"] > 2


@dataclass
class BusyBackend(WordsBackend):
    """Refuses every preview as a model busy with full requests does (``Overloaded``); decodes the rest."""

    previews: int = 0

    async def transcribe(self, audio, options) -> Transcript:
        if options.best_effort:
            self.previews += 1
            raise Overloaded("The model is busy with full requests; this preview is skipped.")
        return await super().transcribe(audio, options)


def test_a_skipped_preview_costs_the_session_nothing(clip):
    backend = BusyBackend()
    with _app(backend, partial_interval_s=0.5).websocket_connect("/v1/realtime?intent=transcription") as ws:
        assert ws.receive_json()["type"] == "session.created"
        silence = np.zeros(SAMPLE_RATE, np.float32)
        _append(ws, np.concatenate([silence, clip, clip, silence]), pace_s=0.01)
        events = _until(ws, ITEM + "completed")
    assert backend.previews >= 1
    assert not [e for e in events if e["type"] in ("error", ITEM + "failed")]
    delta, completed = [e for e in events if e["type"].startswith(ITEM)]  # no partial text: the final's, whole
    assert delta["delta"] == completed["transcript"] and len(completed["transcript"].split()) >= 2


@dataclass
class LengthsBackend(WordsBackend):
    """Records the length of the audio of each final decode."""

    lengths: list = field(default_factory=list)

    async def transcribe(self, audio, options) -> Transcript:
        self.lengths.append(len(audio))
        return await super().transcribe(audio, options)


def test_the_final_decode_starts_after_the_configured_pause(clip):
    last = {}
    for pause_ms in (192, 448):
        backend = LengthsBackend()
        with _app(backend, partial_interval_s=0, early_final_pause_ms=pause_ms).websocket_connect("/v1/realtime?intent=transcription") as ws:
            assert ws.receive_json()["type"] == "session.created"
            _append(ws, np.concatenate([np.zeros(SAMPLE_RATE, np.float32), clip, np.zeros(SAMPLE_RATE, np.float32)]))
            _until(ws, ITEM + "completed")
        last[pause_ms] = backend.lengths[-1]  # the decode begun at the pause that ended the utterance
    # the model's stream may trail the detector's by the resampler's hold-back (up to 38 ms at 24 kHz)
    assert abs(last[448] - last[192] - (448 - 192) * SAMPLE_RATE // 1000) <= 0.04 * SAMPLE_RATE


def test_the_buffer_limit_and_the_idle_timeout_answer_with_errors(clip):
    with _app(max_buffer_s=2, idle_timeout_s=0.5).websocket_connect("/v1/realtime?intent=transcription") as ws:
        ws.receive_json()
        ws.send_text(json.dumps(session_update(StreamFormat(), turn_detection=None)))
        ws.receive_json()
        _append(ws, np.zeros(3 * SAMPLE_RATE, np.float32), step_s=0.5)
        errors = [ws.receive_json() for _ in range(2)]
        assert [e["error"]["code"] for e in errors] == ["input_audio_buffer_full"] * 2  # the 2.5 s and 3 s appends
        ws.send_text(json.dumps({"type": "input_audio_buffer.commit"}))
        assert [e["type"] for e in _until(ws, ITEM + "completed")] == ["input_audio_buffer.committed", ITEM + "completed"]
        idle = ws.receive_json()
        assert idle["error"]["code"] == "session_idle_timeout"
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()


@dataclass
class BlockingBackend:
    """Holds every call until it is cancelled, and counts the cancellations."""

    calls: int = 0
    cancelled: int = 0

    async def transcribe(self, audio, options) -> Transcript:
        import asyncio

        self.calls += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def check_health(self) -> None:
        return None


def test_a_client_that_leaves_cancels_its_model_calls(clip):
    import time

    backend = BlockingBackend()
    config = AppConfig.model_validate({"models": [{"name": "slow", "backend": "whisper"}]})
    with TestClient(create_app(config, {"slow": backend})) as client:
        with client.websocket_connect("/v1/realtime?intent=transcription") as ws:
            ws.receive_json()
            ws.send_text(json.dumps(session_update(StreamFormat(), turn_detection=None)))
            ws.receive_json()
            _append(ws, clip)
            ws.send_text(json.dumps({"type": "input_audio_buffer.commit"}))
            assert ws.receive_json()["type"] == "input_audio_buffer.committed"
            deadline = time.monotonic() + 10
            while backend.calls == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            ws.close()  # the client leaves mid-transcription: the session ends and cancels its call
            deadline = time.monotonic() + 10
            while backend.cancelled == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
    assert (backend.calls, backend.cancelled) == (1, 1)
