"""Voxtral through vLLM's ``AsyncLLM``, running inside the Serve replica (no subprocess server).

Transcription uses Voxtral's dedicated prompt (mistral_common ``TranscriptionRequest`` -> ``encode_transcription``,
what vLLM's own transcription endpoint uses); chat builds the conversation with mistral_common's chat encoder.
Concurrent requests (and the chunks of one long request) are batched by vLLM's continuous batching.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import AsyncIterator

import numpy as np

from serve_app.audio.wav import wav_bytes
from serve_app.backends.voxtral_encoder_graphs import CONFIG_KEY as ENCODER_GRAPHS_KEY
from serve_app.backends.voxtral_encoder_graphs import WINDOW_KEY
from serve_app.config import VoxtralConfig
from serve_app.core.token_budget import chat_tokens, transcription_tokens
from serve_app.core.types import (
    SAMPLE_RATE,
    ChatDelta,
    ChatOptions,
    ChatTurn,
    Segment,
    TokenUsage,
    TranscribeOptions,
    Transcript,
    duration_of,
)
from serve_app.errors import BackendUnavailable, InvalidRequest, Overloaded

log = logging.getLogger("ray.serve")

TRANSLATE_INSTRUCTION = "Translate this audio into English. Answer with the translation only."


class VoxtralBackend:
    def __init__(self, config: VoxtralConfig, gpu_share: float | None = None):
        self.config = config
        self.device = _device(config.device)
        if self.device == "cpu":
            os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-3 s -> 0.1 s per request on small CPUs
        from vllm.v1.engine.async_llm import AsyncLLM

        memory = self._memory_args(gpu_share)
        self._tokenizer_dir, self._full_window_s = None, None
        if config.engine_window_s():
            self._tokenizer_dir, checkpoint_window_s = windowed_tokenizer(config.model, config.engine_window_s())
            if config.preview_window_s:  # full requests pad themselves to their own, longer window
                self._full_window_s = config.audio_window_s or checkpoint_window_s
        args = engine_args(config, self.device, memory, self._tokenizer_dir)
        started = time.perf_counter()
        self.engine = AsyncLLM.from_engine_args(args)
        self.tokenizer = self.engine.get_tokenizer()
        self._prompt_tokens: dict[tuple[int, str | None], list[int]] = {}
        self._chat_prompt_tokens: dict[tuple, list[int]] = {}
        cache, scheduler = self.engine.vllm_config.cache_config, self.engine.vllm_config.scheduler_config
        kv_tokens = (cache.num_gpu_blocks or 0) * cache.block_size
        self.load = EngineLoad(
            kv_tokens, config.max_num_seqs, config.max_model_len, scheduler.max_num_batched_tokens, config.max_previews_in_flight
        )
        log.info("voxtral %s loaded on %s in %.1f s (%s; KV cache %d tokens)", config.model, self.device,
                 time.perf_counter() - started, memory, self.load.kv_tokens)  # fmt: skip

    def _memory_args(self, gpu_share: float | None) -> dict:
        if self.device == "cpu":
            return {"kv_cache_memory_bytes": self.config.kv_cache_memory_bytes or 256 << 20}
        from serve_app.gpu.budget import plan_for_this_gpu

        share = self.config.gpu_share or gpu_share
        if not share:
            raise ValueError("Voxtral on a GPU needs a share: set ray_actor_options.num_gpus or voxtral.gpu_share.")
        plan = plan_for_this_gpu(self.config, share)
        log.info("GPU memory plan: %s", plan.describe())
        return plan.engine_args()

    # --- the backend protocol ---

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        check_options(options)
        duration = duration_of(audio)
        if not options.best_effort:
            audio = self._full_windows(audio)
        if options.task == "translate":
            prompt = self._chat_prompt([ChatTurn("user", (audio, TRANSLATE_INSTRUCTION))])
        else:
            prompt = self._transcription_prompt(audio, options.language)
        max_tokens = transcription_tokens(duration, self.config.max_audio_tokens_per_s, options.max_tokens, options.ignore_eos)
        text, usage, _ = await self._complete(
            prompt, max_tokens, options.temperature, 1.0, options.ignore_eos, options.request_id, options.best_effort
        )
        text = text.strip()
        segments = [Segment(id=0, start=0.0, end=duration, text=text)] if text else []
        # Voxtral detects the language without saying which: a transcript reports only a language it was given.
        return Transcript(text=text, language=options.language, duration=duration, segments=segments, usage=usage)

    async def chat_stream(self, turns: list[ChatTurn], options: ChatOptions) -> AsyncIterator[ChatDelta]:
        audio_s = sum(duration_of(p) for t in turns for p in t.parts if isinstance(p, np.ndarray))
        max_tokens = options.max_tokens or chat_tokens(audio_s, self.config.max_audio_tokens_per_s, None)
        padded = [ChatTurn(t.role, tuple(self._full_windows(p) if isinstance(p, np.ndarray) else p for p in t.parts)) for t in turns]
        prompt = self._chat_prompt(padded)
        if not options.stream:
            text, usage, finish_reason = await self._complete(
                prompt, max_tokens, options.temperature, options.top_p, False, options.request_id
            )
            yield ChatDelta(text, usage, finish_reason)
            return
        async for delta in self._generate(prompt, max_tokens, options.temperature, options.top_p, options.request_id):
            yield delta

    async def check_health(self) -> None:
        if self.engine.errored:
            raise BackendUnavailable(f"The vLLM engine is dead: {self.engine.dead_error}")
        await self.engine.check_health()

    def shutdown(self) -> None:
        self.engine.shutdown()
        if self._tokenizer_dir:
            shutil.rmtree(self._tokenizer_dir, ignore_errors=True)

    # --- prompts and generation ---

    def _full_windows(self, audio: np.ndarray) -> np.ndarray:
        """A full request's audio padded to its own window, where the engine's tokenizer pads to a preview's shorter one."""
        if not self._full_window_s:
            return audio
        return np.pad(audio, (0, -len(audio) % int(self._full_window_s * SAMPLE_RATE)))

    def _transcription_prompt(self, audio: np.ndarray, language: str | None) -> dict:
        return transcription_prompt(self.tokenizer.instruct, audio, language, self._prompt_tokens)

    def _chat_prompt(self, turns: list[ChatTurn]) -> dict:
        return chat_prompt(self.tokenizer.mistral, turns, self._chat_prompt_tokens)

    async def _complete(
        self, prompt: dict, max_tokens: int, temperature: float, top_p: float, ignore_eos: bool, request_id: str | None,
        best_effort: bool = False,
    ) -> tuple[str, TokenUsage, str | None]:
        """One finished answer (text, usage, finish reason): the engine neither detokenizes nor sends anything until
        the request is done."""
        from vllm.sampling_params import RequestOutputKind

        params = self._params(prompt, max_tokens, temperature, top_p, ignore_eos, RequestOutputKind.FINAL_ONLY, detokenize=False)
        token_ids: list[int] = []
        finish_reason = None
        async for output in self._run(prompt, params, request_id, best_effort):
            token_ids, finish_reason = output.outputs[0].token_ids, output.outputs[0].finish_reason
        usage = TokenUsage(len(prompt["prompt_token_ids"]), len(token_ids))
        return self.tokenizer.decode(list(token_ids)), usage, finish_reason

    async def _generate(
        self, prompt: dict, max_tokens: int, temperature: float, top_p: float, request_id: str | None
    ) -> AsyncIterator[ChatDelta]:
        """Text deltas as the engine produces them (streaming), with its token count so far."""
        from vllm.sampling_params import RequestOutputKind

        params = self._params(prompt, max_tokens, temperature, top_p, False, RequestOutputKind.DELTA, detokenize=True)
        generated = 0
        async for output in self._run(prompt, params, request_id):
            completion = output.outputs[0]
            generated += len(completion.token_ids)
            usage = TokenUsage(len(prompt["prompt_token_ids"]), generated)
            yield ChatDelta(completion.text, usage, completion.finish_reason)

    def _params(self, prompt: dict, max_tokens: int, temperature: float, top_p: float, ignore_eos: bool, kind, detokenize: bool):
        from vllm import SamplingParams

        n_prompt = len(prompt["prompt_token_ids"])
        if n_prompt + 1 > self.config.max_model_len:
            raise InvalidRequest(
                f"The audio and text need {n_prompt} tokens, over this model's limit of {self.config.max_model_len}."
                " Send shorter audio."
            )
        max_tokens = max(1, min(max_tokens, self.config.max_model_len - n_prompt))
        return SamplingParams(
            temperature=temperature, top_p=top_p, max_tokens=max_tokens, ignore_eos=ignore_eos, output_kind=kind, detokenize=detokenize
        )

    async def _run(self, prompt: dict, params, request_id: str | None, best_effort: bool = False):
        """The engine's outputs for one request, counted in ``self.load`` while in flight; a ``best_effort`` request
        (a preview) is refused with ``Overloaded`` where ``EngineLoad`` says it would delay a full request, and waits
        behind the rest under the ``priority`` scheduling policy."""
        n_prompt = len(prompt["prompt_token_ids"])
        tokens = n_prompt + params.max_tokens
        if best_effort and not self.load.preview_fits(n_prompt, tokens):
            raise Overloaded("The model is busy with full requests; this preview is skipped.", retry_after_s=1)
        priority = 1 if best_effort and self.config.scheduling_policy == "priority" else 0
        rid = f"{request_id or 'req'}-{uuid.uuid4().hex[:8]}"
        if "multi_modal_data" in prompt:  # ids instead of hashing megabytes of audio that never repeats
            n = len(prompt["multi_modal_data"]["audio"])
            prompt = {**prompt, "multi_modal_uuids": {"audio": [f"{rid}-{i}" for i in range(n)]}}
        try:
            with self.load.holding(n_prompt, tokens, preview=best_effort):
                async for output in self.engine.generate(prompt, params, request_id=rid, priority=priority):
                    yield output
        except asyncio.CancelledError:
            await self.engine.abort(rid)
            raise
        except Exception as e:
            from vllm.v1.engine.exceptions import EngineDeadError

            if isinstance(e, EngineDeadError):
                raise BackendUnavailable("The vLLM engine died; the replica is being replaced.") from None
            raise


