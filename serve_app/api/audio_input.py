"""Audio as clients send it (a multipart upload, a base64 data URL, OpenAI's ``input_audio``) to 16 kHz arrays,
under the configured limits."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time

import numpy as np
from fastapi import UploadFile

from serve_app.api.protocol import ChatMessage
from serve_app.audio.decode import decode_audio, release_memory
from serve_app.config import LimitsConfig
from serve_app.core.types import ChatTurn, duration_of
from serve_app.errors import APIError, InvalidAudio, InvalidRequest, PayloadTooLarge, UnsupportedMediaType, quoted
from serve_app.metrics import IngressMetrics

_LONG_DECODE_S = 0.5
# What a data URL of audio may call itself: audio/*, video containers with sound, or no claim at all.
AUDIO_MEDIA_TYPES = ("audio/", "video/", "application/octet-stream", "application/ogg")


class AudioInput:
    def __init__(self, limits: LimitsConfig, metrics: IngressMetrics | None = None):
        self.limits = limits
        self.metrics = metrics
        self._decoding = asyncio.Semaphore(limits.max_concurrent_decodes)

    async def upload(self, file: UploadFile) -> np.ndarray:
        return await self.decode(await self._read(file), file.filename, file.content_type)

    async def chat_turns(self, messages: list[ChatMessage]) -> list[ChatTurn]:
        """The messages with their audio parts decoded, in order, under one duration limit for all of them."""
        budget = DurationBudget(self.limits.max_duration_s)
        return [await self._chat_turn(m, budget) for m in messages]

    async def _chat_turn(self, message: ChatMessage, budget: DurationBudget) -> ChatTurn:
        content = message.content
        if content is None or isinstance(content, str):
            return ChatTurn(role=message.role, parts=(content or "",))
        parts = []
        for part in content:
            if part.type == "text":
                parts.append(part.text)
                continue
            if part.type == "audio_url":
                data, mime = data_url(part.audio_url.url)
                name = None
            else:
                data, mime, fmt = base64_audio(part.input_audio.data), None, part.input_audio.format
                name = f"audio.{fmt}" if fmt else None
            parts.append(await budget.spent_on(self.decode(data, name, mime, budget.left_s)))
        return ChatTurn(role=message.role, parts=tuple(parts))

    async def decode(self, data: bytes, filename: str | None, content_type: str | None, max_s: float | None = None) -> np.ndarray:
        limits, started = self.limits, time.perf_counter()
        try:
            async with self._decoding:
                audio = await asyncio.to_thread(
                    decode_audio,
                    data,
                    filename=filename,
                    content_type=content_type,
                    max_duration_s=limits.max_duration_s if max_s is None else max_s,
                    min_duration_s=limits.min_duration_s,
                )
        except APIError as e:
            if self.metrics is not None:
                self.metrics.decode_failed(e.code)
            raise
        finally:
            if time.perf_counter() - started > _LONG_DECODE_S:  # a long file: give its buffers back
                release_memory()
        return audio

    async def _read(self, file: UploadFile) -> bytes:
        limit = self.limits.max_upload_bytes
        too_large = PayloadTooLarge(f"The file is larger than the limit of {limit} bytes.", param="file")
        if file.size is not None and file.size > limit:
            raise too_large
        data = await file.read()
        if len(data) > limit:
            raise too_large
        return data


class DurationBudget:
    """The seconds of audio a request may still decode: a chat's parts share one limit."""

    def __init__(self, max_s: float):
        self.max_s = max_s
        self.left_s = max_s

    async def spent_on(self, decoding) -> np.ndarray:
        """The audio ``decoding`` (bounded by ``left_s``) gives, taken off the budget."""
        try:
            audio = await decoding
        except PayloadTooLarge:
            audio = None
        if audio is None or duration_of(audio) > self.left_s:
            raise PayloadTooLarge(f"The request's audio is longer than the maximum of {self.max_s:g} s.", param="messages")
        self.left_s -= duration_of(audio)
        return audio


def base64_audio(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidAudio("The audio data is not valid base64.", param="messages") from None


def data_url(url: str) -> tuple[bytes, str | None]:
    """The bytes and media type of a ``data:`` URL. Only those are accepted: fetching arbitrary URLs from inside the
    cluster is a security risk."""
    if not url.startswith("data:"):
        raise InvalidRequest("audio_url must be a data: URL (data:audio/...;base64,...).", param="messages")
    header, sep, payload = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidRequest("audio_url must be base64-encoded (data:audio/...;base64,...).", param="messages")
    mime = header[: -len(";base64")] or None
    if mime and not mime.lower().startswith(AUDIO_MEDIA_TYPES):
        raise UnsupportedMediaType(f"audio_url holds {quoted(mime)}, not audio (data:audio/...;base64,...).", param="messages")
    return base64_audio(payload), mime
