"""Offline batch transcription with Ray Data: every audio file under a directory, glob, list file or manifest.

    python -m serve_app.batch INPUT... --output DIR [--config serve_config.yaml --model NAME] [--format srt]

A run is planned (config, model, inputs, output folder, what an earlier run already did), executed (the pipeline of
``serve_app.batch.pipeline``; each finished block becomes its subtitle files, then a part file) and summarised
(``transcripts.jsonl``, ``summary.json``). A file that cannot be read, decoded or transcribed becomes a row with
``error`` set; the job goes on. A killed job run again skips the files already done (see serve_app.batch.io).

Without RAY_ADDRESS (or --address) the job starts a local Ray instance; under ``ray job submit`` it joins the cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from serve_app.backends import check_options
from serve_app.batch.io import AUDIO_EXTENSIONS, Inputs, OutputDir, resolve_inputs
from serve_app.batch.pipeline import ActorPool, TranscriptionSettings, build_dataset
from serve_app.batch.progress import Progress
from serve_app.batch.rows import SUBTITLE_FORMATS, Subtitle, error_row, split_block
from serve_app.config import AppConfig, LimitsConfig, VoxtralModelConfig, WhisperModelConfig, load_serve_config
from serve_app.core.types import TranscribeOptions

NOT_FOUND = "not_found: the file does not exist"


@dataclass(frozen=True)
class Plan:
    """What a run will do, decided before any audio is read."""

    inputs: Inputs
    out: OutputDir
    limits: LimitsConfig
    settings: TranscriptionSettings
    pool: ActorPool
    todo: list[str]  # paths on the inputs' filesystem still to transcribe
    missing_rows: list[dict]  # error rows for listed files that are not there
    address: str | None
    quiet: bool

    @property
    def total(self) -> int:
        return len(self.inputs.paths) + len(self.inputs.missing)

    @property
    def skipped(self) -> int:
        """Files whose row an earlier run of this job wrote."""
        return self.total - len(self.todo) - len(self.missing_rows)


def plan(args: argparse.Namespace) -> Plan:
    config = load_serve_config(args.config, args.app) if args.config else AppConfig()
    model = config.model(args.model)
    options = TranscribeOptions(language=args.language, prompt=args.prompt, task=args.task)
    check_options(model.backend, options)  # a prompt Voxtral cannot take fails the job, not every file
    inputs = resolve_inputs(args.inputs, _extensions(args.extensions))
    out = OutputDir(args.output)
    out.claim({"model": model.name, "task": args.task, "language": args.language, "prompt": args.prompt})
    done = out.rows()
    if args.retry_errors:
        done = {p: r for p, r in done.items() if not r["error"]}
    return Plan(
        inputs=inputs,
        out=out,
        limits=config.limits,
        settings=TranscriptionSettings(model, config.chunking, options, tuple(dict.fromkeys(args.format))),
        pool=_actor_pool(args, model),
        todo=[p for p in inputs.paths if inputs.uri(p) not in done],
        missing_rows=[error_row(inputs.uri(p), NOT_FOUND) for p in inputs.missing if inputs.uri(p) not in done],
        address=args.address,
        quiet=args.quiet,
    )


def _extensions(flag: str | None) -> frozenset[str]:
    if not flag:
        return AUDIO_EXTENSIONS
    return frozenset(f".{e.lstrip('.').lower()}" for e in flag.split(","))


def _actor_pool(args: argparse.Namespace, model: WhisperModelConfig | VoxtralModelConfig) -> ActorPool:
    num_gpus = args.num_gpus if args.num_gpus is not None else model.deployment.ray_actor_options.get("num_gpus", 0)
    return ActorPool(
        min_actors=args.min_actors,
        max_actors=args.max_actors,
        num_cpus=args.num_cpus,
        num_gpus=num_gpus or None,
        batch_size=args.batch_size,
        decode_cpus=args.decode_cpus,
    )


def execute(plan: Plan) -> Progress:
    """Transcribes what is left; each finished block becomes its subtitle files, then a part file."""
    progress = Progress(plan.total, plan.skipped, plan.quiet)
    if plan.missing_rows:
        plan.out.write_part(plan.missing_rows)
        progress.update(plan.missing_rows)
    if plan.todo:
        with ray_session(plan.address):
            dataset = build_dataset(plan.inputs, plan.todo, plan.limits, plan.settings, plan.pool)
            root = plan.inputs.root  # a common path over every input: once per job, not once per file
            for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                rows, subtitles = split_block(block)
                write_subtitles(plan.out, subtitles, plan.inputs.prefix, root)
                plan.out.write_part(rows)  # after the subtitles: a part on disk means everything for its files is there
                progress.update(rows)
    progress.close()
    return progress


def write_subtitles(out: OutputDir, subtitles: list[Subtitle], prefix: str, root: str) -> None:
    """Each at its input's path below ``root``, the inputs' common folder, with the format as a further suffix."""
    for subtitle in subtitles:
        relative = posixpath.relpath(subtitle.path[len(prefix) :], root)
        out.write_subtitle(f"{relative}.{subtitle.fmt}", subtitle.text)


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Joins the cluster named by --address or RAY_ADDRESS (as under ``ray job submit``), else starts a local one;
    shuts down only a Ray this job started."""
    import ray

    started = not ray.is_initialized()
    if started:
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            ray.init(address="local", include_dashboard=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # our own bar counts files and audio hours
        yield
    finally:
        if started:
            ray.shutdown()


def summarise(plan: Plan, progress: Progress) -> dict[str, Any]:
    """Writes ``transcripts.jsonl`` (the rows of this run and earlier ones) and ``summary.json``; returns the summary."""
    rows = plan.out.rows()
    final = plan.out.write_final(rows)
    wall_s = progress.wall_s()
    audio_s = progress.audio_s
    summary = {
        "model": plan.settings.model.name,
        "files": len(rows),
        "files_this_run": progress.files,
        "skipped_done": plan.skipped,
        "errors": sum(1 for r in rows.values() if r["error"]),
        "errors_this_run": progress.errors,
        "audio_hours": round(sum(r["duration"] or 0.0 for r in rows.values() if not r["error"]) / 3600, 4),
        "audio_hours_this_run": round(audio_s / 3600, 4),
        "wall_s": round(wall_s, 2),
        "rtf": round(wall_s / audio_s, 4) if audio_s else None,
        "audio_hours_per_hour": round(audio_s / wall_s, 2) if audio_s else None,
        "output": final,
    }
    plan.out.write_json("summary.json", summary)
    return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
    job = plan(args)
    return summarise(job, execute(job))


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


if __name__ == "__main__":  # `python -m serve_app.batch.job`, as older scripts call it; serve_app.batch is the same
    main()