class EngineLoad:
    """What the engine's requests in flight hold: their prompts (audio included), the KV cache tokens they will hold
    at their end (prompt plus the most they may generate), sequences, and how many of them are previews.

    A preview (a realtime partial) is admitted only where it delays no full request: it starts at once beside the
    requests in flight (a free sequence, and KV room that still leaves one request of the longest context its room),
    the engine's next step could prefill all of their prompts and its own (``step_tokens``, vLLM's
    ``max_num_batched_tokens``), and fewer than ``max_previews`` previews are in flight. Every decode costs an encoder
    window and its prefill, so compute, not KV room, is what the previews of many sessions take from the finals; the
    prompts in flight are counted whether or not their prefill is done, which errs on the side of the finals. A
    preview's decoding steps cost each step and the engine's front end as much as a final's whatever its prompt, so
    short windows, which make prompts cheap, must not let previews crowd the batch. A skipped preview costs nothing
    (the next one comes).
    """

    def __init__(self, kv_tokens: int, max_seqs: int, max_model_len: int, step_tokens: int, max_previews: int):
        self.kv_tokens, self.max_seqs, self.reserve, self.step_tokens = kv_tokens, max_seqs, max_model_len, step_tokens
        self.max_previews = max_previews
        self.prompt_tokens = self.tokens = self.requests = self.previews = 0

    def preview_fits(self, prompt_tokens: int, tokens: int) -> bool:
        return (
            self.previews < self.max_previews
            and self.requests + 1 < self.max_seqs
            and self.tokens + tokens + self.reserve <= self.kv_tokens
            and self.prompt_tokens + prompt_tokens <= self.step_tokens
        )

    @contextmanager
    def holding(self, prompt_tokens: int, tokens: int, preview: bool = False):
        self.prompt_tokens += prompt_tokens
        self.tokens += tokens
        self.requests += 1
        self.previews += preview
        try:
            yield
        finally:
            self.prompt_tokens -= prompt_tokens
            self.tokens -= tokens
            self.requests -= 1
            self.previews -= preview


