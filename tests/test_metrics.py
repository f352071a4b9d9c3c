"""Observability: the Prometheus metrics after traffic, the Grafana dashboard's metric names, and the request id
carried from the client through the ingress to the model replica (response header and both replicas' logs).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import WHISPER_TEST_MODEL
from helpers import scrape_metrics
from ray import serve

from serve_app.audio.decode import load_file
from serve_app.core.types import SAMPLE_RATE
from serve_app.realtime.client import ITEM, stream

APP = "metrics"
MODEL = WHISPER_TEST_MODEL["name"]
CLIP = "en_pocketsphinx_goforward.wav"
DASHBOARD = Path(__file__).resolve().parents[1] / "cluster" / "grafana-dashboard.json"
EXPORT_DELAY_S = 40  # Ray exports metrics every few seconds


@pytest.fixture(scope="module")
def app_url(deploy_app):
    """An app of its own, so the counts below are exactly this module's traffic."""
    yield deploy_app(APP, {"models": [WHISPER_TEST_MODEL]})
    serve.delete(APP)


def _value(samples, name: str, **labels) -> float | None:
    """The sum over samples of ``name`` from this module's app that carry ``labels``; None when there is none."""
    found = [v for n, l, v in samples if n == name and l.get("application") == APP and labels.items() <= l.items()]
    return sum(found) if found else None


@pytest.fixture(scope="module")
def traffic(app_url, audio_dir, manifest) -> dict:
    """Two good transcriptions, one undecodable upload, one unknown model; returns what the metrics must show."""
    audio = (audio_dir / CLIP).read_bytes()
    url = f"{app_url}/v1/audio/transcriptions"
    for _ in range(2):
        r = httpx.post(url, files={"file": (CLIP, audio, "audio/wav")}, timeout=120)
        assert r.status_code == 200, r.text
    bad = httpx.post(url, files={"file": ("noise.wav", b"RIFF" + bytes(range(200)), "audio/wav")}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_audio"
    unknown = httpx.post(url, files={"file": (CLIP, audio, "audio/wav")}, data={"model": "no-such-model"}, timeout=60)
    assert unknown.status_code == 404
    duration = next(row["duration_s"] for row in manifest if row["file"] == CLIP)
    return {"audio_s": 2 * duration, "finished_at": time.monotonic()}


@pytest.fixture(scope="module")
def realtime_traffic(deploy_app, audio_dir) -> None:
    """One realtime session with speech and partial text (at 1x, partials every 0.5 s of speech), on an app of its
    own (its partial decodes would change the counts above)."""
    args = {"models": [WHISPER_TEST_MODEL], "realtime": {"partial_interval_s": 0.5}}
    url = deploy_app(APP + "rt", args).replace("http://", "ws://")
    speech = load_file(audio_dir / "en_jfk_inaugural_16k.wav")
    audio = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)])
    run = asyncio.run(stream(url + "/v1/realtime?intent=transcription", audio, speed=1.0))
    stopped, partials = set(), 0
    for _, e in run.events:  # a partial is a delta that comes before its utterance's speech_stopped
        stopped |= {e["item_id"]} if e["type"] == "input_audio_buffer.speech_stopped" else set()
        partials += e["type"] == ITEM + "delta" and e["item_id"] not in stopped
    assert partials >= 1 and run.finals()
    yield partials
    serve.delete(APP + "rt")


def test_metrics_after_traffic(traffic, metrics_url):
    route = "/v1/audio/transcriptions"
    expected = {
        ("ray_stt_requests_total", (("route", route), ("model", MODEL), ("status", "200"))): 2,
        ("ray_stt_requests_total", (("route", route), ("model", MODEL), ("status", "400"))): 1,
        ("ray_stt_requests_total", (("route", route), ("model", ""), ("status", "404"))): 1,
        ("ray_stt_request_seconds_count", (("route", route),)): 4,
        ("ray_stt_decode_failures_total", (("code", "invalid_audio"),)): 1,
        ("ray_stt_processing_seconds_count", (("model", MODEL),)): 2,
        ("ray_stt_real_time_factor_count", (("model", MODEL),)): 2,
        ("ray_stt_ongoing_requests", (("model", MODEL),)): 0,
    }
    deadline = time.monotonic() + EXPORT_DELAY_S
    while True:
        samples = scrape_metrics(metrics_url)
        got = {key: _value(samples, key[0], **dict(key[1])) for key in expected}
        audio_s = _value(samples, "ray_stt_audio_seconds_total", model=MODEL)
        if (got == expected and audio_s is not None) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert got == expected
    assert audio_s == pytest.approx(traffic["audio_s"], abs=0.01)
    # Ray exports a histogram's _sum from its buckets' midpoints, so only its range is checked.
    assert 0 < _value(samples, "ray_stt_processing_seconds_sum", model=MODEL) < 2 * 600
    assert 0 < _value(samples, "ray_stt_real_time_factor_sum", model=MODEL) < 2 * 5
    assert _value(samples, "ray_stt_backend_failures_total", model=MODEL) in (None, 0)


