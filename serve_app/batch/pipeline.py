"""The Ray Data pipeline of a batch job: read each file -> decode it in Ray tasks -> transcribe and render it in an
autoscaling pool of actors, each holding one backend behind the ``Transcriber`` the HTTP path uses."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from serve_app.audio.decode import decode_audio
from serve_app.backends import make_backend
from serve_app.batch.io import Inputs
from serve_app.batch.rows import BLOCK_SCHEMA, error_row, error_text, transcribed_row
from serve_app.config import ChunkingConfig, LimitsConfig, VoxtralModelConfig, WhisperModelConfig
from serve_app.core.transcriber import Transcriber
from serve_app.core.types import TranscribeOptions, duration_of


@dataclass(frozen=True)
class TranscriptionSettings:
    """What every actor does to a file: the model, how long audio is chunked, the options, the subtitles wanted."""

    model: WhisperModelConfig | VoxtralModelConfig
    chunking: ChunkingConfig
    options: TranscribeOptions
    subtitle_formats: tuple[str, ...] = ()


@dataclass(frozen=True)
class ActorPool:
    """How many transcriber actors, what each reserves, and how files are fed to them."""

    min_actors: int = 1
    max_actors: int | None = None  # None: as many as the cluster holds
    num_cpus: float = 0.5
    num_gpus: float | None = None  # the GPU share of each actor; Voxtral sizes its KV cache from it
    batch_size: int = 4
    decode_cpus: float = 0.5


def decode_row(row: dict, *, prefix: str, limits: LimitsConfig) -> dict:
    """A Ray Data map: file bytes -> 16 kHz mono float32, or an empty array and the reason it failed."""
    path = prefix + row["path"]
    try:
        audio = decode_audio(
            row["bytes"], filename=path, max_duration_s=limits.max_duration_s, min_duration_s=limits.min_duration_s
        )
        return {"path": path, "audio": audio, "error": ""}
    except Exception as e:  # noqa: BLE001 - any failure is this file's error row, never the job's end
        return {"path": path, "audio": np.zeros(0, np.float32), "error": error_text(e)}


class TranscribeActor:
    """One loaded model in a Ray Data actor. ``__call__`` is async: Ray Data runs it on the actor's own persistent
    event loop, so an async backend (whisper's thread pool, vLLM's AsyncLLM) keeps its loop between batches and
    the files of a batch are transcribed concurrently."""

    def __init__(self, settings: TranscriptionSettings, gpu_share: float | None = None):
        self.transcriber = Transcriber(make_backend(settings.model, gpu_share=gpu_share), settings.chunking)
        self.settings = settings

    async def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = await asyncio.gather(*map(self.block_row, batch["path"], batch["audio"], batch["error"]))
        return pa.Table.from_pylist(rows, schema=BLOCK_SCHEMA)

    async def block_row(self, path: str, audio: np.ndarray, error: str) -> dict:
        """One decoded file's row in BLOCK_SCHEMA: transcribed with its subtitles, or an error row."""
        if error:
            return error_row(path, error)
        options = self.settings.options
        try:
            transcript = await self.transcriber.transcribe(audio, options)
            return transcribed_row(path, transcript, self.settings.subtitle_formats, options.task)
        except Exception as e:  # noqa: BLE001 - this file's error row, not the job's end
            return error_row(path, error_text(e), duration_of(audio))


def build_dataset(inputs: Inputs, paths: list[str], limits: LimitsConfig, settings: TranscriptionSettings, pool: ActorPool):
    """read (one file a block) -> decode -> transcribe in an autoscaling actor pool; rows in BLOCK_SCHEMA."""
    import ray

    ds = ray.data.read_binary_files(
        paths,
        filesystem=inputs.filesystem,
        include_paths=True,
        override_num_blocks=len(paths),  # one file a block: a killed job loses at most the blocks in flight
        num_cpus=pool.decode_cpus,
    )
    ds = ds.map(decode_row, fn_kwargs={"prefix": inputs.prefix, "limits": limits}, num_cpus=pool.decode_cpus)
    return ds.map_batches(
        TranscribeActor,
        fn_constructor_kwargs={"settings": settings, "gpu_share": pool.num_gpus or None},
        batch_size=pool.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(
            min_size=pool.min_actors, max_size=pool.max_actors, max_concurrent_calls_per_actor=2
        ),
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus or None,
    )
