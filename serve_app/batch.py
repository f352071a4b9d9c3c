"""Offline batch transcription with Ray Data: every audio file under a directory, glob, list file or manifest.

    python -m serve_app.batch INPUT... --output DIR [--config serve_config.yaml --model NAME] [--format srt]

Pipeline: read the files (``read_binary_files``) -> decode each with ``decode_audio`` (the HTTP path's decoder and
limits) in Ray tasks -> transcribe in an autoscaling pool of actors, each holding one backend built by
``make_backend`` behind the same ``Transcriber`` the HTTP path uses -> one JSONL row per file (and, on request, an
srt/vtt file per file rendered by ``serve_app.formats``). A file that cannot be read, decoded or transcribed becomes
a row with ``error`` set; the job goes on. A killed job run again skips the files already done (see batch_io).

Without RAY_ADDRESS (or --address) the job starts a local Ray instance; under ``ray job submit`` it joins the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import posixpath
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa

from .audio import decode_audio
from .backends import make_backend
from .batch_io import AUDIO_EXTENSIONS, Inputs, OutputDir, resolve_inputs
from .config import AppConfig, ChunkingConfig, LimitsConfig, VoxtralModelConfig, WhisperModelConfig, load_serve_config
from .errors import APIError
from .formats import RENDERERS
from .transcribe import Transcriber
from .transcript import Segment, TranscribeOptions, Transcript, duration_of

SEGMENT = pa.struct([("id", pa.int64()), ("start", pa.float64()), ("end", pa.float64()), ("text", pa.string())])
ROW_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("duration", pa.float64()),
        ("segments", pa.list_(SEGMENT)),
        ("error", pa.string()),
    ]
)
SUBTITLE_FORMATS = ("srt", "vtt")


def describe(e: BaseException) -> str:
    if isinstance(e, APIError):
        return f"{e.code or e.type}: {e.message}"
    return f"{type(e).__name__}: {e}"


def error_row(path: str, error: str, duration: float | None = None) -> dict:
    return {"path": path, "text": None, "language": None, "duration": duration, "segments": [], "error": error}


def transcript_row(path: str, t: Transcript) -> dict:
    segments = [{"id": s.id, "start": s.start, "end": s.end, "text": s.text} for s in t.segments]
    return {"path": path, "text": t.text, "language": t.language, "duration": t.duration, "segments": segments, "error": None}


def row_transcript(row: dict) -> Transcript:
    return Transcript(row["text"], row["language"], row["duration"], [Segment(**s) for s in row["segments"]])


def decode_row(row: dict, *, prefix: str, limits: LimitsConfig) -> dict:
    """A Ray Data map: file bytes -> 16 kHz mono float32, or an empty array and the reason it failed."""
    path = prefix + row["path"]
    try:
        audio = decode_audio(
            row["bytes"], filename=path, max_duration_s=limits.max_duration_s, min_duration_s=limits.min_duration_s
        )
        return {"path": path, "audio": audio, "error": ""}
    except Exception as e:  # noqa: BLE001 - any failure is this file's error row, never the job's end
        return {"path": path, "audio": np.zeros(0, np.float32), "error": describe(e)}


class TranscribeActor:
    """One loaded model in a Ray Data actor. ``__call__`` is async: Ray Data runs it on the actor's own persistent
    event loop, so an async backend (whisper's thread pool, vLLM's AsyncLLM) keeps its loop between batches and
    the files of a batch are transcribed concurrently."""

    def __init__(
        self,
        model: WhisperModelConfig | VoxtralModelConfig,
        chunking: ChunkingConfig,
        options: TranscribeOptions,
        gpu_share: float | None,
    ):
        self.transcriber = Transcriber(make_backend(model, gpu_share=gpu_share), chunking)
        self.options = options

    async def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = await asyncio.gather(*map(self._row, batch["path"], batch["audio"], batch["error"]))
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)

    async def _row(self, path: str, audio: np.ndarray, error: str) -> dict:
        if error:
            return error_row(path, error)
        try:
            return transcript_row(path, await self.transcriber.transcribe(audio, self.options))
        except Exception as e:  # noqa: BLE001
            return error_row(path, describe(e), duration_of(audio))


def build_dataset(
    inputs: Inputs,
    paths: list[str],
    model: WhisperModelConfig | VoxtralModelConfig,
    limits: LimitsConfig,
    chunking: ChunkingConfig,
    args: argparse.Namespace,
):
    """read (one file a block) -> decode -> transcribe in an autoscaling actor pool; rows in ROW_SCHEMA."""
    import ray

    num_gpus = args.num_gpus if args.num_gpus is not None else model.deployment.ray_actor_options.get("num_gpus", 0)
    options = TranscribeOptions(language=args.language, prompt=args.prompt, task=args.task)
    ds = ray.data.read_binary_files(
        paths,
        filesystem=inputs.filesystem,
        include_paths=True,
        override_num_blocks=len(paths),  # one file a block: a killed job loses at most the blocks in flight
        num_cpus=args.decode_cpus,
    )
    ds = ds.map(decode_row, fn_kwargs={"prefix": inputs.prefix, "limits": limits}, num_cpus=args.decode_cpus)
    return ds.map_batches(
        TranscribeActor,
        fn_constructor_kwargs={"model": model, "chunking": chunking, "options": options, "gpu_share": num_gpus or None},
        batch_size=args.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(
            min_size=args.min_actors, max_size=args.max_actors, max_concurrent_calls_per_actor=2
        ),
        num_cpus=args.num_cpus,
        num_gpus=num_gpus or None,
    )


class Progress:
    """Files done, audio hours done and the rate (audio hours per wall-clock hour), on stderr."""

    def __init__(self, total: int, done: int, quiet: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, unit="file", disable=quiet, file=sys.stderr, dynamic_ncols=True)
        self.started = time.perf_counter()
        self.files = self.errors = 0
        self.audio_s = 0.0

    def update(self, rows: list[dict]) -> None:
        self.files += len(rows)
        self.errors += sum(1 for r in rows if r["error"])
        self.audio_s += sum(r["duration"] or 0.0 for r in rows if not r["error"])
        rate = self.audio_s / max(self.wall_s(), 1e-9)
        self.bar.set_postfix_str(f"audio {self.audio_s / 3600:.3f} h, {rate:.1f} audio-h/h, {self.errors} errors")
        self.bar.update(len(rows))

    def wall_s(self) -> float:
        return time.perf_counter() - self.started

    def close(self) -> None:
        self.bar.close()


def write_subtitles(out: OutputDir, rows: list[dict], prefix: str, root: str, formats: list[str], task: str) -> None:
    """One file per transcribed row and format, at its path below ``root``, the inputs' common folder."""
    for fmt in formats:
        for row in rows:
            if not row["error"]:
                relative = posixpath.relpath(row["path"][len(prefix) :], root)
                out.write_subtitle(f"{relative}.{fmt}", RENDERERS[fmt](row_transcript(row), task)[0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = load_serve_config(args.config, args.app) if args.config else AppConfig()
    model = config.model(args.model)
    extensions = frozenset(f".{e.lstrip('.').lower()}" for e in args.extensions.split(",")) if args.extensions else AUDIO_EXTENSIONS
    inputs = resolve_inputs(args.inputs, extensions)
    out = OutputDir(args.output)
    out.claim({"model": model.name, "task": args.task, "language": args.language, "prompt": args.prompt})

    done = out.rows()
    if args.retry_errors:
        done = {p: r for p, r in done.items() if not r["error"]}
    todo = [p for p in inputs.paths if inputs.uri(p) not in done]
    missing = [error_row(inputs.uri(p), "not_found: the file does not exist") for p in inputs.missing if inputs.uri(p) not in done]
    skipped = len(inputs.paths) + len(inputs.missing) - len(todo) - len(missing)

    progress = Progress(len(inputs.paths) + len(inputs.missing), skipped, args.quiet)
    if missing:
        out.write_part(missing)
        progress.update(missing)
    if todo:
        import ray

        started_ray = _init_ray(args.address)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            dataset = build_dataset(inputs, todo, model, config.limits, config.chunking, args)
            root = inputs.root  # a common path over every input: once per job, not once per file
            for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                rows = block.to_pylist()
                write_subtitles(out, rows, inputs.prefix, root, args.format, args.task)
                out.write_part(rows)  # after the subtitles: a part on disk means everything for its files is there
                progress.update(rows)
        finally:
            if started_ray:
                ray.shutdown()
    progress.close()

    rows = out.rows()
    final = out.write_final(rows)
    wall_s = progress.wall_s()
    summary = {
        "model": model.name,
        "files": len(rows),
        "files_this_run": progress.files,
        "skipped_done": skipped,
        "errors": sum(1 for r in rows.values() if r["error"]),
        "errors_this_run": progress.errors,
        "audio_hours": round(sum(r["duration"] or 0.0 for r in rows.values() if not r["error"]) / 3600, 4),
        "audio_hours_this_run": round(progress.audio_s / 3600, 4),
        "wall_s": round(wall_s, 2),
        "rtf": round(wall_s / progress.audio_s, 4) if progress.audio_s else None,
        "audio_hours_per_hour": round(progress.audio_s / wall_s, 2) if progress.audio_s else None,
        "output": final,
    }
    out.write_json("summary.json", summary)
    return summary


def _init_ray(address: str | None) -> bool:
    """Join the cluster named by --address or RAY_ADDRESS (as under ``ray job submit``), else start a local one."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", include_dashboard=False)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="stt-batch", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="directories, globs, list files (.txt) or manifests (.jsonl); local or any pyarrow URI")
    p.add_argument("-o", "--output", required=True, help="output folder (local or a pyarrow URI such as s3://bucket/run1)")
    p.add_argument("--config", help="Serve config YAML to take the model from (default: the embedded whisper tiny.en)")
    p.add_argument("--app", help="application name in --config, when it holds several")
    p.add_argument("--model", help="model name or alias in the config (default: its default model)")
    p.add_argument("--format", action="append", choices=SUBTITLE_FORMATS, default=[], help="also write a subtitle file per input (repeatable)")
    p.add_argument("--language", help="spoken language, e.g. en (default: detect)")
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    p.add_argument("--prompt", help="initial prompt for every file")
    p.add_argument("--extensions", help="comma-separated extensions to take from directories (default: common audio/video)")
    p.add_argument("--retry-errors", action="store_true", help="transcribe again the files whose earlier row is an error")
    p.add_argument("--min-actors", type=int, default=1, help="transcriber actors kept up")
    p.add_argument("--max-actors", type=int, default=None, help="transcriber actors at most (default: as many as the cluster can hold)")
    p.add_argument("--num-cpus", type=float, default=0.5, help="logical CPUs reserved per transcriber actor (fractional)")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per actor (default: the model's ray_actor_options.num_gpus)")
    p.add_argument("--decode-cpus", type=float, default=0.5, help="logical CPUs per read+decode task")
    p.add_argument("--batch-size", type=int, default=4, help="files per actor call, transcribed concurrently")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv))), flush=True)


if __name__ == "__main__":
    main()
