"""The realtime route: ``/v1/realtime?intent=transcription`` upgraded to a WebSocket that speaks OpenAI's Realtime
transcription protocol. This module is the WebSocket's edge (handshake, auth, limits, the read and write loops);
the session itself (``realtime.session``) knows nothing of FastAPI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from serve_app.api.auth import bearer_token, key_matches
from serve_app.api.model_registry import ModelRegistry
from serve_app.backends import check_options
from serve_app.config import AppConfig
from serve_app.errors import APIError, InvalidRequest, ServiceUnavailable, Unauthorized
from serve_app.realtime.protocol import SessionSettings
from serve_app.realtime.session import RealtimeSession

log = logging.getLogger("ray.serve")
router = APIRouter()

KEY_SUBPROTOCOL = "openai-insecure-api-key."
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
TRY_AGAIN_LATER = 1013  # close code: the server is at its session limit
POLICY_VIOLATION = 1008


class RealtimeGate:
    """What every realtime session of one ingress replica shares: the session count, the keys and the metrics."""

    def __init__(self, config: AppConfig, api_keys: frozenset[str], metrics=None):
        self.config = config.realtime
        self.limits = config.limits
        self.api_keys = api_keys
        self.metrics = metrics
        self.open = 0

    def refusal(self, websocket: WebSocket) -> tuple[APIError, int] | None:
        """Why this handshake is refused (the error and the close code), or None."""
        if not self.config.enabled:
            return InvalidRequest("The realtime route is turned off in this deployment.", code="realtime_disabled"), POLICY_VIOLATION
        intent = websocket.query_params.get("intent", "transcription")
        if intent != "transcription":
            return InvalidRequest("This server only opens transcription sessions (intent=transcription).", param="intent"), POLICY_VIOLATION
        if self.api_keys and not key_matches(_presented_key(websocket) or "", self.api_keys):
            return Unauthorized("Incorrect or missing API key: send 'Authorization: Bearer <key>' or the 'openai-insecure-api-key.<key>' subprotocol."), POLICY_VIOLATION
        if self.open >= self.config.max_sessions:
            return ServiceUnavailable(f"This replica holds its limit of {self.config.max_sessions} realtime sessions; try again later.", code="too_many_sessions"), TRY_AGAIN_LATER
        return None  # fmt: skip


def _presented_key(websocket: WebSocket) -> str | None:
    token = bearer_token(websocket.headers.get("authorization"))
    if token:
        return token
    offered = websocket.scope.get("subprotocols") or []
    return next((p[len(KEY_SUBPROTOCOL) :] for p in offered if p.startswith(KEY_SUBPROTOCOL)), None)


def _subprotocol(websocket: WebSocket) -> str | None:
    """The subprotocol to answer with: a browser that offers some fails the connection unless one is chosen."""
    offered = [p for p in websocket.scope.get("subprotocols") or [] if not p.startswith(KEY_SUBPROTOCOL)]
    return "realtime" if "realtime" in offered else next(iter(offered), None)


def _beta(websocket: WebSocket) -> bool:
    return "realtime=v1" in websocket.headers.get("openai-beta", "") or BETA_SUBPROTOCOL in (websocket.scope.get("subprotocols") or [])


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    gate: RealtimeGate = websocket.app.state.realtime
    refused = gate.refusal(websocket)
    if refused:
        return await _refuse(websocket, gate, *refused)
    gate.open += 1
    if gate.metrics:
        gate.metrics.opened()
    try:
        await _serve(websocket, gate, websocket.app.state.models)
    finally:
        gate.open -= 1
        if gate.metrics:
            gate.metrics.closed()


async def _refuse(websocket: WebSocket, gate: RealtimeGate, error: APIError, code: int) -> None:
    """A refused handshake: 401 as an HTTP answer where the server can send one; otherwise (and for the session
    limit, whose close code clients act on) the WebSocket opens, says why in an ``error`` event and closes."""
    if gate.metrics:
        gate.metrics.refuse(error.code or "refused")
    if isinstance(error, Unauthorized) and "websocket.http.response" in websocket.scope.get("extensions", {}):
        return await websocket.send_denial_response(JSONResponse(error.to_dict(), status_code=401))
    await websocket.accept(subprotocol=_subprotocol(websocket))
    await websocket.send_text(json.dumps({"type": "error", "event_id": "event_refused", "error": error.to_dict()["error"] | {"event_id": None}}))
    await websocket.close(code, reason=error.message[:120])


async def _serve(websocket: WebSocket, gate: RealtimeGate, registry: ModelRegistry) -> None:
    await websocket.accept(subprotocol=_subprotocol(websocket))
    outgoing: asyncio.Queue = asyncio.Queue()
    asked = websocket.query_params.get("model")
    model = registry.resolve(asked if asked in registry.models_by_name else None)
    session = RealtimeSession(
        SessionSettings(model=model),
        transcribers=registry.transcribers,
        resolve=registry.resolve,
        check=lambda name, options: check_options(registry.backend_kinds[name], options),
        config=gate.config,
        limits=gate.limits,
        emit=outgoing.put_nowait,
        metrics=gate.metrics,
        beta=_beta(websocket),
    )
    writer = asyncio.create_task(_write(websocket, outgoing))
    session.open()
    started = time.monotonic()
    reason = await _read(websocket, session, gate, started)
    if reason == "client":
        await session.close()
    else:
        await session.drain(gate.limits.request_timeout_s)
    outgoing.put_nowait(None)
    await asyncio.gather(writer, return_exceptions=True)
    if reason != "client":
        await _close(websocket, 1000, reason)
    log.info("realtime session=%s model=%s duration_s=%.1f end=%s", session.events.session_id, session.settings.model, time.monotonic() - started, reason)


async def _read(websocket: WebSocket, session: RealtimeSession, gate: RealtimeGate, started: float) -> str:
    """Client events into the session until the client leaves ('client') or a limit ends the session."""
    config = gate.config
    while True:
        left = config.max_session_s - (time.monotonic() - started)
        try:
            message = await asyncio.wait_for(websocket.receive(), min(config.idle_timeout_s, max(left, 0)))
        except asyncio.TimeoutError:
            expired = left <= config.idle_timeout_s
            code = "session_expired" if expired else "session_idle_timeout"
            text = f"The session reached its maximum length of {config.max_session_s:g} s." if expired else f"No event for {config.idle_timeout_s:g} s: the session is closed."
            session.emit(session.events.error(InvalidRequest(text, code=code)))
            return code
        if message["type"] == "websocket.disconnect":
            return "client"
        data = message.get("text") or message.get("bytes") or b""
        if len(data) > config.max_message_bytes:
            error = InvalidRequest(f"The event is {len(data)} bytes; the limit is {config.max_message_bytes}.", code="message_too_large")
            session.emit(session.events.error(error))
            continue
        session.handle(data)


async def _write(websocket: WebSocket, outgoing: asyncio.Queue) -> None:
    while (event := await outgoing.get()) is not None:
        await websocket.send_text(json.dumps(event))


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    try:
        await websocket.close(code, reason=reason)
    except (RuntimeError, WebSocketDisconnect):  # the client closed first
        pass
