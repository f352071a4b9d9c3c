"""The HTTP ingress deployment: one replica holds a client for each model deployment and serves the API over them."""

from __future__ import annotations

import logging
import time

import numpy as np
from fastapi import FastAPI
from ray import serve

from serve_app.api.auth import load_api_keys
from serve_app.api.factory import create_app
from serve_app.audio.vad import has_speech
from serve_app.config import AppConfig
from serve_app.core.types import SAMPLE_RATE
from serve_app.metrics import IngressMetrics, RealtimeMetrics
from serve_app.serving.remote_backend import RemoteBackend

log = logging.getLogger("ray.serve")


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(self, config: AppConfig, models: dict):
        self.config = config
        timeout_s = config.limits.request_timeout_s
        self.backends = {name: RemoteBackend(handle, timeout_s) for name, handle in models.items()}
        self.api_keys = load_api_keys(config.auth)
        if config.chunking.enabled or config.realtime.enabled:  # load the VAD now: a missing dependency fails the deploy, not the first request
            started = time.perf_counter()
            has_speech(np.zeros(SAMPLE_RATE, np.float32), config.chunking)
            log.info("VAD loaded and warmed up in %.2f s", time.perf_counter() - started)
        keys = f"required ({len(self.api_keys)} configured)" if self.api_keys else "not configured: the API is open"
        log.info("API keys %s", keys)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Called by Serve once the constructor has run: the app over this replica's model clients."""
        return create_app(self.config, self.backends, self.api_keys, IngressMetrics(), RealtimeMetrics())
