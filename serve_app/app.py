"""The app builder: ``import_path: serve_app.app:build_app``. Validates the YAML ``args`` and wires deployments."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.api.ingress import Ingress
from serve_app.config import AppConfig
from serve_app.serving.model_server import ModelServer


def build_app(args: dict[str, Any] | AppConfig | None = None) -> Application:
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    models = {
        m.name: ModelServer.options(name=f"model-{m.name}", **m.deployment.serve_options(batch=m.engine_batch())).bind(m)
        for m in config.models
    }
    return Ingress.options(name="ingress", **config.ingress.deployment.serve_options()).bind(config, models)
