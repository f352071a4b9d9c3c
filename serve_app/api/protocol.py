"""OpenAI-shaped request and response models, kept apart from the serving logic that uses them."""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal, Optional, Union

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

from serve_app.core.types import ChatOptions, TokenUsage, TranscribeOptions
from serve_app.errors import InvalidRequest

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
GRANULARITIES = frozenset({"segment", "word"})


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# --- audio transcriptions and translations: multipart forms ---


class AudioForm(BaseModel):
    """The form fields both audio routes take (unknown fields are ignored, as OpenAI does)."""

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())
    task: ClassVar[str]

    file: UploadFile
    model: Optional[str] = None
    prompt: Optional[str] = None
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)

    def check(self) -> None:
        """The checks across fields that the field types cannot make; raises ``InvalidRequest``."""

    def to_options(self, request_id: str | None) -> TranscribeOptions:
        return TranscribeOptions(prompt=self.prompt, temperature=self.temperature, task=self.task, request_id=request_id)

    @property
    def streamed(self) -> bool:
        return False


class TranslationForm(AudioForm):
    """``POST /v1/audio/translations``: speech in any language to English text."""

    task: ClassVar[str] = "translate"


class TranscriptionForm(AudioForm):
    """``POST /v1/audio/transcriptions``, plus vLLM's generation extensions ``max_tokens`` and ``ignore_eos``."""

    task: ClassVar[str] = "transcribe"

    language: Optional[str] = Field(None, max_length=16)  # ISO-639 codes: a long value is no language
    timestamp_granularities: list[str] = Field([], alias="timestamp_granularities[]")
    stream: bool = False
    max_tokens: Optional[int] = Field(None, ge=1)
    ignore_eos: bool = False

    def check(self) -> None:
        unknown = set(self.timestamp_granularities) - GRANULARITIES
        if unknown:
            raise InvalidRequest(f"Unknown timestamp granularities: {sorted(unknown)}.", param="timestamp_granularities[]")
        if self.timestamp_granularities and self.response_format != "verbose_json":
            raise InvalidRequest("timestamp_granularities requires response_format verbose_json.", param="timestamp_granularities[]")

    def to_options(self, request_id: str | None) -> TranscribeOptions:
        return TranscribeOptions(
            language=self.language or None,
            prompt=self.prompt,
            temperature=self.temperature,
            task=self.task,
            word_timestamps="word" in self.timestamp_granularities,
            request_id=request_id,
            max_tokens=self.max_tokens,
            ignore_eos=self.ignore_eos,
        )

    @property
    def streamed(self) -> bool:
        return self.stream


# --- chat completions: requests (clients send many fields we do not use; those are accepted and ignored) ---


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class TextPart(Lenient):
    type: Literal["text"]
    text: str


class AudioURL(Lenient):
    url: str


class AudioURLPart(Lenient):
    type: Literal["audio_url"]
    audio_url: AudioURL


class InputAudio(Lenient):
    data: str
    format: str | None = None


class InputAudioPart(Lenient):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Union[TextPart, AudioURLPart, InputAudioPart]


class ChatMessage(Lenient):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(Lenient):
    include_usage: bool = False


class ChatCompletionRequest(Lenient):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=1)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def to_options(self, request_id: str | None) -> ChatOptions:
        return ChatOptions(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            request_id=request_id,
            stream=self.stream,
        )


# --- chat completions: responses ---


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, usage: TokenUsage | None) -> Usage:
        usage = usage or TokenUsage()
        return cls(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, total_tokens=usage.total_tokens)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None = "stop"


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage = Field(default_factory=Usage)


class Delta(BaseModel):
    role: str | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# --- transcription streaming events (OpenAI's shape) ---


class TranscriptTextDelta(BaseModel):
    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str


class TranscriptTextDone(BaseModel):
    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str


# --- models ---


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "stt"
    backend: str | None = None
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_none=True)
