"""Server-sent events: chat completion chunks and transcription events, in OpenAI's shapes."""

from __future__ import annotations

import json
import logging
import time
from typing import AsyncIterator

from fastapi.responses import StreamingResponse

from serve_app.api.protocol import (
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    TranscriptTextDelta,
    TranscriptTextDone,
    Usage,
    dump,
)
from serve_app.core.types import ChatDelta
from serve_app.errors import APIError

log = logging.getLogger("ray.serve")
_INTERNAL_ERROR = APIError("internal error").to_dict()


async def started(deltas: AsyncIterator[str]) -> AsyncIterator[str]:
    """Waits for the first delta before the response starts, so an overloaded, failed or timed-out backend is
    answered with its own status code rather than an error event inside a 200 stream."""
    return _chain(await anext(deltas, None), deltas)


async def _chain(first: str | None, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    if first is None:
        return
    yield first
    async for delta in rest:
        yield delta


def sse(events: AsyncIterator[dict], done_marker: bool = True) -> StreamingResponse:
    async def body():
        try:
            async for event in events:
                yield f"data: {json.dumps(event)}\n\n"
        except APIError as e:
            yield f"data: {json.dumps(e.to_dict())}\n\n"
        except Exception:
            log.exception("stream failed")
            yield f"data: {json.dumps(_INTERNAL_ERROR)}\n\n"
        if done_marker:
            yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def chat_chunks(
    completion_id: str, model: str, deltas: AsyncIterator[ChatDelta], include_usage: bool = False
) -> AsyncIterator[dict]:
    """OpenAI's chunks: the role, the text, the finish reason, and with ``include_usage`` a last chunk with no choices
    and the usage."""
    created = int(time.time())

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> dict:
        return dump(ChatCompletionChunk(id=completion_id, created=created, model=model, choices=choices, usage=usage))

    yield chunk([ChunkChoice(delta=Delta(role="assistant", content=""))])
    last = ChatDelta("")
    async for last in deltas:
        if last.text:
            yield chunk([ChunkChoice(delta=Delta(content=last.text))])
    yield chunk([ChunkChoice(delta=Delta(), finish_reason=last.finish_reason or "stop")])
    if include_usage:
        yield chunk([], Usage.of(last.usage))


async def transcript_events(deltas: AsyncIterator[str]) -> AsyncIterator[dict]:
    text = []
    async for delta in deltas:
        if delta:
            text.append(delta)
            yield dump(TranscriptTextDelta(delta=delta))
    yield dump(TranscriptTextDone(text="".join(text).strip()))
