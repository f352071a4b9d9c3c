"""Realtime sessions under load: K concurrent WebSocket sessions streaming speech with pauses at 1x speed.

Each session streams the English clips of the shared set, in its own order, with 1.5 s of silence between them (a
speaker pausing between sentences), as 24 kHz PCM in 100 ms appends, paced to the wall clock. Sessions start a
random fraction of a second apart. All of them go through the app's HTTP port on 127.0.0.1 (HAProxy in front of
the ingress, as `make serve` runs it), for ``--rounds`` rounds.

Measured, per round and overall:
* ``stopped_to_completed_s``: client time from ``speech_stopped`` to the utterance's ``completed`` (p50/p95);
* ``speech_end_to_completed_s``: from the moment the client had sent the true end of a clip's speech to the
  ``completed`` of the utterance that holds it (the end of speech as the speaker knows it; includes the silence the
  turn detector waits for, ``silence_duration_ms``);
* ``onset_to_speech_started_s``: from sending a clip's first speech to ``speech_started``;
* ``partial_lag_s``: the server's own histogram (audio received -> the delta that covers it), from Ray's metrics;
  ``partial_decode_s`` times every partial decode the same way, whether or not its text agreed enough to send
  (random weights never agree, so on them only this one fills); ``partials_skipped`` counts the previews a busy
  model refused (the session skips them; the next comes one interval later);
* ``sessions_sustained``: sessions whose every utterance completed and that saw no error;
* CPU seconds per session-second of the ingress and model replicas, the benchmark client's own cores (each client
  process's single event loop times its events, so near 1.0 its own lag enters the latencies: ``--client-processes``
  splits the sessions over more), the VAD's own cost per session (the streaming VAD and turn detector run in this
  process over the same stream, which also counts the turns a session's audio holds: the model decodes per
  utterance, one per ``pausing``, are what the engine is offered), and the ingress replica's RSS after each round.

    .venv/bin/python -m benchmarks.bench_realtime --sessions 4 --rounds 3 --out benchmarks/results/realtime_cpu.json

``--sessions 64,128,256`` runs each count in turn on the same app (``by_sessions``: one entry per count, its server
histograms counting only its own rounds).

``--config`` takes any Serve config (the GPU one too: the script runs there unchanged; ``--num-cpus`` sizes the
local cluster). Sessions and rounds are bounded by the arguments; traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks import local_serve  # noqa: F401  (sets Serve's environment before ray.serve is imported)
from benchmarks.common import (
    REPO,
    SHARED_AUDIO,
    PeriodicSampler,
    app_args,
    command_line,
    cpu_seconds,
    machine_info,
    percentile,
    read_manifest,
    replica_processes,
    write_result,
)
from fixtures.assembled_audio import assemble
from serve_app.audio.stream import StreamDecoder, StreamFormat, encode
from serve_app.audio.vad import WINDOW, speech_probabilities, speech_regions
from serve_app.config import RealtimeConfig
from serve_app.core.types import SAMPLE_RATE
from serve_app.realtime.client import ITEM, Run, stream
from serve_app.realtime.protocol import TurnDetection
from serve_app.realtime.turns import TurnDetector

CLIPS = [
    "en_jfk_inaugural_16k.wav", "en_ljspeech_LJ050-0131.wav", "en_fleurs_003.ogg", "en_pocketsphinx_goforward.wav",
    "en_librivox_sense_and_sensibility_0890.wav", "en_fleurs_001.ogg",
]  # fmt: skip
FORMAT = StreamFormat("audio/pcm", 24000)


def session_audio(audio_dir: Path, manifest: list[dict], seed: int):
    clips = CLIPS[:]
    random.Random(seed).shuffle(clips)
    return assemble(audio_dir, manifest, clips, gaps_s=[1.5], lead_s=1.0, tail_s=1.5)


def true_speech(audio) -> list[tuple[float, float]]:
    """Where each clip's speech starts and ends (seconds in the session's audio): the file path's VAD over the whole
    stream, 300 ms of silence splitting regions; a clip's first region start and last region end."""
    probs = speech_probabilities(audio.audio)
    regions = [(s * WINDOW / SAMPLE_RATE, e * WINDOW / SAMPLE_RATE) for s, e in speech_regions(probs, 0.5, 10, 3)]
    spans = []
    for lo, hi in audio.speech:
        inside = [r for r in regions if lo - 0.1 <= r[0] and r[1] <= hi + 0.1]
        if inside:
            spans.append((inside[0][0], inside[-1][1]))
    return spans