def check_options(options: TranscribeOptions | ChatOptions) -> None:
    """Refuses what Voxtral cannot honour, rather than dropping it (chat options it honours all)."""
    if not isinstance(options, TranscribeOptions):
        return
    if options.prompt:
        raise InvalidRequest("This model takes no prompt for transcription or translation; send none.", param="prompt")
    if options.word_timestamps:
        raise InvalidRequest(
            "This model gives no word timestamps; ask for timestamp_granularities[]=segment, or use a Whisper model.",
            param="timestamp_granularities[]",
        )


# VoxtralConfig fields that are vLLM engine arguments of the same name.
ENGINE_FIELDS = {
    "model", "tokenizer_mode", "config_format", "load_format", "dtype", "kv_cache_dtype", "max_model_len", "max_num_seqs",
    "max_num_batched_tokens", "max_cudagraph_capture_size", "enable_prefix_caching", "enforce_eager", "scheduling_policy",
}  # fmt: skip


def engine_args(config: VoxtralConfig, device: str, memory: dict, tokenizer: str | None = None):
    """vLLM's engine arguments for this config; ``memory`` is the byte plan's, ``tokenizer`` a directory whose
    tekken.json replaces the checkpoint's (``windowed_tokenizer``), and ``engine_kwargs`` win over the rest."""
    from vllm import AsyncEngineArgs

    return AsyncEngineArgs(**engine_arg_dict(config, device, memory, tokenizer))


