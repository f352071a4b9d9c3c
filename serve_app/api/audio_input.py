"""Audio as clients send it (a multipart upload, a base64 data URL, OpenAI's ``input_audio``) to 16 kHz arrays,
under the configured limits."""

from __future__ import annotations

import asyncio
import base64
import binascii

import numpy as np
from fastapi import UploadFile

from serve_app.api.protocol import ChatMessage
from serve_app.audio.decode import decode_audio
from serve_app.config import LimitsConfig
from serve_app.core.types import ChatTurn
from serve_app.errors import APIError, InvalidAudio, InvalidRequest, PayloadTooLarge
from serve_app.metrics import IngressMetrics


class AudioInput:
    def __init__(self, limits: LimitsConfig, metrics: IngressMetrics | None = None):
        self.limits = limits
        self.metrics = metrics

    async def upload(self, file: UploadFile) -> np.ndarray:
        return await self.decode(await self._read(file), file.filename, file.content_type)

    async def chat_turn(self, message: ChatMessage) -> ChatTurn:
        """A chat message with its audio parts decoded, in order."""
        content = message.content
        if content is None or isinstance(content, str):
            return ChatTurn(role=message.role, parts=(content or "",))
        parts = []
        for part in content:
            if part.type == "text":
                parts.append(part.text)
            elif part.type == "audio_url":
                data, mime = data_url(part.audio_url.url)
                parts.append(await self.decode(data, None, mime))
            else:
                fmt = part.input_audio.format
                parts.append(await self.decode(base64_audio(part.input_audio.data), f"audio.{fmt}" if fmt else None, None))
        return ChatTurn(role=message.role, parts=tuple(parts))

    async def decode(self, data: bytes, filename: str | None, content_type: str | None) -> np.ndarray:
        limits = self.limits
        try:
            return await asyncio.to_thread(
                decode_audio,
                data,
                filename=filename,
                content_type=content_type,
                max_duration_s=limits.max_duration_s,
                min_duration_s=limits.min_duration_s,
            )
        except APIError as e:
            if self.metrics is not None:
                self.metrics.decode_failed(e.code)
            raise

    async def _read(self, file: UploadFile) -> bytes:
        limit = self.limits.max_upload_bytes
        too_large = PayloadTooLarge(f"The file is larger than the limit of {limit} bytes.", param="file")
        if file.size is not None and file.size > limit:
            raise too_large
        data = await file.read()
        if len(data) > limit:
            raise too_large
        return data


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
    return base64_audio(payload), header[: -len(";base64")] or None