def utterance_latencies(run: Run, spans: list[tuple[float, float]]) -> dict[str, list[float]]:
    at = {}
    for t, e in run.events:
        at.setdefault((e["type"], e.get("item_id")), t)
    stopped = run.of("input_audio_buffer.speech_stopped")
    started = run.of("input_audio_buffer.speech_started")
    out = {"stopped_to_completed_s": [], "speech_end_to_completed_s": [], "onset_to_speech_started_s": []}
    for e in stopped:
        done = at.get((ITEM + "completed", e["item_id"]))
        if done is not None:
            out["stopped_to_completed_s"].append(done - at[(e["type"], e["item_id"])])
    for lo, hi in spans:
        holder = next((e for e in stopped if e["audio_end_ms"] >= hi * 1000), None)
        if holder and (ITEM + "completed", holder["item_id"]) in at:
            out["speech_end_to_completed_s"].append(at[(ITEM + "completed", holder["item_id"])] - run.sent_at(hi * 1000))
        first = next((e for e in started if e["audio_start_ms"] >= lo * 1000 - 1000), None)  # padding included
        if first:
            out["onset_to_speech_started_s"].append(at[(first["type"], first["item_id"])] - run.sent_at(lo * 1000))
    return out


def sustained(run: Run) -> bool:
    started = {e["item_id"] for e in run.of("input_audio_buffer.speech_started")}
    completed = {e["item_id"] for e in run.of(ITEM + "completed")}
    return bool(started) and started <= completed and not run.of("error") and not run.of(ITEM + "failed")


async def one_round(url: str, audios: list[np.ndarray], speed: float) -> list[Run]:
    async def session(audio: np.ndarray):
        await asyncio.sleep(random.random())
        return await stream(url, audio, fmt=FORMAT, speed=speed, settle_s=60)

    return await asyncio.gather(*(session(a) for a in audios))


def client_part(url: str, audios: list[np.ndarray], speed: float) -> tuple[list[Run], float]:
    """One client process's share of a round: its sessions' runs and the CPU seconds it spent on them."""
    started = time.process_time()
    runs = asyncio.run(one_round(url, audios, speed))
    return runs, time.process_time() - started


