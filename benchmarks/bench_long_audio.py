"""Long audio end to end through the HTTP API: VAD chunks sent concurrently, against the same chunks one after another,
and against no chunking at all (the backend gets the whole file).

It starts Ray and Serve in this process on a free loopback port, deploys the app once per mode (each mode is the
configured app with its ``chunking`` section changed), posts a multi-minute recording assembled from the shared clips
with silences between them, and prints one JSON document (machine, config, command, timings, WER).

    # CPU, Whisper tiny.en (the committed result):
    PYTHONPATH=. python benchmarks/bench_long_audio.py --out benchmarks/results/long_audio_cpu.json
    # GPU, a full-size Voxtral-shaped model with random weights (108 tokens per chunk, as a real 30 s transcript):
    PYTHONPATH=. python benchmarks/bench_long_audio.py --config benchmarks/gpu_voxtral_args.yaml --minutes 10 \\
        --modes concurrent,sequential --max-tokens 108 --ignore-eos --out benchmarks/results/gpu/long_audio_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the recording builder shared with the tests

from assembled_audio import assemble  # noqa: E402
from local_serve import start_local_serve  # noqa: E402

AUDIO_DIR = ROOT.parent / "shared" / "audio"
MODES = {
    "concurrent": {},
    "sequential": {"max_parallel_chunks": 1},
    "unchunked": {"enabled": False},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "serve_config_cpu.yaml"), help="a Serve config or a bare args YAML")
    p.add_argument("--app", default=None, help="the application in a Serve config (default: the first)")
    p.add_argument("--model", default=None, help="the model to deploy and request (default: the config's first)")
    p.add_argument("--minutes", type=float, default=5.0, help="about how long the recording is")
    p.add_argument("--audio-dir", default=str(AUDIO_DIR))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--num-cpus", type=float, default=None, help="Ray's logical CPUs (default: the machine's, at least 8)")
    p.add_argument("--max-tokens", type=int, default=None, help="fixed output tokens per chunk (with --ignore-eos)")
    p.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-tokens (random-weight models)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    extra = {"max_tokens": str(args.max_tokens), "ignore_eos": "true"} if args.ignore_eos and args.max_tokens else {}

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:  # WER needs the test extra; a GPU machine without it still gets the timings
        import jiwer
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError:
        jiwer = EnglishTextNormalizer = None

    from serve_app.config import AppConfig

    base = app_args(Path(args.config), args.app)
    config = AppConfig.model_validate(base)
    model = next(m for m in config.models if args.model in (None, m.name, *m.aliases))
    base["models"] = [m for m in base["models"] if m["name"] == model.name]
    base.pop("default_model", None)

    audio_dir = Path(args.audio_dir)
    manifest = [json.loads(line) for line in (audio_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    one = assemble(audio_dir, manifest)
    rec = assemble(audio_dir, manifest, repeat=max(1, round(args.minutes * 60 / one.duration_s)))
    wav = rec.wav()
    normalise = EnglishTextNormalizer() if EnglishTextNormalizer else None
    reference = normalise(" ".join(rec.references)) if normalise else None

    result = {
        "benchmark": "long audio end to end over HTTP: VAD chunks concurrent vs sequential vs unchunked",
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "config": {"file": os.path.relpath(args.config, ROOT), "model": model.model_dump(), "chunking": config.chunking.model_dump()},
        "audio": {
            "duration_s": round(rec.duration_s, 2),
            "speech_s": round(sum(e - s for s, e in rec.speech), 2),
            "clips": len(rec.speech),
            "made_of": "the English shared clips with 5-10 s of silence between them, repeated",
        },
        "vad": vad_cost(rec.audio, config.chunking),
        "modes": {},
    }

    import ray
    from ray import serve

    from serve_app.app import build_app

    # Every mode is deployed at once and the repeats interleave them, so load that comes and goes (a shared machine)
    # falls on all modes alike. Each mode has its own model replica: on a GPU, pass fewer --modes if memory is short.
    modes = args.modes.split(",")
    port = start_local_serve(num_cpus=args.num_cpus or max(os.cpu_count() or 1, 8))
    urls, walls, bodies = {}, {m: [] for m in modes}, {}
    try:
        for mode in modes:
            mode_args = {**base, "chunking": {**base.get("chunking", {}), **MODES[mode]}}
            serve.run(build_app(mode_args), name=mode, route_prefix=f"/{mode}")
            urls[mode] = f"http://127.0.0.1:{port}/{mode}/v1/audio/transcriptions"
            post(urls[mode], (audio_dir / "en_jfk_inaugural_16k.wav").read_bytes(), model.name, extra)  # warm-up, loads the VAD
        for _ in range(args.repeats):
            for mode in modes:
                started = time.perf_counter()
                bodies[mode] = post(urls[mode], wav, model.name, extra)
                walls[mode].append(time.perf_counter() - started)
                print(mode, round(walls[mode][-1], 2), file=sys.stderr, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
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
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    busiest = max(result["machine"]["load_average_before"][0], result["machine"]["load_average_after"][0])
    if busiest > (os.cpu_count() or 1):
        result["note"] = (
            f"Shared machine: the load average ({busiest}) was above the {os.cpu_count()} cores, so other processes "
            "took much of the CPU; concurrency can only show where cores are free."
        )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


def app_args(path: Path, app: str | None) -> dict:
    """The ``args`` of an application in a Serve config, or the file itself when it is a bare args block."""
    doc = yaml.safe_load(path.read_text()) or {}
    if "applications" not in doc:
        return doc
    apps = doc["applications"]
    chosen = next((a for a in apps if app in (None, a.get("name"))), None)
    if chosen is None:
        raise SystemExit(f"no application {app!r} in {path}")
    return dict(chosen.get("args") or {})


def post(url: str, data: bytes, model: str, extra: dict) -> dict:
    form = {"model": model, "response_format": "verbose_json", **extra}
    r = httpx.post(url, files={"file": ("recording.wav", data)}, data=form, timeout=3600)
    r.raise_for_status()
    return r.json()


def vad_cost(audio, chunking) -> dict:
    """What the VAD costs the ingress on this recording, first call (model load) and warm."""
    from serve_app.vad import speech_chunks

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


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    gpus = []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        gpus = [g.strip() for g in out.stdout.splitlines() if g.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpus": gpus,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }



if __name__ == "__main__":
    main()
