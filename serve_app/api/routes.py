"""The HTTP API: OpenAI's audio, chat and model routes. Each route validates its request model, hands decoded audio
to the model's transcriber or backend, and renders the answer; errors are typed and rendered in one place."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from serve_app.api.audio_input import AudioInput
from serve_app.api.model_registry import ModelRegistry
from serve_app.api.protocol import (
    AssistantMessage,
    AudioForm,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    TranscriptionForm,
    TranslationForm,
    Usage,
    dump,
    new_id,
)
from serve_app.api.request_context import current_request
from serve_app.api.streaming import chat_chunks, sse, started, transcript_events
from serve_app.backends import check_options
from serve_app.core import formats

router = APIRouter()


def models(request: Request) -> ModelRegistry:
    return request.app.state.models


def audio_input(request: Request) -> AudioInput:
    return request.app.state.audio_input


Models = Annotated[ModelRegistry, Depends(models)]
Audio = Annotated[AudioInput, Depends(audio_input)]


@router.get("/health")
async def health(registry: Models) -> JSONResponse:
    """Readiness: 200 while every model can serve, 503 (with each model's state) while one cannot."""
    models = await registry.health()
    ready = all(state == "ok" for state in models.values())
    return JSONResponse({"status": "ok" if ready else "unavailable", "models": models}, status_code=200 if ready else 503)


@router.get("/v1/models")
async def list_models(registry: Models) -> dict:
    return dump(registry.cards())


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, registry: Models) -> dict:
    return dump(registry.card(model_id))


@router.post("/v1/audio/transcriptions")
async def transcriptions(form: Annotated[TranscriptionForm, Form()], registry: Models, audio: Audio) -> Response:
    return await speech_to_text(form, registry, audio)


@router.post("/v1/audio/translations")
async def translations(form: Annotated[TranslationForm, Form()], registry: Models, audio: Audio) -> Response:
    return await speech_to_text(form, registry, audio)


@router.post("/v1/chat/completions")
async def chat_completions(request: ChatCompletionRequest, registry: Models, audio: Audio) -> Response:
    name = registry.resolve(request.model)
    options = request.to_options(current_request().request_id)
    check_options(registry.backend_kinds[name], options)
    turns = await audio.chat_turns(request.messages)
    chat, completion_id, model_id = registry.chats[name], new_id("chatcmpl"), request.model or name
    if request.stream:
        deltas = await started(chat.stream(turns, options))
        return sse(chat_chunks(completion_id, model_id, deltas, request.include_usage))
    answer = await chat.complete(turns, options)
    choice = Choice(message=AssistantMessage(content=answer.text), finish_reason=answer.finish_reason)
    return JSONResponse(dump(ChatCompletion(id=completion_id, model=model_id, choices=[choice], usage=Usage.of(answer.usage))))


async def speech_to_text(form: AudioForm, registry: ModelRegistry, audio: AudioInput) -> Response:
    name = registry.resolve(form.model)
    form.check()
    options = form.to_options(current_request().request_id)
    check_options(registry.backend_kinds[name], options)
    samples = await audio.upload(form.file)
    transcriber = registry.transcribers[name]
    if form.streamed:
        deltas = await started(transcriber.stream(samples, options))
        return sse(transcript_events(deltas), done_marker=False)
    body, media_type = formats.render(await transcriber.transcribe(samples, options), form.response_format, form.task)
    if isinstance(body, dict):
        return JSONResponse(body)
    return PlainTextResponse(body, media_type=media_type)
