"""How audio crosses the Serve handle between the ingress and a model replica: as 16-bit PCM, back to float32 there."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.core.types import ChatOptions, ChatTurn, TranscribeOptions, Transcript
from serve_app.serving.remote_backend import RemoteBackend
from serve_app.serving.wire import from_pcm16, to_pcm16

pytestmark = pytest.mark.fast


def test_16_bit_sources_cross_exactly_and_louder_than_full_scale_is_clipped():
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    audio = (pcm / 32768).astype(np.float32)  # what decoding a 16-bit file gives
    wire = to_pcm16(audio)
    assert wire.dtype == np.int16 and wire.nbytes == audio.nbytes // 2
    np.testing.assert_array_equal(from_pcm16(wire), audio)
    loud = np.array([-1.5, -1.0, 0.49999, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(to_pcm16(loud), [-32768, -32768, 16384, 32767, 32767])


def test_other_sources_lose_no_more_than_half_a_step():
    audio = np.random.default_rng(0).uniform(-0.999, 0.999, 16000).astype(np.float32)
    back = from_pcm16(to_pcm16(audio))
    assert back.dtype == np.float32
    assert np.abs(back - audio).max() <= 0.5 / 32768 + 1e-9


def test_float32_and_anything_else_pass_through_the_replica_side():
    audio = np.zeros(10, np.float32)
    assert from_pcm16(audio) is audio
    assert from_pcm16("/a/path") == "/a/path"


class _Method:
    def __init__(self, answer):
        self.answer = answer
        self.args = None

    def remote(self, *args):
        self.args = args
        return self.answer()


class _FakeHandle:
    """Records what the ingress sends, as a DeploymentHandle would carry it to the replica."""

    def __init__(self):
        async def transcript():
            return Transcript(text="hi", language="en", duration=1.0)

        async def deltas():
            yield "hi"

        self.transcribe = _Method(transcript)
        self.chat_stream = _Method(deltas)

    def options(self, **_):
        return self


def test_the_ingress_sends_pcm16_over_the_handle():
    handle = _FakeHandle()
    backend = RemoteBackend(handle, timeout_s=5)
    audio = np.full(16000, 0.25, np.float32)
    assert asyncio.run(backend.transcribe(audio, TranscribeOptions())).text == "hi"
    sent, _ = handle.transcribe.args
    assert sent.dtype == np.int16 and (sent == 8192).all()

    async def chat():
        turns = [ChatTurn(role="user", parts=("Transcribe:", audio))]
        return [d async for d in backend.chat_stream(turns, ChatOptions())]

    assert asyncio.run(chat()) == ["hi"]
    (turn,), _ = handle.chat_stream.args
    assert turn.parts[0] == "Transcribe:" and turn.parts[1].dtype == np.int16


def test_retry_after_is_the_measured_drain_time_of_the_queue():
    """Calls in flight over the recent completion rate: 40 calls waiting on a model that finishes 4 a second -> 10 s."""
    from serve_app.serving.remote_backend import QueueDrain

    queue = QueueDrain()
    assert queue.seconds() == 1  # nothing measured yet
    queue.completions.extend(100.0 + i * 0.25 for i in range(9))  # 8 completions over 2 s
    queue.in_flight = 40
    assert queue.seconds() == 10
    queue.in_flight = 10_000
    assert queue.seconds() == 120  # capped


def test_an_overloaded_model_is_answered_with_the_measured_retry_after():
    from ray.serve.exceptions import BackPressureError

    from serve_app.errors import Overloaded
    from serve_app.serving.remote_backend import typed_errors

    try:
        with typed_errors(object(), timeout_s=5, retry_after_s=lambda: 17):
            raise BackPressureError(num_queued_requests=50, max_queued_requests=50)
    except Overloaded as e:
        assert e.retry_after_s == 17 and e.status_code == 503
    else:
        raise AssertionError("BackPressureError was not turned into Overloaded")
