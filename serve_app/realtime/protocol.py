"""OpenAI's Realtime transcription protocol: the client events this server takes, the session settings they carry,
and the server events it sends (field by field as OpenAI publishes them).

Both dialects are spoken: the GA one (``session.update`` with ``session.type: "transcription"`` and an
``audio.input`` block) and the beta one that many clients still send (``transcription_session.update`` with
``input_audio_format`` / ``input_audio_transcription``). A session answers in the dialect it was opened or updated in.
Fields of OpenAI's that have no meaning here (noise reduction, include, delay) are accepted and ignored.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.audio.stream import StreamFormat
from serve_app.errors import APIError, InvalidRequest, quoted

BETA_FORMATS = {"pcm16": ("audio/pcm", 24000), "g711_ulaw": ("audio/pcmu", 8000), "g711_alaw": ("audio/pcma", 8000)}
CLIENT_EVENTS = (
    "session.update",
    "transcription_session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass(frozen=True)
class TurnDetection:
    """Server VAD: speech starts at ``threshold`` and stops after ``silence_duration_ms`` below it; each utterance
    keeps ``prefix_padding_ms`` of the audio before its onset."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class SessionSettings:
    model: str
    language: str | None = None
    prompt: str | None = None
    format: StreamFormat = StreamFormat()
    turn_detection: TurnDetection | None = TurnDetection()  # None: the client commits


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FormatIn(_Lenient):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
    rate: int | None = None


class TranscriptionIn(_Lenient):
    model: str | None = None
    language: str | None = Field(None, max_length=16)
    prompt: str | None = Field(None, max_length=4096)


class TurnDetectionIn(_Lenient):
    type: Literal["server_vad"]
    threshold: float | None = Field(None, gt=0, lt=1)
    prefix_padding_ms: int | None = Field(None, ge=0, le=5000)
    silence_duration_ms: int | None = Field(None, ge=32, le=10000)


class AudioInputIn(_Lenient):
    format: FormatIn | None = None
    transcription: TranscriptionIn | None = None
    turn_detection: TurnDetectionIn | None = None


class AudioIn(_Lenient):
    input: AudioInputIn | None = None


class SessionIn(_Lenient):
    """GA: ``session.update``'s session."""

    type: Literal["transcription"]
    audio: AudioIn | None = None

    def changes(self) -> dict[str, Any]:
        block = self.audio.input if self.audio and self.audio.input else None
        if block is None:
            return {}
        out = _changes(block, "transcription", "turn_detection")
        if block.format is not None:
            out["format"] = (block.format.type, block.format.rate)
        return out


class BetaSessionIn(_Lenient):
    """Beta: ``transcription_session.update``'s session."""

    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    input_audio_transcription: TranscriptionIn | None = None
    turn_detection: TurnDetectionIn | None = None

    def changes(self) -> dict[str, Any]:
        out = _changes(self, "input_audio_transcription", "turn_detection")
        if self.input_audio_format is not None:
            out["format"] = BETA_FORMATS[self.input_audio_format]
        return out


def _changes(block: BaseModel, transcription_field: str, turn_field: str) -> dict[str, Any]:
    """The settings a block sets: only fields present in the event change (``turn_detection: null`` turns it off)."""
    out: dict[str, Any] = {}
    transcription = getattr(block, transcription_field)
    if transcription is not None:
        out.update({k: getattr(transcription, k) for k in transcription.model_fields_set})
    if turn_field in block.model_fields_set:
        out["turn_detection"] = getattr(block, turn_field)
    return out


class UpdateEvent(_Lenient):
    type: Literal["session.update"]
    event_id: str | None = None
    session: SessionIn
    beta: ClassVar[bool] = False


class BetaUpdateEvent(_Lenient):
    type: Literal["transcription_session.update"]
    event_id: str | None = None
    session: BetaSessionIn
    beta: ClassVar[bool] = True


class AppendEvent(_Lenient):
    type: Literal["input_audio_buffer.append"]
    event_id: str | None = None
    audio: str


class BufferEvent(_Lenient):
    type: Literal["input_audio_buffer.commit", "input_audio_buffer.clear"]
    event_id: str | None = None


ClientEvent = UpdateEvent | BetaUpdateEvent | AppendEvent | BufferEvent
_EVENT_MODELS = {
    "session.update": UpdateEvent, "transcription_session.update": BetaUpdateEvent, "input_audio_buffer.append": AppendEvent,
}  # fmt: skip