def client_round(pool, n: int, url: str, audios: list[np.ndarray], speed: float) -> tuple[list[Run], list[float]]:
    """A round's sessions split over ``n`` client processes of ``pool`` (None: this process alone), runs in the
    order of ``audios``, and each process's CPU seconds."""
    if pool is None:
        runs, cpu = client_part(url, audios, speed)
        return runs, [cpu]
    parts = [audios[len(audios) * i // n : len(audios) * (i + 1) // n] for i in range(n)]
    done = list(pool.map(client_part, [url] * n, parts, [speed] * n))
    return [r for runs, _ in done for r in runs], [cpu for _, cpu in done]


def vad_pass(audio: np.ndarray, pause_ms: int, settings: TurnDetection = TurnDetection()) -> tuple[float, dict[str, int]]:
    """One session's decoding, streaming VAD and turn detection (100 ms appends) as the server runs them: CPU seconds
    per audio second, and the turns found (each ``pausing`` starts a final decode early, each ``resumed`` drops it)."""
    decoder, detector = StreamDecoder(FORMAT), TurnDetector(settings, pause_ms)
    pieces = [encode(audio[i : i + 1600], FORMAT) for i in range(0, len(audio), 1600)]
    turns: dict[str, int] = {}
    started = time.process_time()
    for piece in pieces:
        for turn in detector.push(decoder.decode(piece)):
            turns[turn.kind] = turns.get(turn.kind, 0) + 1
    return (time.process_time() - started) / (len(audio) / SAMPLE_RATE), turns


SERVER_HISTOGRAMS = {
    "partial_lag_s (server)": "stt_realtime_partial_lag_seconds",
    "partial_decode_s (server)": "stt_realtime_partial_decode_seconds",
    "final_latency_s (server)": "stt_realtime_final_seconds",
}


def scrape(metrics_url: str, timeout_s: float = 10) -> list:
    """Ray's Prometheus endpoint, parsed: every sample (``name``, ``labels``, ``value``)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=timeout_s).read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: list, name: str, where=lambda labels: True) -> float:
    """A metric's samples in a scrape whose labels pass ``where``, summed (over replicas and callers)."""
    return sum(s.value for s in samples if s.name == name and where(s.labels))


def histogram_buckets(samples: list, name: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts in a scrape, summed over replicas."""
    buckets: dict[float, float] = {}
    for s in samples:
        if s.name == f"ray_{name}_bucket":
            bound = float(s.labels["le"])  # "+Inf" included
            buckets[bound] = buckets.get(bound, 0) + s.value
    return buckets


def histogram_summary(buckets: dict[float, float]) -> dict:
    """p50/p95 (bucket upper bounds, interpolated) and count of cumulative buckets."""
    if not buckets or not max(buckets.values()):
        return {"count": 0}
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]

    def quantile(q: float) -> float:
        target, previous_bound, previous_count = q * total, 0.0, 0.0
        for b in bounds:
            if buckets[b] >= target:
                if b == float("inf"):
                    return previous_bound
                share = (target - previous_count) / max(buckets[b] - previous_count, 1e-9)
                return previous_bound + share * (b - previous_bound)
            previous_bound, previous_count = b, buckets[b]
        return previous_bound

    return {"count": int(total), "p50": round(quantile(0.5), 3), "p95": round(quantile(0.95), 3)}


def server_histograms(samples: list) -> dict[str, dict[float, float]]:
    return {key: histogram_buckets(samples, name) for key, name in SERVER_HISTOGRAMS.items()}


def partials_skipped(samples: list) -> float:
    """Previews the model refused while busy (``stt_realtime_partials_skipped``) in a scrape, summed over replicas."""
    return total(samples, "ray_stt_realtime_partials_skipped_total")


def since(after: dict[str, dict[float, float]], before: dict[str, dict[float, float]]) -> dict[str, dict]:
    """Each histogram's summary over the observations between two scrapes."""
    return {
        key: histogram_summary({b: n - before.get(key, {}).get(b, 0.0) for b, n in buckets.items()})
        for key, buckets in after.items()
    }


SERVE_GAUGES = {  # Serve's own gauges of the model deployment: how full it was, and whether its callers waited
    "model_replica_ongoing": "serve_replica_processing_queries",
    "router_queued": "serve_deployment_queued_queries",
    "router_tasks_in_backoff": "serve_num_scheduling_tasks_in_backoff",
}


class GaugePeaks(PeriodicSampler):
    """The highest value each of ``SERVE_GAUGES`` showed for the model deployment (summed over its replicas and
    callers) while in use, scraped every second; Ray refreshes them every few seconds, so these are samples."""

    def __init__(self, metrics_url: str):
        self.metrics_url, self.peaks = metrics_url, {k: 0.0 for k in SERVE_GAUGES}

    def sample(self) -> None:
        try:
            samples = scrape(self.metrics_url, timeout_s=5)
        except OSError:
            return
        for key, name in SERVE_GAUGES.items():
            model = total(samples, f"ray_{name}", lambda labels: labels.get("deployment", "").startswith("model-"))
            self.peaks[key] = max(self.peaks[key], model)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3), "max": round(max(values), 3) if values else None}


def run(args) -> dict:
    from benchmarks.local_serve import free_port, run_app, start_local_serve, stop_local_serve

    manifest = read_manifest(args.audio_dir)
    audios = [session_audio(args.audio_dir, manifest, seed) for seed in range(max(args.sessions))]
    serve_args = app_args(args.config, args.app)
    realtime = serve_args.setdefault("realtime", {})
    if args.partial_interval is not None:
        realtime["partial_interval_s"] = args.partial_interval
    if args.early_final_pause_ms is not None:
        realtime["early_final_pause_ms"] = args.early_final_pause_ms
    realtime.update(json.loads(args.realtime_json))
    engine = json.loads(args.engine_json)
    for model in serve_args.get("models", []):
        if "voxtral" in model:
            model["voxtral"] |= engine
    metrics_port = free_port()
    port = start_local_serve(num_cpus=args.num_cpus, _metrics_export_port=metrics_port)
    pool = None
    try:
        run_app(serve_args)
        url = f"ws://127.0.0.1:{port}/v1/realtime?intent=transcription"
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        asyncio.run(one_round(url, [audios[0].audio], speed=0))  # warm: every path once
        time.sleep(args.metrics_wait_s)
        pool = client_pool(args.client_processes)
        steps = [measure(args, pool, url, audios[:k], metrics_url) for k in args.sessions]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        stop_local_serve()
    vad_cpu, turns = vad_pass(audios[0].audio, RealtimeConfig.model_validate(realtime).early_final_pause_ms)
    return {
        "benchmark": "realtime", "command": command_line(), "machine": machine_info(),
        "config": {"file": str(args.config), "sessions": args.sessions, "rounds": args.rounds, "speed": args.speed,
                   "format": f"{FORMAT.type} {FORMAT.rate} Hz, 100 ms appends", "realtime": realtime,
                   "engine_json": engine,
                   "models": [m.get("name") for m in serve_args.get("models", [])]},
        "vad_cpu_core_per_session": round(vad_cpu, 5),
        "session_audio_s": round(len(audios[0].audio) / SAMPLE_RATE, 1), "turns_per_session": turns,
        **(steps[0] if len(steps) == 1 else {"by_sessions": steps}),
    }  # fmt: skip


def client_pool(processes: int):
    """Client processes started before any round (spawned, so their start-up is not timed); None for one."""
    if processes <= 1:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    list(pool.map(time.sleep, [0.5] * processes))  # every worker up and imported
    return pool


def measure(args, pool, url: str, audios: list, metrics_url: str) -> dict:
    """``args.rounds`` rounds of ``len(audios)`` sessions on the app at ``url``; the server's histograms count only
    these rounds (scraped before and after, with Ray's export delay waited out)."""
    processes = replica_processes("stt")
    speech_spans = [true_speech(a) for a in audios]
    before = scrape(metrics_url)
    rounds, all_latencies, rss = [], {}, []
    for r in range(args.rounds):
        cpu_before, started = cpu_seconds(processes), time.monotonic()
        with GaugePeaks(metrics_url) as gauges:
            runs, client_cpu_s = client_round(pool, args.client_processes, url, [a.audio for a in audios], args.speed)
        wall = time.monotonic() - started
        client_cpu = max(client_cpu_s) / wall  # the busiest client process: its own events lag past ~1 core
        cpu = {k: (v - cpu_before[k]) / (wall * len(runs)) for k, v in cpu_seconds(processes).items()}
        latencies: dict[str, list[float]] = {}
        for run_, spans in zip(runs, speech_spans):
            for k, v in utterance_latencies(run_, spans).items():
                latencies.setdefault(k, []).extend(v)
                all_latencies.setdefault(k, []).extend(v)
        rss.append({k: round(sum(p.memory_info().rss for p in ps) / 2**20, 1) for k, ps in processes.items() if k == "ingress"})
        rounds.append({
            "round": r, "wall_s": round(wall, 1), "sessions_sustained": sum(map(sustained, runs)), "sessions": len(runs),
            "utterances": sum(len(x.of(ITEM + "completed")) for x in runs),
            "cpu_core_per_session": {k: round(v, 4) for k, v in cpu.items()}, "client_cpu_core": round(client_cpu, 3),
            "client_processes": len(client_cpu_s), "model_gauge_peaks": gauges.peaks,
            **{k: summary(v) for k, v in latencies.items()},
        })  # fmt: skip
    time.sleep(args.metrics_wait_s)  # Ray exports metrics every few seconds
    after = scrape(metrics_url)
    return {
        "sessions": len(audios),
        "overall": {k: summary(v) for k, v in all_latencies.items()},
        **since(server_histograms(after), server_histograms(before)),
        "partials_skipped (server)": int(partials_skipped(after) - partials_skipped(before)),
        "ingress_rss_mib_after_each_round": rss,
        "rounds": rounds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "serve_config_cpu.yaml")
    p.add_argument("--app", default=None, help="the application in --config (default: the first)")
    p.add_argument("--audio-dir", type=Path, default=SHARED_AUDIO)
    p.add_argument(
        "--sessions",
        type=lambda v: [int(k) for k in v.split(",")],
        default=[4],
        help="concurrent sessions; a comma list (64,128,256) runs each count in turn on the same app",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--speed", type=float, default=1.0, help="x real time")
    p.add_argument("--partial-interval", type=float, default=None, help="override realtime.partial_interval_s")
    p.add_argument("--early-final-pause-ms", type=int, default=None, help="override realtime.early_final_pause_ms")
    p.add_argument("--realtime-json", default="{}", help="merged into the realtime settings, e.g. '{\"max_sessions\": 128}'")
    p.add_argument("--engine-json", default="{}", help="merged into each Voxtral model's settings, e.g. '{\"scheduling_policy\": \"priority\"}'")
    p.add_argument("--num-cpus", type=float, default=None, help="the local cluster's logical CPUs (default: the machine's)")
    p.add_argument("--client-processes", type=int, default=1, help="split each round's sessions over this many client processes")
    p.add_argument("--metrics-wait-s", type=float, default=12.0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if max(args.sessions) > 512 or len(args.sessions) > 8 or args.rounds > 20 or not 1 <= args.client_processes <= 16:
        raise SystemExit("bounded: at most 512 sessions, 8 session counts, 20 rounds and 16 client processes")
    write_result(args.out, run(args))


if __name__ == "__main__":
    main()