def test_dashboard_uses_exported_metric_names(traffic, realtime_traffic, metrics_url):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bray_[a-z_]+\b", expr)}
    assert {n for n in used if n.startswith("ray_stt_")} >= {
        "ray_stt_requests_total", "ray_stt_request_seconds_bucket", "ray_stt_audio_seconds_total",
        "ray_stt_processing_seconds_bucket", "ray_stt_real_time_factor_bucket", "ray_stt_ongoing_requests",
        "ray_stt_decode_failures_total", "ray_stt_backend_failures_total", "ray_stt_realtime_sessions",
        "ray_stt_realtime_utterances_total", "ray_stt_realtime_final_seconds_bucket",
        "ray_stt_realtime_partial_lag_seconds_bucket", "ray_stt_realtime_partial_decode_seconds_bucket",
        "ray_stt_backend_cancelled_total", "ray_stt_realtime_partials_skipped_total",
    }
    deadline = time.monotonic() + EXPORT_DELAY_S
    while True:
        exported = {name for name, _, _ in scrape_metrics(metrics_url)}
        # a counter that has never been incremented is not exported yet: failures, cancellations, refusals and
        # skipped previews need not happen here
        never = {"ray_stt_backend_failures_total", "ray_stt_backend_cancelled_total", "ray_stt_realtime_refused_total",
                 "ray_stt_realtime_partials_skipped_total"}  # fmt: skip
        missing = used - exported - never
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing


def test_every_partial_decode_is_timed_and_each_sent_partial_has_its_lag(realtime_traffic, metrics_url):
    """Partial decodes whose text did not change (all of them, on random weights) are timed too."""

    def count(samples, name):
        return sum(v for n, labels, v in samples if n == name and labels.get("application") == APP + "rt")

    deadline = time.monotonic() + EXPORT_DELAY_S
    while True:
        samples = scrape_metrics(metrics_url)
        lag = count(samples, "ray_stt_realtime_partial_lag_seconds_count")
        decodes = count(samples, "ray_stt_realtime_partial_decode_seconds_count")
        if lag >= realtime_traffic or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert lag == realtime_traffic  # one lag per delta sent while the speaker talked
    assert decodes >= lag


def test_a_gauge_stays_exported_while_its_value_holds(traffic, metrics_url):
    """Ray drops a gauge's series ~30 s after its last set; requests in flight (0 here) must stay on the dashboard."""
    time.sleep(max(0.0, traffic["finished_at"] + 45 - time.monotonic()))
    assert _value(scrape_metrics(metrics_url), "ray_stt_ongoing_requests", model=MODEL) == 0


def test_request_id_reaches_the_model_and_comes_back(app_url, audio_dir):
    import ray

    request_id = f"test-{uuid.uuid4().hex}"
    audio = (audio_dir / CLIP).read_bytes()
    r = httpx.post(
        f"{app_url}/v1/audio/transcriptions",
        files={"file": (CLIP, audio, "audio/wav")},
        headers={"X-Request-ID": request_id},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == request_id
    generated = httpx.get(f"{app_url}/v1/models", timeout=30).headers["x-request-id"]
    assert generated and generated != request_id

    # Serve writes each replica's log under the session's logs/serve directory.
    serve_logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    patterns = {
        "ingress": rf"request_id={request_id} route=/v1/audio/transcriptions model={re.escape(MODEL)} status=200",
        f"model-{MODEL}": rf"request_id={request_id} model={re.escape(MODEL)} task=transcribe audio_s=\d",
    }
    deadline = time.monotonic() + 20
    while True:
        found = {
            deployment: any(re.search(pattern, p.read_text(errors="replace")) for p in serve_logs.glob(f"replica_{APP}_{deployment}_*.log"))
            for deployment, pattern in patterns.items()
        }
        if all(found.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(found.values()), found
