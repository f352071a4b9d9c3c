"""Long audio end to end through the HTTP API: VAD chunks sent concurrently, against the same chunks one after another,
and against no chunking at all (the backend gets the whole file).

It starts Ray and Serve in this process on a free loopback port, deploys the app once per mode (each mode is the
configured app with its ``chunking`` section changed), posts a multi-minute recording assembled from the shared clips
with silences between them, and prints one JSON document (machine, config, command, timings, WER).

    # CPU, Whisper tiny.en (the committed result):
    python -m benchmarks.bench_long_audio --out benchmarks/results/long_audio_cpu.json
    # GPU, a full-size Voxtral-shaped model with random weights (108 tokens per chunk, as a real 30 s transcript):
    python -m benchmarks.bench_long_audio --config benchmarks/gpu_voxtral_args.yaml --minutes 10 \\
        --modes concurrent,sequential --max-tokens 108 --ignore-eos --out benchmarks/results/gpu/long_audio_gpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

from benchmarks.common import (
    REPO,
    SHARED_AUDIO,
    app_args,
    command_line,
    english_normaliser,
    load_average,
    machine_info,
    offline,
    read_manifest,
    write_result,
)
from benchmarks.local_serve import run_app, start_local_serve, stop_local_serve
from fixtures.assembled_audio import assemble

MODES = {
    "concurrent": {},
    "sequential": {"max_parallel_chunks": 1},
    "unchunked": {"enabled": False},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "serve_config_cpu.yaml"), help="a Serve config or a bare args YAML")
    p.add_argument("--app", default=None, help="the application in a Serve config (default: the first)")
    p.add_argument("--model", default=None, help="the model to deploy and request (default: the config's first)")
    p.add_argument("--minutes", type=float, default=5.0, help="about how long the recording is")
    p.add_argument("--audio-dir", default=str(SHARED_AUDIO))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--num-cpus", type=float, default=None, help="Ray's logical CPUs (default: the machine's, at least 8)")
    p.add_argument("--max-tokens", type=int, default=None, help="fixed output tokens per chunk (with --ignore-eos)")
    p.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-tokens (random-weight models)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    extra = {"max_tokens": str(args.max_tokens), "ignore_eos": "true"} if args.ignore_eos and args.max_tokens else {}

    offline()
    try:  # WER needs the test extra; a GPU machine without it still gets the timings
        import jiwer

        normalise = english_normaliser()
    except ImportError:
        jiwer = normalise = None

    from serve_app.config import AppConfig

    base = app_args(Path(args.config), args.app)
    config = AppConfig.model_validate(base)
    model = next(m for m in config.models if args.model in (None, m.name, *m.aliases))
    base["models"] = [m for m in base["models"] if m["name"] == model.name]
    base.pop("default_model", None)

    audio_dir = Path(args.audio_dir)
    manifest = read_manifest(audio_dir)
    one = assemble(audio_dir, manifest)
    rec = assemble(audio_dir, manifest, repeat=max(1, round(args.minutes * 60 / one.duration_s)))
    wav = rec.wav()
    reference = normalise(" ".join(rec.references)) if normalise else None

    result = {
        "benchmark": "long audio end to end over HTTP: VAD chunks concurrent vs sequential vs unchunked",
        "command": command_line(),
        "machine": machine_info(),
        "config": {"file": os.path.relpath(args.config, REPO), "model": model.model_dump(), "chunking": config.chunking.model_dump()},
        "audio": {
            "duration_s": round(rec.duration_s, 2),
            "speech_s": round(sum(e - s for s, e in rec.speech), 2),
            "clips": len(rec.speech),
            "made_of": "the English shared clips with 5-10 s of silence between them, repeated",
        },
        "vad": vad_cost(rec.audio, config.chunking),
        "modes": {},
    }

    # Every mode is deployed at once and the repeats interleave them, so load that comes and goes (a shared machine)
    # falls on all modes alike. Each mode has its own model replica: on a GPU, pass fewer --modes if memory is short.
    modes = args.modes.split(",")
    port = start_local_serve(num_cpus=args.num_cpus or max(os.cpu_count() or 1, 8))
    urls, walls, bodies = {}, {m: [] for m in modes}, {}
    try:
        for mode in modes:
            mode_args = {**base, "chunking": {**base.get("chunking", {}), **MODES[mode]}}
            run_app(mode_args, name=mode, route_prefix=f"/{mode}")
            urls[mode] = f"http://127.0.0.1:{port}/{mode}/v1/audio/transcriptions"
            post(urls[mode], (audio_dir / "en_jfk_inaugural_16k.wav").read_bytes(), model.name, extra)  # warm-up, loads the VAD
        for _ in range(args.repeats):
            for mode in modes:
                started = time.perf_counter()
                bodies[mode] = post(urls[mode], wav, model.name, extra)
                walls[mode].append(time.perf_counter() - started)
                print(mode, round(walls[mode][-1], 2), file=sys.stderr, flush=True)
    finally:
        stop_local_serve()
    for mode in modes:
        median = statistics.median(walls[mode])
        result["modes"][mode] = {
            "wall_s": [round(w, 3) for w in walls[mode]],
            "median_s": round(median, 3),
            "audio_s_per_s": round(rec.duration_s / median, 2),
            "segments": len(bodies[mode]["segments"]),
            "wer_percent": round(100 * jiwer.wer(reference, normalise(bodies[mode]["text"])), 2) if jiwer else None,
        }
    timed = result["modes"]
    for other in ("sequential", "unchunked"):
        if "concurrent" in timed and other in timed:
            result[f"speedup_concurrent_vs_{other}"] = round(timed[other]["median_s"] / timed["concurrent"]["median_s"], 2)
    result["machine"]["load_average_after"] = load_average()
    busiest = max(result["machine"]["load_average_before"][0], result["machine"]["load_average_after"][0])
    if busiest > (os.cpu_count() or 1):
        result["note"] = (
            f"Shared machine: the load average ({busiest}) was above the {os.cpu_count()} cores, so other processes "
            "took much of the CPU; concurrency can only show where cores are free."
        )
    write_result(args.out, result)


def post(url: str, data: bytes, model: str, extra: dict) -> dict:
    form = {"model": model, "response_format": "verbose_json", **extra}
    r = httpx.post(url, files={"file": ("recording.wav", data)}, data=form, timeout=3600)
    r.raise_for_status()
    return r.json()


def vad_cost(audio, chunking) -> dict:
    """What the VAD costs the ingress on this recording, first call (model load) and warm."""
    from serve_app.audio.vad import speech_chunks

    out = {"threads": chunking.vad_threads}
    for key in ("first_call", "warm"):
        started, cpu_started = time.perf_counter(), time.process_time()
        chunks = speech_chunks(audio, chunking)
        out[f"{key}_s"] = round(time.perf_counter() - started, 3)
        out[f"{key}_cpu_s"] = round(time.process_time() - cpu_started, 3)  # all threads: less sensitive to load
    out["chunks"] = len(chunks)
    out["mean_chunk_s"] = round(sum(c.duration_s for c in chunks) / max(1, len(chunks)), 2)
    per_10_min = 600 * 16000 / len(audio)
    out["warm_s_per_10_min"] = round(out["warm_s"] * per_10_min, 3)
    out["warm_cpu_s_per_10_min"] = round(out["warm_cpu_s"] * per_10_min, 3)
    return out


if __name__ == "__main__":
    main()
