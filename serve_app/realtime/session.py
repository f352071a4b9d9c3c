"""One realtime transcription session: client events in, server events out, utterances through the transcription core.

The session owns its audio buffer, its turn detector and the model calls of its utterances. Events go out through
``emit`` (a synchronous put onto the connection's outgoing queue), so a model call that is cancelled can never leave
half an event behind. Closing the session cancels every model call it has in flight.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from serve_app.audio.stream import StreamDecoder
from serve_app.config import LimitsConfig, RealtimeConfig
from serve_app.core.transcriber import Transcriber, consume_outcome
from serve_app.core.types import SAMPLE_RATE, TranscribeOptions
from serve_app.errors import APIError, Overloaded
from serve_app.realtime.buffer import SampleBuffer
from serve_app.realtime.partials import PartialText
from serve_app.realtime.protocol import (
    AppendEvent,
    BetaUpdateEvent,
    ClientEvent,
    EventError,
    ServerEvents,
    SessionSettings,
    UpdateEvent,
    apply_changes,
    new_id,
    parse_event,
)
from serve_app.realtime.turns import TurnDetector

log = logging.getLogger("ray.serve")


@dataclass
class Utterance:
    item_id: str
    start: int  # stream sample where its audio starts (the prefix padding included)
    partial: PartialText = field(default_factory=PartialText)
    next_partial: int = 0  # stream sample at which the next partial decode is due
    partial_task: asyncio.Task | None = None
    speculation: asyncio.Task | None = None  # the final decode, started when the speaker paused


class RealtimeSession:
    def __init__(
        self,
        settings: SessionSettings,
        *,
        transcribers: Mapping[str, Transcriber],
        resolve: Callable[[str | None], str],
        check: Callable[[str, TranscribeOptions], None],
        config: RealtimeConfig,
        limits: LimitsConfig,
        emit: Callable[[dict], None],
        metrics=None,
        beta: bool = False,
    ):
        self.settings = settings
        self.transcribers, self.resolve, self.check = transcribers, resolve, check
        self.config, self.limits = config, limits
        self.emit, self.metrics = emit, metrics
        self.events = ServerEvents(new_id("sess"), beta)
        self.buffer = SampleBuffer()
        self.decoder, self.vad_decoder = _decoders(settings)
        self.vad_position = 0  # samples the turn detector's stream has had (it runs ahead of the model's)
        self.turns = self._turn_detector(settings)
        self.utterance: Utterance | None = None
        self.previous_item_id: str | None = None
        self.tasks: set[asyncio.Task] = set()

    def open(self) -> None:
        self.emit(self.events.session("created", self.settings))

    def handle(self, message: str | bytes) -> None:
        """One client event; an event the session cannot take is answered with an ``error`` event."""
        event_id = None
        try:
            event = parse_event(message)
            event_id = event.event_id
            self._dispatch(event)
        except APIError as e:
            self.emit(self.events.error(e, event_id))

    def _dispatch(self, event: ClientEvent) -> None:
        if isinstance(event, (UpdateEvent, BetaUpdateEvent)):
            self._update(event)
        elif isinstance(event, AppendEvent):
            self._append(event.audio)
        elif event.type == "input_audio_buffer.commit":
            self._commit()
        else:
            self._clear()

    async def close(self) -> None:
        """The client is gone: its model calls are cancelled, and waited for, so nothing of it keeps running."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self, timeout_s: float) -> None:
        """The server ends the session: the utterance in progress is committed, and every committed utterance gets
        its transcript first (within ``timeout_s``)."""
        if self.utterance:
            self._speech_stopped(self.buffer.end)
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout_s)

    # -- session.update

    def _update(self, event: UpdateEvent | BetaUpdateEvent) -> None:
        changes = event.session.changes()
        settings = apply_changes(self.settings, changes)
        settings = _with_model(settings, self.resolve(settings.model))
        self.check(settings.model, self._options(settings))
        if settings.format != self.settings.format:
            if self.utterance or (self.turns is None and len(self.buffer)):
                raise EventError(
                    "The input audio format cannot change while the buffer holds speech; commit or clear it first.",
                    param="session.audio.input.format",
                )
            self.buffer.drop_before(self.buffer.end)
            self.decoder, self.vad_decoder = _decoders(settings)
        if settings.turn_detection != self.settings.turn_detection:
            self._end_speech_silently()
            self.turns = self._turn_detector(settings, self.vad_position)
        self.settings = settings
        self.events.beta = event.beta
        self.emit(self.events.session("updated", settings))

    # -- input_audio_buffer.*

    def _append(self, data: str) -> None:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise EventError("The audio is not valid base64.", param="audio") from None
        if self.turns is None and (len(self.buffer) + len(raw) * SAMPLE_RATE / self.settings.format.bytes_per_second) > self.config.max_buffer_s * SAMPLE_RATE:
            raise EventError(
                f"The input audio buffer holds over {self.config.max_buffer_s:g} s of audio: commit or clear it.",
                code="input_audio_buffer_full", param="audio",
            )  # fmt: skip
        self.buffer.append(self.decoder.decode(raw))
        heard = self.vad_decoder.decode(raw)
        self.vad_position += len(heard)
        if self.turns is None:
            return
        for turn in self.turns.push(heard):
            getattr(self, "_on_" + turn.kind)(turn.sample)
        self._after_append()

    def _after_append(self) -> None:
        u = self.utterance
        if u is None:  # between utterances only the prefix padding is kept
            self.buffer.drop_before(self.buffer.end - self._ms_samples(self.settings.turn_detection.prefix_padding_ms))
        elif self.buffer.end - u.start >= self.config.max_utterance_s * SAMPLE_RATE:
            self._speech_stopped(self.buffer.end)
            self.turns.reset()
        else:
            self._maybe_partial(u)

    def _commit(self) -> None:
        self.buffer.append(self.decoder.flush())
        start = self.utterance.start if self.utterance else self.buffer.start
        have_ms = (self.buffer.end - start) * 1000 // SAMPLE_RATE
        need_ms = max(100, int(self.limits.min_duration_s * 1000))
        if have_ms < need_ms:
            raise EventError(
                f"Error committing input audio buffer: buffer too small. Expected at least {need_ms}ms of audio, "
                f"but buffer only has {have_ms}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        if self.turns:
            self.turns.reset()
        u = self.utterance or Utterance(new_id("item"), start)
        self.utterance = None
        self._finish(u, self.buffer.end)

    def _clear(self) -> None:
        self._end_speech_silently()
        self.buffer.drop_before(self.buffer.end)
        self.emit(self.events.event("input_audio_buffer.cleared"))

    # -- turns

    def _on_started(self, onset: int) -> None:
        padding = self._ms_samples(self.settings.turn_detection.prefix_padding_ms)
        start = max(onset - padding, self.buffer.start)
        u = Utterance(new_id("item"), start, next_partial=start + self._partial_step())
        self.utterance = u
        self.emit(self.events.event("input_audio_buffer.speech_started", audio_start_ms=_ms(start), item_id=u.item_id))
        if self.metrics:
            self.metrics.speech_started()

    def _on_pausing(self, position: int) -> None:
        """The speaker has paused long enough that the utterance has probably ended: its final decode starts now,
        on the audio so far (what follows is silence), and is used if the pause becomes the end."""
        u = self.utterance
        if u is None:
            return
        if u.partial_task:
            u.partial_task.cancel()
        audio = self.buffer.view(u.start, position)
        u.speculation = self._spawn(self.transcribers[self.settings.model].transcribe(audio, self._options(self.settings)))
        u.speculation.add_done_callback(consume_outcome)  # a dropped decode's error is nobody's

    def _on_resumed(self, position: int) -> None:
        u = self.utterance
        if u and u.speculation:
            u.speculation.cancel()
            u.speculation = None

    def _on_stopped(self, end: int) -> None:
        self._speech_stopped(end, self.utterance.speculation if self.utterance else None)

    def _speech_stopped(self, end: int, speculation: asyncio.Task | None = None) -> None:
        u, self.utterance = self.utterance, None
        if u is None:
            return
        self.emit(self.events.event("input_audio_buffer.speech_stopped", audio_end_ms=_ms(end), item_id=u.item_id))
        self._finish(u, end, speculation)

    def _end_speech_silently(self) -> None:
        """Drops the utterance in progress (a clear, or new turn settings): it was never committed."""
        u, self.utterance = self.utterance, None
        for task in (u.partial_task, u.speculation) if u else ():
            if task:
                task.cancel()
        if self.turns:
            self.turns.reset()

    # -- model calls

    def _finish(self, u: Utterance, end: int, speculation: asyncio.Task | None = None) -> None:
        """Commits the utterance's audio up to ``end`` and transcribes it (or takes the decode begun at the pause)."""
        if u.partial_task:
            u.partial_task.cancel()
        audio = self.buffer.view(u.start, end)
        self.buffer.drop_before(end)
        self.emit(self.events.event("input_audio_buffer.committed", previous_item_id=self.previous_item_id, item_id=u.item_id))
        self.previous_item_id = u.item_id
        if speculation is None and u.speculation:
            u.speculation.cancel()
        self._spawn(self._final(u, audio, self.settings, time.perf_counter(), speculation))

    async def _final(self, u: Utterance, audio, settings: SessionSettings, committed_at: float, speculation=None) -> None:
        try:
            if speculation is None or speculation.cancelled():
                speculation = self.transcribers[settings.model].transcribe(audio, self._options(settings))
            transcript = await speculation
        except Exception as e:  # noqa: BLE001 - the item fails, the session goes on
            error = e if isinstance(e, APIError) else APIError("The transcription failed.")
            if not isinstance(e, APIError):
                log.exception("realtime item %s failed", u.item_id)
            body = error.to_dict()["error"]
            self.emit(self.events.event(_ITEM_EVENT + "failed", item_id=u.item_id, content_index=0, error=body))
            return
        delta, text = u.partial.final(transcript.text)
        if delta:
            self.emit(self.events.event(_ITEM_EVENT + "delta", item_id=u.item_id, content_index=0, delta=delta))
        usage = _usage(transcript, len(audio))
        self.emit(self.events.event(_ITEM_EVENT + "completed", item_id=u.item_id, content_index=0, transcript=text, usage=usage))
        if self.metrics:
            self.metrics.completed(time.perf_counter() - committed_at)

    def _maybe_partial(self, u: Utterance) -> None:
        if not self.config.partial_interval_s or self.buffer.end < u.next_partial or u.speculation:
            return
        if u.partial_task and not u.partial_task.done():
            return  # one partial decode at a time: a slow model skips partials rather than queueing them
        u.next_partial = self.buffer.end + self._partial_step()
        audio = self.buffer.view(u.start)
        u.partial_task = self._spawn(self._partial(u, audio, self.settings, time.perf_counter()))

    async def _partial(self, u: Utterance, audio, settings: SessionSettings, received_at: float) -> None:
        try:
            options = replace(self._options(settings), best_effort=True)
            transcript = await self.transcribers[settings.model].transcribe(audio, options)
        except APIError as e:  # a partial is a preview: the final decode reports what fails
            if isinstance(e, Overloaded) and self.metrics:
                self.metrics.partial_skipped()
            return
        delta = u.partial.update(transcript.text)
        sent = bool(delta) and self.utterance is u
        if sent:
            self.emit(self.events.event(_ITEM_EVENT + "delta", item_id=u.item_id, content_index=0, delta=delta))
        if self.metrics:
            self.metrics.partial_decoded(time.perf_counter() - received_at, text_changed=sent)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _options(self, settings: SessionSettings) -> TranscribeOptions:
        return TranscribeOptions(language=settings.language, prompt=settings.prompt, request_id=self.events.session_id)

    def _partial_step(self) -> int:
        return int(self.config.partial_interval_s * SAMPLE_RATE)

    def _turn_detector(self, settings: SessionSettings, origin: int = 0) -> TurnDetector | None:
        if not settings.turn_detection:
            return None
        return TurnDetector(settings.turn_detection, self.config.early_final_pause_ms, origin)

    @staticmethod
    def _ms_samples(ms: int) -> int:
        return ms * SAMPLE_RATE // 1000


_ITEM_EVENT = "conversation.item.input_audio_transcription."


def _ms(sample: int) -> int:
    return sample * 1000 // SAMPLE_RATE


def _decoders(settings: SessionSettings) -> tuple[StreamDecoder, StreamDecoder]:
    """The model's audio, and the turn detector's: the same samples, without the resampler's delay."""
    return StreamDecoder(settings.format), StreamDecoder(settings.format, quality="QQ")


def _with_model(settings: SessionSettings, name: str) -> SessionSettings:
    return replace(settings, model=name)


def _usage(transcript, samples: int) -> dict:
    u = transcript.usage
    if u is None:
        return {"type": "duration", "seconds": round(samples / SAMPLE_RATE, 3)}
    return {
        "type": "tokens", "input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens, "input_token_details": {"audio_tokens": u.prompt_tokens, "text_tokens": 0},
    }  # fmt: skip