def engine_arg_dict(config: VoxtralConfig, device: str, memory: dict, tokenizer: str | None = None) -> dict:
    """``engine_args`` as plain keywords (what vLLM's own server takes as flags, ``benchmarks/bench_gpu_peers.py``)."""
    graphs = config.encoder_cuda_graphs if device == "cuda" else 0
    extra = config.engine_kwargs
    args = dict(
        **config.model_dump(include=ENGINE_FIELDS),
        **({"tokenizer": tokenizer} if tokenizer else {}),
        generation_config="vllm",  # Mistral-format checkpoints have no generation_config.json
        limit_mm_per_prompt={"audio": 8},
        disable_log_stats=True,
        mm_processor_cache_gb=0,  # every clip differs: vLLM's cache of processed audio would only copy and hold it
        **memory,
        **_quantization_args(config.quantization),
    )
    window = {WINDOW_KEY: config.engine_window_s()} if config.engine_window_s() else {}
    additional = {ENCODER_GRAPHS_KEY: graphs, **window, **extra.get("additional_config", {})}
    return {**args, **extra, "additional_config": additional}


def windowed_tokenizer(model: str, window_s: int) -> tuple[str, float]:
    """A directory with the checkpoint's tekken.json padding audio to ``window_s`` instead of its own window, and the
    checkpoint's own window in seconds.

    The window lives in the tokenizer (``audio.chunk_length_s``): mistral_common pads each clip to a multiple of it,
    for this backend's prompts and for vLLM's audio processor alike, which counts a clip's audio tokens from its
    padded length; the engine core's encoder learns it from ``additional_config`` (``WINDOW_KEY``).
    """
    path = Path(model) / "tekken.json"
    if not path.is_file():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(model, "tekken.json"))
    tekken = json.loads(path.read_text())
    if not tekken.get("audio", {}).get("chunk_length_s"):
        raise ValueError(f"{model}'s tekken.json pads no audio into windows; voxtral.audio_window_s does not apply.")
    checkpoint_window_s = float(tekken["audio"]["chunk_length_s"])
    tekken["audio"]["chunk_length_s"] = float(window_s)
    directory = tempfile.mkdtemp(prefix="voxtral-tokenizer-")
    (Path(directory) / "tekken.json").write_text(json.dumps(tekken))
    return directory, checkpoint_window_s