class EventError(InvalidRequest):
    """A client event this server cannot take: answered with an ``error`` event, and the session goes on."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None, event_id: str | None = None):
        super().__init__(message, param=param, code=code)
        self.event_id = event_id


def parse_event(text: str | bytes) -> ClientEvent:
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise EventError("The message is not valid JSON.", code="invalid_json") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise EventError("An event is a JSON object with a string 'type'.", code="invalid_event", param="type")
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    kind = raw["type"]
    if kind not in CLIENT_EVENTS:
        raise EventError(
            f"Invalid value: {quoted(kind)}. Supported values are: {', '.join(CLIENT_EVENTS)}.", param="type", event_id=event_id
        )
    try:
        return _EVENT_MODELS.get(kind, BufferEvent).model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("SessionIn", "BetaSessionIn")))
        raise EventError(f"Invalid {kind} event: {where}: {first['msg']}.", param=where or None, event_id=event_id) from None


def apply_changes(settings: SessionSettings, changes: dict[str, Any]) -> SessionSettings:
    """The settings after an update's changes; the caller resolves the model name."""
    new: dict[str, Any] = {k: changes[k] for k in ("language", "prompt") if k in changes}
    if changes.get("model"):
        new["model"] = changes["model"]
    if "format" in changes:
        kind, rate = changes["format"]
        try:
            new["format"] = StreamFormat(kind, rate or (24000 if kind == "audio/pcm" else 8000))
        except ValueError as e:
            raise EventError(f"Unsupported input audio format: {e}.", param="session.audio.input.format") from None
    if "turn_detection" in changes:
        turn = changes["turn_detection"]
        new["turn_detection"] = None if turn is None else _turn(settings.turn_detection or TurnDetection(), turn)
    return replace(settings, **new)


def _turn(current: TurnDetection, update: TurnDetectionIn) -> TurnDetection:
    fields = {k: getattr(update, k) for k in ("threshold", "prefix_padding_ms", "silence_duration_ms")}
    return replace(current, **{k: v for k, v in fields.items() if v is not None})


class ServerEvents:
    """Builds the server's events, each with a fresh ``event_id``."""

    def __init__(self, session_id: str, beta: bool = False):
        self.session_id = session_id
        self.beta = beta
        self.expires_at = int(time.time()) + 3600

    @staticmethod
    def event(kind: str, **fields) -> dict:
        return {"type": kind, "event_id": new_id("event"), **fields}

    def session(self, kind: str, s: SessionSettings) -> dict:
        """``session.created`` / ``session.updated`` (beta: ``transcription_session.*``) with the whole session."""
        prefix = "transcription_session" if self.beta else "session"
        return self.event(f"{prefix}.{kind}", session=self._beta_session(s) if self.beta else self._session(s))

    def _session(self, s: SessionSettings) -> dict:
        fmt = {"type": s.format.type} | ({"rate": s.format.rate} if s.format.type == "audio/pcm" else {})
        audio_input = {
            "format": fmt,
            "noise_reduction": None,
            "transcription": {"model": s.model, "language": s.language, "prompt": s.prompt},
            "turn_detection": _turn_out(s.turn_detection),
        }
        return {
            "id": self.session_id, "object": "realtime.transcription_session", "type": "transcription",
            "expires_at": self.expires_at, "include": None, "audio": {"input": audio_input},
        }  # fmt: skip

    def _beta_session(self, s: SessionSettings) -> dict:
        fmt = next(k for k, v in BETA_FORMATS.items() if v[0] == s.format.type)
        return {
            "id": self.session_id, "object": "realtime.transcription_session", "expires_at": self.expires_at,
            "input_audio_format": fmt, "input_audio_noise_reduction": None, "include": None,
            "input_audio_transcription": {"model": s.model, "language": s.language, "prompt": s.prompt},
            "turn_detection": _turn_out(s.turn_detection),
        }  # fmt: skip

    def error(self, e: APIError, event_id: str | None = None) -> dict:
        """OpenAI's error object; ``event_id`` names the client event that caused it."""
        body = e.to_dict()["error"] | {"event_id": getattr(e, "event_id", None) or event_id}
        return self.event("error", error=body)


def _turn_out(t: TurnDetection | None) -> dict | None:
    if t is None:
        return None
    return {"type": "server_vad", "threshold": t.threshold, "prefix_padding_ms": t.prefix_padding_ms, "silence_duration_ms": t.silence_duration_ms}
