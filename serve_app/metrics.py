"""Prometheus metrics of the service, through ``ray.serve.metrics``.

Ray exports every metric with the prefix ``ray_`` (counters also get ``_total``) on each node's metrics port, and Serve
adds the tags ``application``, ``deployment`` and ``replica``. A metric registers with the Ray worker that creates it,
so each deployment creates its own set in its constructor. cluster/grafana-dashboard.json charts these names.
Ray exports a histogram's ``_sum`` from its buckets' midpoints: chart quantiles of the buckets, not ``_sum/_count``.
"""

from __future__ import annotations

import logging
import threading
import time

SECONDS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600]
REALTIME_BUCKETS = [0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10]
RTF_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5]


def log_request(log: logging.Logger, request_id: str | None, message: str = "", **fields) -> None:
    """One line per request: ``request_id=... key=value ...`` in text logs; with Serve's ``logging_config:
    {encoding: JSON}`` the fields are JSON fields too (Serve adds ``request_id`` itself, the same in every replica)."""
    text = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    log.info("request_id=%s %s%s", request_id, text, f" {message}" if message else "", extra=fields)


class IngressMetrics:
    """What the HTTP ingress sees: every request with its status, and uploads that could not be decoded."""

    def __init__(self):
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter(
            "stt_requests",
            description="HTTP requests by route, model and status code.",
            tag_keys=("route", "model", "status"),
        )
        self.latency = Histogram(
            "stt_request_seconds",
            description="Time to the response headers, by route and model.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("route", "model"),
        )
        self.decode_failures = Counter(
            "stt_decode_failures",
            description="Uploads rejected while decoding the audio, by error code.",
            tag_keys=("code",),
        )

    def request_done(self, route: str, model: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"route": route, "model": model, "status": str(status)})
        self.latency.observe(seconds, tags={"route": route, "model": model})

    def decode_failed(self, code: str | None) -> None:
        self.decode_failures.inc(tags={"code": code or "unknown"})


class HeldGauge:
    """A gauge that stays exported while its value holds. Ray 2.60 drops a gauge's series about 30 s after its last
    ``set``, so a count that does not change (sessions open, requests in flight) would vanish from the dashboard; a
    daemon thread sets the value again every ``refresh_s``. Counts change by ``add``."""

    def __init__(self, gauge, refresh_s: float = 5.0):
        self.gauge, self.value, self._lock = gauge, 0.0, threading.Lock()
        self.add(0)
        threading.Thread(target=self._hold, args=(refresh_s,), daemon=True, name="held-gauge").start()

    def add(self, delta: float) -> None:
        with self._lock:
            self.value += delta
            self.gauge.set(self.value)

    def _hold(self, refresh_s: float) -> None:
        while True:
            time.sleep(refresh_s)
            self.add(0)


class ModelMetrics:
    """What one model replica does: audio in, processing time, real-time factor, requests in progress."""

    def __init__(self, model: str):
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.audio_seconds = Counter(
            "stt_audio_seconds", description="Seconds of audio processed.", tag_keys=("model",)
        )
        self.processing_seconds = Histogram(
            "stt_processing_seconds",
            description="Backend time per request.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("model",),
        )
        self.real_time_factor = Histogram(
            "stt_real_time_factor",
            description="Processing seconds per second of audio (below 1 is faster than real time).",
            boundaries=RTF_BUCKETS,
            tag_keys=("model",),
        )
        ongoing = Gauge("stt_ongoing_requests", description="Requests in progress in this replica.", tag_keys=("model",))
        self.failures = Counter(
            "stt_backend_failures",
            description="Requests that failed inside the backend with an unexpected error.",
            tag_keys=("model",),
        )
        self.cancelled = Counter(
            "stt_backend_cancelled",
            description="Requests cancelled before their end (the caller left or timed out); their work was stopped.",
            tag_keys=("model",),
        )
        for metric in (self.audio_seconds, self.processing_seconds, self.real_time_factor, ongoing, self.failures, self.cancelled):
            metric.set_default_tags({"model": model})  # a dict each: Serve adds its own tags to it in place
        self.ongoing = HeldGauge(ongoing)

    def started(self) -> None:
        self.ongoing.add(1)

    def finished(self) -> None:
        self.ongoing.add(-1)

    def processed(self, audio_s: float, processing_s: float) -> None:
        self.processing_seconds.observe(processing_s)
        if audio_s > 0:
            self.audio_seconds.inc(audio_s)
            self.real_time_factor.observe(processing_s / audio_s)

    def failed(self) -> None:
        self.failures.inc()

    def was_cancelled(self) -> None:
        self.cancelled.inc()


class RealtimeMetrics:
    """The realtime route in one ingress replica: sessions, utterances and how fast their text comes."""

    def __init__(self):
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.sessions = HeldGauge(Gauge("stt_realtime_sessions", description="Open realtime sessions in this ingress replica."))
        self.refused = Counter(
            "stt_realtime_refused", description="Realtime sessions refused at the handshake, by reason.", tag_keys=("reason",)
        )
        self.utterances = Counter("stt_realtime_utterances", description="Utterances the turn detector found.")
        self.final_latency = Histogram(
            "stt_realtime_final_seconds",
            description="End of an utterance (speech stopped or commit) to its completed transcript.",
            boundaries=REALTIME_BUCKETS,
        )
        self.partial_lag = Histogram(
            "stt_realtime_partial_lag_seconds",
            description="Audio received to the partial text that covers it.",
            boundaries=REALTIME_BUCKETS,
        )
        self.partial_decode = Histogram(
            "stt_realtime_partial_decode_seconds",
            description="Audio received to the end of the partial decode over it, whether or not it changed the text.",
            boundaries=REALTIME_BUCKETS,
        )
        self.partials_skipped = Counter(
            "stt_realtime_partials_skipped", description="Partial decodes the model skipped while busy with full requests."
        )

    def opened(self) -> None:
        self.sessions.add(1)

    def closed(self) -> None:
        self.sessions.add(-1)

    def refuse(self, reason: str) -> None:
        self.refused.inc(tags={"reason": reason})

    def speech_started(self) -> None:
        self.utterances.inc()

    def completed(self, seconds: float) -> None:
        self.final_latency.observe(seconds)

    def partial_skipped(self) -> None:
        self.partials_skipped.inc()

    def partial_decoded(self, seconds: float, text_changed: bool) -> None:
        self.partial_decode.observe(seconds)
        if text_changed:
            self.partial_lag.observe(seconds)