def transcription_prompt(instruct, audio: np.ndarray, language: str | None, cache: dict) -> dict:
    """Voxtral's transcription prompt, as ``encode_transcription`` builds it, without a WAV round trip per request.

    The tokens depend only on the padded length and the language, so they are computed once per pair (on silence
    of that length) and kept in ``cache``. The audio goes to the engine as it is: vLLM's audio processor pads it with
    the same tokenizer (a copy of a whole window here would be a second one).
    """
    from mistral_common.protocol.transcription.request import TranscriptionRequest

    key = (padded_length(instruct.audio_encoder, len(audio)), language)
    if key not in cache:
        try:
            request = TranscriptionRequest(audio=wav_bytes(np.zeros(key[0], np.float32), subtype="FLOAT"), language=language)
        except ValueError as e:
            raise InvalidRequest(f"Invalid transcription request: {e}", param="language") from None
        cache[key] = instruct.encode_transcription(request).tokens
    return {"prompt_token_ids": cache[key], "multi_modal_data": {"audio": [(audio, SAMPLE_RATE)]}}


CHAT_PROMPTS_KEPT = 256


def chat_prompt(mistral, turns: list[ChatTurn], cache: dict) -> dict:
    """Voxtral's chat prompt, as mistral_common's ``encode_chat_completion`` builds it, without a WAV round trip per
    request.

    The tokens depend only on the turns' roles and text and on each clip's padded length, so they are computed once
    per such shape (on silence of those lengths) and kept in ``cache``, the latest ``CHAT_PROMPTS_KEPT`` of them
    (clients mostly send the same instruction). The clips go to the engine as they are, as in ``transcription_prompt``.
    """
    encoder = mistral.instruct_tokenizer.audio_encoder
    shape = tuple((t.role, tuple(p if isinstance(p, str) else padded_length(encoder, len(p)) for p in t.parts)) for t in turns)
    if shape not in cache:
        tokens = _encode_chat(mistral, shape)
        if len(cache) >= CHAT_PROMPTS_KEPT:
            cache.pop(next(iter(cache)))
        cache[shape] = tokens
    clips = [(p, SAMPLE_RATE) for t in turns for p in t.parts if isinstance(p, np.ndarray)]
    return {"prompt_token_ids": cache[shape], "multi_modal_data": {"audio": clips}}


def _encode_chat(mistral, shape: tuple) -> list[int]:
    """The tokens of a conversation's shape: each turn's role and parts, text or a clip's padded length."""
    from mistral_common.protocol.instruct.chunk import AudioChunk, TextChunk
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    messages = []
    for role, parts in shape:
        text = " ".join(p for p in parts if isinstance(p, str))
        if role in ("system", "developer"):
            messages.append(SystemMessage(content=text))
        elif role == "assistant":
            messages.append(AssistantMessage(content=text))
        else:
            silence = {n: AudioChunk(input_audio=wav_bytes(np.zeros(n, np.float32))) for n in parts if isinstance(n, int)}
            messages.append(UserMessage(content=[TextChunk(text=p) if isinstance(p, str) else silence[p] for p in parts if p != ""]))
    try:
        return mistral.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens
    except Exception as e:  # mistral_common's validation (message order, empty content, ...)
        raise InvalidRequest(f"Invalid conversation: {e}", param="messages") from None


def padded_length(encoder, samples: int) -> int:
    """The length mistral_common pads a clip of ``samples`` to (vLLM's audio processor pads alike): whole windows."""
    if not encoder.audio_config.chunk_length_s:
        return len(encoder.pad(np.zeros(samples, np.float32), SAMPLE_RATE))
    return encoder.next_multiple_of_chunk_frames(samples, SAMPLE_RATE)


def _quantization_args(quantization: str | None) -> dict:
    if quantization == "fp8-language-model":
        return {"quantization": "fp8_per_channel", "quantization_config": {"ignore": ["re:.*whisper_encoder.*"]}}
    return {"quantization": quantization}


def _device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

