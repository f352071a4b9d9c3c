"""The configured models as the routes see them: every name and alias, and each model's backend kind, transcriber
and chat."""

from __future__ import annotations

import asyncio

from serve_app.api.protocol import ModelCard, ModelList
from serve_app.api.request_context import current_request
from serve_app.backends.base import Backend
from serve_app.config import AppConfig
from serve_app.core.chat import Chat
from serve_app.core.transcriber import Transcriber
from serve_app.errors import ModelNotFound, quoted

HEALTH_TIMEOUT_S = 2.0


class ModelRegistry:
    def __init__(self, config: AppConfig, backends: dict[str, Backend]):
        self.models_by_name = config.model_names()
        self.default_model = config.default_model or config.models[0].name
        self.backend_kinds = {m.name: m.backend for m in config.models}
        self.backends = backends
        self.transcribers = {name: Transcriber(backend, config.chunking) for name, backend in backends.items()}
        self.chats = {name: Chat(backend, config.chat, config.chunking) for name, backend in backends.items()}

    async def health(self, timeout_s: float = HEALTH_TIMEOUT_S) -> dict[str, str]:
        """Each model's state: "ok" when its replica answers its health check within ``timeout_s``."""
        states = await asyncio.gather(*(_state(b, timeout_s) for b in self.backends.values()))
        return dict(zip(self.backends, states))

    def resolve(self, model: str | None) -> str:
        """The model's own name for a name or alias (the default model when none is given); noted for the log line."""
        if not model:
            name = self.default_model
        elif model in self.models_by_name:
            name = self.models_by_name[model]
        else:
            raise ModelNotFound(f"The model {quoted(model)} does not exist. Available: {', '.join(self.models_by_name)}.", param="model")
        current_request().model = name
        return name

    def card(self, model_id: str) -> ModelCard:
        name = self.resolve(model_id)
        return ModelCard(id=model_id, backend=self.backend_kinds[name], root=name)

    def cards(self) -> ModelList:
        return ModelList(data=[ModelCard(id=alias, backend=self.backend_kinds[name], root=name) for alias, name in self.models_by_name.items()])


async def _state(backend: Backend, timeout_s: float) -> str:
    try:
        await asyncio.wait_for(backend.check_health(), timeout_s)
    except Exception:  # noqa: BLE001 - whatever stops the check, the model cannot serve now
        return "unavailable"
    return "ok"
