"""Batch throughput: `python -m serve_app.batch.job` against a plain sequential faster-whisper loop, same files, one run.

    python -m benchmarks.bench_batch --copies 3 --out benchmarks/results/batch_cpu.json

Both use the embedded whisper tiny.en, int8, beam 5, no VAD, the same temperature fallback. The loop is the simplest
fast program: one WhisperModel using every core (cpu_threads = cores), faster-whisper decoding each file itself.
The batch job is measured end to end as a user runs it: a fresh process that starts a local Ray instance, loads
the model in its actors and writes JSONL. Throughput is audio hours per wall-clock hour (1 / RTF).

Both run as many compute threads as there are cores (default batch arguments: one actor; the config's
num_workers 2 x cpu_threads 1): on a machine shared with other jobs, a side with more threads would win a larger
share of the CPU rather than do the work better. Accuracy: corpus WER of each side on the English clips with a
reference (Whisper's English normaliser), which should match.

The clips of /work/shared/audio are linked (not copied) --copies times into a temp folder under distinct names, so
the batch has more than a few minutes of audio to amortise its start. Other jobs may share the machine: the load
average before and after each part is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    OFFLINE_ENV,
    REPO,
    SHARED_AUDIO,
    command_line,
    english_normaliser,
    machine_info,
    read_manifest,
    write_result,
)
from serve_app.batch.io import AUDIO_EXTENSIONS
from serve_app.config import WhisperConfig


def english_wer(texts: dict[str, str], manifest: dict[str, dict]) -> float:
    """Corpus WER over the English clips with references; files are named "<copy>_<clip>"."""
    import jiwer

    normalize = english_normaliser()
    refs, hyps = [], []
    for path, text in sorted(texts.items()):
        clip = manifest[Path(path).name.split("_", 1)[1]]
        if clip["language"] == "en" and clip["transcript"] != "no reference":
            refs.append(normalize(clip["transcript"]))
            hyps.append(normalize(text or ""))
    return round(jiwer.wer(refs, hyps), 4)


def link_files(audio_dir: Path, copies: int, into: Path) -> list[Path]:
    clips = sorted(p for p in audio_dir.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
    files = []
    for i in range(copies):
        for clip in clips:
            link = into / f"{i}_{clip.name}"
            link.symlink_to(clip)
            files.append(link)
    return files


def sequential(files: list[Path], config: WhisperConfig) -> dict:
    from faster_whisper import WhisperModel

    load = os.getloadavg()[0]
    started = time.perf_counter()
    model = WhisperModel(config.model_path(), device="cpu", compute_type=config.compute_type, cpu_threads=os.cpu_count())
    audio_s, texts = 0.0, {}
    for path in files:
        segments, info = model.transcribe(str(path), beam_size=config.beam_size, vad_filter=config.vad_filter)
        texts[str(path)] = " ".join(s.text.strip() for s in segments if s.text.strip())
        audio_s += info.duration
    wall_s = time.perf_counter() - started
    return {
        "files": len(files),
        "audio_hours": round(audio_s / 3600, 4),
        "wall_s": round(wall_s, 2),
        "rtf": round(wall_s / audio_s, 4),
        "audio_hours_per_hour": round(audio_s / wall_s, 2),
        "loadavg_1m_before_after": [load, os.getloadavg()[0]],
        "_texts": texts,
    }


def batch(folder: Path, output: Path, extra: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), **OFFLINE_ENV)
    command = [sys.executable, "-m", "serve_app.batch.job", str(folder), "-o", str(output), "--quiet", *extra]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (output / "transcripts.jsonl").read_text().splitlines()]
    audio_s = summary["audio_hours_this_run"] * 3600
    return {
        "files": summary["files_this_run"],
        "errors": summary["errors_this_run"],
        "audio_hours": summary["audio_hours_this_run"],
        "wall_s": round(wall_s, 2),  # the whole process: Ray start, actor start, model load, shutdown
        "wall_s_in_job": summary["wall_s"],
        "rtf": round(wall_s / audio_s, 4),
        "audio_hours_per_hour": round(audio_s / wall_s, 2),
        "loadavg_1m_before_after": [load, os.getloadavg()[0]],
        "_texts": {r["path"]: r["text"] for r in rows},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audio-dir", default=str(SHARED_AUDIO))
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--batch-args", default="--max-actors 1", help="extra arguments for serve_app.batch.job")
    p.add_argument("--rounds", type=int, default=2, help="rounds of both sides, alternating which goes first")
    p.add_argument("--out", help="also write the result JSON here")
    args = p.parse_args()

    machine = machine_info()
    manifest = {m["file"]: m for m in read_manifest(Path(args.audio_dir))}
    runs: dict[str, list[dict]] = {"sequential_loop": [], "batch": []}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp) / "audio"
        folder.mkdir()
        files = link_files(Path(args.audio_dir), args.copies, folder)
        for i in range(args.rounds):
            # Alternate which side goes first: the load other jobs put on the machine drifts.
            order = ["sequential_loop", "batch"] if i % 2 == 0 else ["batch", "sequential_loop"]
            for side in order:
                if side == "batch":
                    run = batch(folder, Path(tmp) / f"out-{i}", args.batch_args.split())
                else:
                    run = sequential(files, WhisperConfig())
                run["english_wer"] = english_wer(run.pop("_texts"), manifest)
                runs[side].append(run)
                print(side, json.dumps(run), file=sys.stderr, flush=True)

    def overall(side: str) -> dict:
        audio_h = sum(r["audio_hours"] for r in runs[side])
        wall_s = sum(r["wall_s"] for r in runs[side])
        return {"audio_hours": round(audio_h, 4), "wall_s": round(wall_s, 2), "audio_hours_per_hour": round(audio_h * 3600 / wall_s, 2), "rounds": runs[side]}

    result = {
        "benchmark": "batch transcription throughput vs a sequential faster-whisper loop",
        "machine": machine,
        "shared_machine_note": "other helpers' tests and servers ran on the same 2 cores during this run; see the load averages",
        "model": {"name": "whisper-tiny.en (embedded)", **WhisperConfig().model_dump(exclude={"model", "download_root"})},
        "command": command_line(),
        "inputs": {"clips": len(files) // args.copies, "copies": args.copies, "files": len(files), "rounds": args.rounds},
        "batch_args": args.batch_args,
        "sequential_loop": overall("sequential_loop"),
        "batch": overall("batch"),
        "sequential_loop_cpu_threads": os.cpu_count(),
    }
    result["speedup"] = round(result["batch"]["audio_hours_per_hour"] / result["sequential_loop"]["audio_hours_per_hour"], 3)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
