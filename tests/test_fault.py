"""Faults: a model replica killed under load is replaced and the service answers again within 60 s, while every
request in flight ends within a bound with a 200 or a clear 503; a backend that keeps failing reports itself
unhealthy through check_health, and Serve replaces it. Each test kills only replicas of its own app.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import pytest
from ray import serve
from replicas import all_running, kill_replica, on_handle_loop, replica_actor_names, wait_until
from whisper_normalizer.english import EnglishTextNormalizer

from serve_app.core.types import TranscribeOptions
from serve_app.serving.model_server import FAILURES_BEFORE_UNHEALTHY

MODEL_DEPLOYMENT = "model-whisper-tiny.en"
RECOVERY_BOUND_S = 60
CLIENT_TIMEOUT_S = 90
CLIPS = ["en_pocketsphinx_goforward.wav", "en_speechrecognition_one_two_three.wav"]


def _model(**deployment) -> dict:
    return {
        "name": "whisper-tiny.en",
        "backend": "whisper",
        "whisper": {"beam_size": 5, "cpu_threads": 1, "num_workers": 2},
        "deployment": {"ray_actor_options": {"num_cpus": 0.5}, "health_check_period_s": 1, **deployment},
    }


class Clients:
    """Threads that send transcriptions and streamed chat requests back to back until stopped, recording each."""

    def __init__(self, url: str, clips: list[tuple[str, bytes, str]], n: int):
        self.url, self.clips = url, clips
        self.results: list[dict] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(CLIENT_TIMEOUT_S + 10)
        assert not any(t.is_alive() for t in self.threads), "a client request hung"

    def ok_since(self, t: float) -> list[dict]:
        return [r for r in self.results if r["status"] == 200 and r["started"] > t]

    def _run(self, offset: int) -> None:
        i = offset
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
            while not self.stop.is_set():
                name, audio, reference = self.clips[i % len(self.clips)]
                started = time.monotonic()
                try:
                    if i % 2:
                        status, text, body = self._stream_chat(client, audio)
                    else:
                        r = client.post(f"{self.url}/v1/audio/transcriptions", files={"file": (name, audio, "audio/wav")})
                        status, body = r.status_code, r.json()
                        text = body.get("text")
                except BaseException as e:  # a timeout here is a request that hung
                    self.errors.append(e)
                    return
                self.results.append({"status": status, "text": text, "body": body, "reference": reference,
                                     "started": started, "finished": time.monotonic()})
                i += 1
                if status != 200:
                    time.sleep(0.5)

    def _stream_chat(self, client: httpx.Client, audio: bytes) -> tuple[int, str | None, object]:
        content = [{"type": "input_audio", "input_audio": {"data": base64.b64encode(audio).decode(), "format": "wav"}}]
        body = {"model": "whisper-tiny.en", "stream": True, "messages": [{"role": "user", "content": content}]}
        with client.stream("POST", f"{self.url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, None, r.json()
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", events
        chunks = [json.loads(e) for e in events[:-1]]
        errors = [c for c in chunks if "error" in c]
        if errors:  # an error after the stream started: clear, but must say what it is
            return 200, None, errors[0]
        return 200, "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks), chunks


@pytest.fixture(scope="module")
def clips(audio_dir, manifest) -> list[tuple[str, bytes, str]]:
    references = {row["file"]: row["transcript"] for row in manifest}
    return [(name, (audio_dir / name).read_bytes(), references[name]) for name in CLIPS]


@pytest.fixture(scope="module")
def fault_url(deploy_app):
    yield deploy_app("fault", {"models": [_model(max_ongoing_requests=2, max_queued_requests=8)]})
    serve.delete("fault")


@pytest.fixture(scope="module")
def sick_url(deploy_app):
    yield deploy_app("sick", {"models": [_model()]})
    serve.delete("sick")


@pytest.mark.slow
def test_killed_replica_is_replaced_and_no_request_hangs(fault_url, clips):
    (victim,) = replica_actor_names("fault")[MODEL_DEPLOYMENT]

    with Clients(fault_url, clips, n=4) as clients:
        assert wait_until(lambda: len(clients.ok_since(0)) >= 2, 60), clients.results
        killed_at = time.monotonic()
        kill_replica(victim)
        health_down = wait_until(lambda: httpx.get(f"{fault_url}/health", timeout=10).status_code == 503, 10, interval_s=0.2)
        recovered = wait_until(lambda: clients.ok_since(killed_at + 1), RECOVERY_BOUND_S, interval_s=0.2)
        recovery_s = min((r["finished"] for r in clients.ok_since(killed_at + 1)), default=float("inf")) - killed_at
        time.sleep(3)  # a little traffic on the new replica

    assert not clients.errors, clients.errors
    assert recovered and recovery_s < RECOVERY_BOUND_S, f"no answer within {RECOVERY_BOUND_S} s of the kill"
    normalize = EnglishTextNormalizer()
    for r in clients.results:
        assert r["status"] in (200, 503), r
        if r["status"] == 503:
            assert r["body"]["error"]["code"] in ("backend_unavailable", "overloaded"), r
        elif r["text"] is None:
            assert r["body"]["error"]["type"] == "server_error", r
        else:
            assert normalize(r["text"]) == normalize(r["reference"]), r
        assert r["finished"] - r["started"] < CLIENT_TIMEOUT_S
    replicas = replica_actor_names("fault")[MODEL_DEPLOYMENT]
    assert victim not in replicas and len(replicas) == 1
    assert wait_until(lambda: all_running("fault"), 30)
    assert health_down, "/health did not report the dead model replica"
    health = httpx.get(f"{fault_url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["models"] == {"whisper-tiny.en": "ok"}, health.text
    statuses = [r["status"] for r in clients.results]
    print(f"\nrecovered {recovery_s:.1f} s after the kill; {statuses.count(200)} x 200, {statuses.count(503)} x 503")


@pytest.mark.slow
def test_failing_backend_is_reported_unhealthy_and_replaced(sick_url, clips):
    """Requests that fail inside the backend (here: a path instead of audio, which faster-whisper cannot open) make
    check_health raise after FAILURES_BEFORE_UNHEALTHY in a row; Serve then replaces the replica."""
    (sick,) = replica_actor_names("sick")[MODEL_DEPLOYMENT]
    handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name="sick")

    async def transcribe_a_path():
        return await handle.transcribe.remote("/no/such/audio.wav", TranscribeOptions())

    for _ in range(FAILURES_BEFORE_UNHEALTHY):
        with pytest.raises(FileNotFoundError, match="No such file"):  # the backend's own error, raised as it is over gRPC
            on_handle_loop(transcribe_a_path(), 60)

    assert wait_until(lambda: sick not in replica_actor_names("sick").get(MODEL_DEPLOYMENT, ()), 60)
    assert wait_until(lambda: all_running("sick"), RECOVERY_BOUND_S)
    name, audio, reference = clips[0]
    r = httpx.post(f"{sick_url}/v1/audio/transcriptions", files={"file": (name, audio, "audio/wav")}, timeout=60)
    assert r.status_code == 200, r.text
    normalize = EnglishTextNormalizer()
    assert normalize(r.json()["text"]) == normalize(reference)
