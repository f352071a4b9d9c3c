"""GPU benchmarks of the Voxtral path through the project's own Serve app (and the engine directly), as JSON.

    # the shared card: a neighbour holds 50 GiB and churns 4 GiB while our app starts at num_gpus 0.15 and serves
    python -m benchmarks.bench_gpu shared-card --model-dir /tmp/voxtral-full --audio-dir .bench-audio --out out.json
    # speed: latency per clip length at several concurrencies, throughput, GPU memory; HTTP and engine-direct
    python -m benchmarks.bench_gpu speed --preset default --engine-direct --model-dir ... --audio-dir ... --out ...

The model is a full-size Voxtral-Mini-3B-shaped checkpoint (``python -m fixtures.voxtral_checkpoint DIR --size full``)
served with ``load_format: dummy``; output lengths are fixed (``ignore_eos``) so random weights cost what a real
transcript of that length costs. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from unittest.mock import patch

import numpy as np

from benchmarks.common import REPO, PeriodicSampler, command_line, machine_info, serve_application, write_result
from benchmarks.loadgen import ClipMaker, http_session, prepared, run_http, run_load, speech_pool, upload_form
from benchmarks.local_serve import run_app, start_local_serve  # before ray.serve: it applies Serve's settings
from serve_app.audio.wav import wav_bytes
from serve_app.backends import warm_up
from serve_app.ray_env import apply_serve_env

RAY_LOGS = Path("/tmp/ray/session_latest/logs")  # the local Ray this benchmark starts
# Clip length -> output tokens of a real transcript of that length (the anchors' cases).
CASES = {3: 23, 10: 38, 30: 108}
BF16 = dict(enforce_eager=False, max_num_seqs=48, max_num_batched_tokens=4096, enable_prefix_caching=False, encoder_cuda_graphs=0)
PRESETS = {
    # The seed's settings: eager mode, 4 sequences.
    # Eager, so none of the product reserve's growth for CUDA graphs: the 2.5 GiB that the H100's share was run with
    # before the reserve rose to 2.75 (NOTES-gpu.md, ninth session) leaves its bf16 weights a KV cache of 0.67 GiB.
    "seed": dict(enforce_eager=True, max_num_seqs=4, encoder_cuda_graphs=0, activation_reserve_bytes=5 << 29),
    # The product defaults (serve_config.yaml): FP8 language model, the audio encoder in CUDA graphs, 80 sequences,
    # and steps of up to 512 tokens (a clip's prefill) replayed as CUDA graphs.
    "default": {**BF16, "quantization": "fp8-language-model", "max_num_seqs": 80, "encoder_cuda_graphs": 4,
                "max_cudagraph_capture_size": 512},  # fmt: skip
    # The defaults of the first two GPU sessions: bf16, eager audio encoder, 48 sequences.
    "bf16": BF16,
    # FP8 in every linear layer, the audio encoder's included (per-tensor scales).
    "fp8": {**BF16, "quantization": "fp8", "max_num_seqs": 80},
    # More clips per engine step (36 -> 43 requests/s on 3 s clips), but its activations pass the bf16 share.
    "bf16-8192": {**BF16, "max_num_batched_tokens": 8192},
}


def voxtral_model(model_dir: str, preset: str, replicas: int = 1, max_ongoing: int | None = None, num_gpus: float = 0.15,
                  overrides: dict | None = None) -> dict:  # fmt: skip
    engine = PRESETS[preset] | (overrides or {})
    return {
        "name": "voxtral",
        "backend": "voxtral",
        "voxtral": {"model": model_dir, "load_format": "dummy", "max_model_len": 4096, **engine},
        "deployment": {
            "num_replicas": replicas,
            # Like vLLM's own server, the seed queued every request in the engine; our replicas hold two batches.
            "max_ongoing_requests": max_ongoing or max(64, 2 * engine["max_num_seqs"]),
            "max_queued_requests": 1024,
            "ray_actor_options": {"num_gpus": num_gpus, "num_cpus": 2 if num_gpus else 0.5},
        },
    }


def product_app() -> dict:
    return serve_application(REPO / "serve_config.yaml", "stt")


def product_chunking() -> dict:
    """serve_config.yaml's chunking block, so the HTTP path is measured with the production speech check."""
    return product_app()["args"].get("chunking", {})


def apply_product_env() -> None:
    """serve_config.yaml's runtime_env variables (vLLM settings) for this process, the Ray it starts and the engines
    it spawns, so both paths run as the product does; variables set already win."""
    for key, value in product_app().get("runtime_env", {}).get("env_vars", {}).items():
        os.environ.setdefault(key, str(value))


def gpu_memory() -> dict:
    try:
        return _nvidia_smi()
    except (OSError, ValueError) as e:
        return {"error": f"nvidia-smi: {e}"}


def _nvidia_smi() -> dict:
    q = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True, text=True,
    ).stdout.strip()
    apps = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True, text=True,
    ).stdout.strip()
    name, used, total = [x.strip() for x in q.split(",")]
    procs = []
    for line in filter(None, apps.splitlines()):
        pid, pname, mem = [x.strip() for x in line.split(",")]
        procs.append({"pid": int(pid), "name": pname, "used_mib": int(mem)})
    return {"gpu": name, "used_mib": int(used), "total_mib": int(total), "processes": procs}


def start_serve(app_args: dict) -> str:
    import ray

    if not ray.is_initialized():
        os.environ["BENCH_PORT"] = str(start_local_serve())
    started = time.perf_counter()
    run_app(app_args)
    print(f"serve app up in {time.perf_counter() - started:.1f} s", flush=True)
    return f"http://127.0.0.1:{os.environ['BENCH_PORT']}"


def http_sender(base_url: str, max_tokens: int):
    """Posts each clip as a WAV upload, as an OpenAI client would. aiohttp, not httpx: with 128 uploads in flight an
    httpx client held requests back for seconds before sending them (``results/client_burst_cpu.json``), which earlier
    sessions took for a stall of the server."""
    session = http_session()

    async def send(wav: bytes) -> str:
        """Returns the request's id, which Serve's log lines of every replica it passed carry."""
        form = upload_form(wav, model="voxtral", language="en", max_tokens=str(max_tokens), ignore_eos="true")
        request_id = str(uuid.uuid4())
        async with session.post(f"{base_url}/v1/audio/transcriptions", data=form, headers={"x-request-id": request_id}) as r:
            r.raise_for_status()
            await r.read()
        return request_id

    send.prepare = wav_bytes  # the upload is encoded before the clock starts (loadgen.run_load)
    return send


def direct_sender(backend, max_tokens: int):
    from serve_app.core.types import TranscribeOptions

    async def send(clip: np.ndarray):
        return await backend.transcribe(clip, TranscribeOptions(language="en", max_tokens=max_tokens, ignore_eos=True))

    return send


def requests_for(concurrency: int, seconds: int, budget_audio_s: float) -> int:
    n = max(10, 2 * concurrency) if concurrency > 1 else 12
    return int(max(concurrency, min(n, budget_audio_s // seconds)))


async def matrix(make_sender, maker: ClipMaker, concurrencies: list[int], budget_audio_s: float) -> list[dict]:
    rows = []
    for seconds, tokens in CASES.items():
        send = make_sender(tokens)
        await run_load(send, [maker.clip(seconds) for _ in range(4)], 4)  # warm-up at this shape
        for c in concurrencies:
            clips = [maker.clip(seconds) for _ in range(requests_for(c, seconds, budget_audio_s))]
            row = {"clip_s": seconds, "output_tokens": tokens, **await run_load(send, clips, c)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


async def throughput_128(make_sender, maker: ClipMaker, n: int) -> dict:
    send = make_sender(CASES[10])
    clips = [maker.clip(10) for _ in range(n)]
    row = {"clip_s": 10, "output_tokens": CASES[10], **await run_load(send, clips, 128, keep_timeline=True)}
    print(json.dumps({"throughput_128": {k: v for k, v in row.items() if k != "timeline"}}), flush=True)
    return row


def handle_sender(handle, max_tokens: int):
    """A Serve handle call straight to the model replica: the engine the HTTP path uses, without HTTP and the ingress."""
    from serve_app.core.types import TranscribeOptions
    from serve_app.serving.wire import to_pcm16

    async def send(pcm: np.ndarray):
        return await handle.transcribe.remote(pcm, TranscribeOptions(language="en", max_tokens=max_tokens, ignore_eos=True))

    send.prepare = to_pcm16  # the form the ingress sends it in
    return send


def engine_call_ms(request_ids: list[str], logs_dir: Path = RAY_LOGS) -> list[float | None]:
    """How long each request's call took inside the model replica (Serve's own log line ``<id> -- CALL transcribe OK
    <ms>ms``, written by the replica around the engine call), in the order of ``request_ids``; None where not found."""
    wanted = set(request_ids)
    found: dict[str, float] = {}
    line = re.compile(r" ([0-9a-f-]{36}) -- CALL transcribe OK ([0-9.]+)ms")
    for path in [*logs_dir.glob("worker-*.err"), *logs_dir.glob("serve/replica_*.log")]:
        for m in line.finditer(path.read_text(errors="replace")):
            if m[1] in wanted:
                found[m[1]] = float(m[2])
    return [found.get(i) for i in request_ids]


async def side_by_side(paths: dict[str, dict], maker: ClipMaker, n: int) -> dict:
    """Serve + HTTP overhead at concurrency 1: the same clips, through each path in turn (``paths``: name -> clip
    length -> sender). ``http`` against ``direct`` (a second engine in this process) is what the issue asks for;
    ``http`` against ``handle`` (the same engine as HTTP) leaves out the difference between two engines, and so does
    ``http_over_its_engine``: each HTTP request's time at the client minus its own engine call in the model replica
    (from Serve's log line), request by request."""
    out = {}
    for seconds in CASES:
        took: dict[str, list[float]] = {name: [] for name in paths}
        request_ids = []
        for _ in range(n):
            clip = maker.clip(seconds)
            for name, senders in paths.items():
                send = senders[seconds]
                payload = prepared(send, clip)
                t = time.perf_counter()
                answer = await send(payload)
                took[name].append(time.perf_counter() - t)
                if name == "http":
                    request_ids.append(answer)
        row = {f"{name}_p50_s": round(float(np.median(v)), 4) for name, v in took.items()}
        engine = engine_call_ms(request_ids)
        pairs = [1000 * t - e for t, e in zip(took["http"], engine) if e is not None]
        if pairs:
            row["http_engine_call_p50_ms"] = round(float(np.median([e for e in engine if e is not None])), 1)
            row["http_over_its_engine_paired_median_ms"] = round(float(np.median(pairs)), 1)
            row["http_over_its_engine_requests"] = len(pairs)
        for slower, faster in (("http", "direct"), ("http", "handle"), ("handle", "direct")):
            if slower in took and faster in took:
                key = "overhead" if (slower, faster) == ("http", "direct") else f"{slower}_over_{faster}"
                row[f"{key}_p50_ms"] = round(1000 * (float(np.median(took[slower])) - float(np.median(took[faster]))), 1)
                paired = np.asarray(took[slower]) - np.asarray(took[faster])  # clip by clip
                row[f"{key}_paired_median_ms"] = round(1000 * float(np.median(paired)), 1)
        out[f"{seconds}s"] = row
    print(json.dumps({"side_by_side": out}), flush=True)
    return out


@contextlib.contextmanager
def neighbour(hold_gib: float, churn_gib: float, seconds: float = 900):
    """While inside, another process holds ``hold_gib`` of the card and churns ``churn_gib`` more
    (``benchmarks.gpu_neighbour``); yields its pid."""
    ready = Path("/tmp/neighbour.ready")
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.gpu_neighbour", "--hold-gib", str(hold_gib),
         "--churn-gib", str(churn_gib), "--seconds", str(seconds), "--ready-file", str(ready)], cwd=REPO,
    )  # fmt: skip
    try:
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError("the neighbour process failed to start")
            time.sleep(0.5)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def cmd_shared_card(a) -> dict:
    with neighbour(a.hold_gib, a.churn_gib) as neighbour_pid:
        before = gpu_memory()
        base = start_serve({"models": [voxtral_model(a.model_dir, a.preset)]})
        after_start = gpu_memory()
        maker = ClipMaker(speech_pool(sorted(Path(a.audio_dir).glob("*.wav"))), seed=1)
        import httpx

        answers = []
        for seconds in (3, 10, 30, 10, 3):
            r = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(maker.clip(seconds)))},
                           data={"model": "voxtral", "response_format": "verbose_json"}, timeout=120)  # fmt: skip
            answers.append({"clip_s": seconds, "status": r.status_code, "duration": r.json().get("duration"), "text_chars": len(r.json().get("text", ""))})
        load = run_http(run_load(http_sender(base, CASES[10]), [maker.clip(10) for _ in range(64)], 32))
        during = gpu_memory()
    ours = [p for p in during["processes"] if p["pid"] != neighbour_pid]
    share_mib = 0.15 * during["total_mib"]
    return {
        "what": "Voxtral-shaped full-size model (dummy weights) at num_gpus 0.15 beside a neighbour holding"
        f" {a.hold_gib} GiB and churning {a.churn_gib} GiB",
        "neighbour_pid": neighbour_pid,
        "memory_before_our_app": before,
        "memory_after_start": after_start,
        "memory_under_load": during,
        "our_processes_mib": sum(p["used_mib"] for p in ours),
        "share_mib": round(share_mib),
        "within_share": sum(p["used_mib"] for p in ours) <= share_mib,
        "answers": answers,
        "load_c32_10s": load,
    }


class GpuMemoryPeak(PeriodicSampler):
    """The most the card's processes but ``exclude`` held at once (``peak_mib``) and each of them held
    (``peak_mib_by_pid``), by nvidia-smi every ``period_s`` while in use."""

    period_s = 0.5

    def __init__(self, exclude: set[int] = frozenset()):
        self.exclude, self.peak_mib, self.peak_mib_by_pid = exclude, 0, {}

    def sample(self) -> None:
        ours = [p for p in gpu_memory().get("processes", []) if p["pid"] not in self.exclude]
        self.peak_mib = max(self.peak_mib, sum(p["used_mib"] for p in ours))
        for proc in ours:
            self.peak_mib_by_pid[proc["pid"]] = max(self.peak_mib_by_pid.get(proc["pid"], 0), proc["used_mib"])


class GpuUtilization:
    """Samples nvidia-smi's utilization.gpu (the share of time a kernel was running) every 100 ms while in use."""

    def __enter__(self):
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        except OSError:  # no GPU here (a CPU dry run)
            self.proc = None
        return self

    def __exit__(self, *exc):
        self.mean = None
        if self.proc is None:
            return
        self.proc.terminate()
        values = [int(x) for x in self.proc.communicate()[0].split() if x.isdigit()]
        self.mean = round(float(np.mean(values)), 1) if values else None


async def timeline(backend, clip: np.ndarray, tokens: int) -> dict:
    """Where one request's time goes (ms), from vLLM's own request timestamps (needs ``disable_log_stats: False``)."""
    from vllm.sampling_params import RequestOutputKind

    started_wall, started = time.time(), time.perf_counter()
    prompt = backend._transcription_prompt(clip, "en")
    params = backend._params(prompt, tokens, 0.0, 1.0, True, RequestOutputKind.FINAL_ONLY, detokenize=False)
    async for final in backend._run(prompt, params, None):
        pass
    total = time.perf_counter() - started
    m = final.metrics
    prep = m.arrival_time - started_wall
    queue, prefill = m.scheduled_ts - m.queued_ts, m.first_token_ts - m.scheduled_ts
    decode = m.last_token_ts - m.first_token_ts
    ms = lambda x: round(1000 * x, 2)  # noqa: E731
    return {
        "total": ms(total), "before_arrival": ms(prep), "first_token_latency": ms(m.first_token_latency),
        "engine_queue": ms(queue), "engine_encoder_and_prefill": ms(prefill), "engine_decode": ms(decode),
        "engine_per_decode_token": ms(decode / max(1, tokens - 1)),
        "frontend_and_ipc_before_first_token": ms(m.first_token_latency - queue - prefill),
        "after_last_token": ms(total - prep - m.first_token_latency - decode),
    }  # fmt: skip


def py_spy(a, process: str | None, name: str, seconds: int) -> subprocess.Popen:
    """Samples a process for ``seconds`` at 200 Hz into ``<out>.<name>.txt`` (folded stacks): vLLM's engine core,
    found by its process title, or with ``process=None`` this one (where ``AsyncLLM``'s front end runs)."""
    pid = str(os.getpid()) if process is None else subprocess.run(["pgrep", "-f", f"VLLM::{process}"], capture_output=True, text=True).stdout.split()[-1]
    out = str(Path(a.out).with_suffix(f".{name}.txt"))
    return subprocess.Popen([a.py_spy, "record", "-p", pid, "-d", str(seconds), "-r", "200", "--threads", "-f", "raw", "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip


def median_timeline(rows: list[dict]) -> dict:
    return {k: round(float(np.median([r[k] for r in rows])), 2) for k in rows[0]}


def cmd_engine(a) -> dict:
    """The engine alone, one configuration per --variant (JSON engine overrides on the preset): latency at
    concurrency 1 with its timeline and throughput at 128 per clip length, GPU utilization while loaded; optionally
    py-spy on the engine core for 3 s clips one at a time, and on the engine core and the front end (this process)
    during the 10 s throughput case. A variant that fails is recorded and skipped."""
    from serve_app.backends.voxtral import VoxtralBackend
    from serve_app.config import VoxtralModelConfig

    # A forked engine core failed with "Cannot re-initialize CUDA in forked subprocess" (H100, vLLM 0.26): this
    # process has touched CUDA before the engine starts, so the core is started fresh instead.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    maker = ClipMaker(speech_pool(sorted(Path(a.audio_dir).glob("*.wav"))), seed=3)
    cases = {int(s): CASES[int(s)] for s in a.cases.split(",")}
    out = []
    for i, variant in enumerate(a.variant or ["{}"]):
        overrides = json.loads(variant)
        env = overrides.pop("env", {})  # environment of the engine core this variant spawns (VLLM_* settings)
        model = voxtral_model(a.model_dir, a.preset)
        model["voxtral"] |= overrides
        model["voxtral"]["engine_kwargs"] = {"disable_log_stats": False, **model["voxtral"].get("engine_kwargs", {})}
        config = VoxtralModelConfig.model_validate(model).voxtral
        row: dict = {"preset": a.preset, "overrides": overrides, "env": env}

        async def run():
            started = time.perf_counter()
            backend = VoxtralBackend(config, gpu_share=a.num_gpus)
            row["start_s"] = round(time.perf_counter() - started, 1)
            await warm_up(backend)
            row["gpu_memory"] = gpu_memory()
            for seconds, tokens in cases.items():
                send = direct_sender(backend, tokens)
                await run_load(send, [maker.clip(seconds) for _ in range(8)], 8)
                c1 = await run_load(send, [maker.clip(seconds) for _ in range(12)], 1)
                row[f"{seconds}s_timeline_c1_median_ms"] = median_timeline([await timeline(backend, maker.clip(seconds), tokens) for _ in range(12)])
                if a.py_spy and seconds == 3:  # one request at a time: what the engine core does per step
                    clips = [maker.clip(seconds) for _ in range(40)]  # made first: sampling covers the load only
                    spy = py_spy(a, "EngineCore", f"v{i}.c1.engine", 3)
                    await run_load(send, clips, 1)
                    spy.wait(30)
                clips = [maker.clip(seconds) for _ in range(a.throughput_n)]
                spies = [py_spy(a, "EngineCore", f"v{i}.c128.engine", 3), py_spy(a, None, f"v{i}.c128.frontend", 3)] if a.py_spy and seconds == 10 else []
                with GpuUtilization() as util:
                    c128 = await run_load(send, clips, 128)
                for spy in spies:
                    spy.wait(30)
                row[f"{seconds}s"] = {"c1_p50_s": c1["p50_s"], "c1_p95_s": c1["p95_s"], "c128_audio_s_per_s": c128["audio_s_per_s"],
                                      "c128_p50_s": c128["p50_s"], "c128_requests_per_s": round(c128["requests"] / c128["wall_s"], 1),
                                      "c128_gpu_util_mean": util.mean, "errors": c1["errors"] + c128["errors"]}  # fmt: skip
                print(json.dumps({"variant": overrides, f"{seconds}s": row[f"{seconds}s"],
                                  "timeline": row[f"{seconds}s_timeline_c1_median_ms"]}), flush=True)  # fmt: skip
            row["gpu_memory_after_load"] = gpu_memory()
            backend.shutdown()

        try:
            with patch.dict(os.environ, env):  # restored after the variant
                asyncio.run(run())
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"
            print(json.dumps(row), flush=True)
        out.append(row)
        write_result(a.out, {"command": command_line(), "engine_variants": out}, echo=False)  # partial
    return {"engine_variants": out}


def cmd_speed(a) -> dict:
    maker = ClipMaker(speech_pool(sorted(Path(a.audio_dir).glob("*.wav"))), seed=2)
    concurrencies = [int(c) for c in a.concurrency.split(",")]
    overrides = json.loads(a.engine_json)
    chunking = product_chunking()
    result: dict = {"preset": a.preset, "engine": PRESETS[a.preset] | overrides, "replicas": a.replicas, "chunking": chunking}
    ingress = {"deployment": {"num_replicas": a.ingress_replicas, "max_ongoing_requests": 512, "ray_actor_options": {"num_cpus": 1}}}
    model = voxtral_model(a.model_dir, a.preset, a.replicas, a.max_ongoing, a.num_gpus, overrides)
    base = start_serve({"models": [model], "ingress": ingress, "chunking": chunking})
    result["gpu_memory_serving"] = gpu_memory()
    result["http"] = run_http(matrix(lambda t: http_sender(base, t), maker, concurrencies, a.budget_audio_s))
    result["http_throughput_128"] = run_http(throughput_128(lambda t: http_sender(base, t), maker, a.throughput_n))
    result["gpu_memory_after_load"] = gpu_memory()
    if a.engine_direct:
        from serve_app.backends.voxtral import VoxtralBackend
        from serve_app.config import VoxtralModelConfig

        model = VoxtralModelConfig.model_validate(voxtral_model(a.model_dir, a.preset, overrides=overrides))

        async def direct():  # one event loop for the engine's whole life: AsyncLLM is bound to the loop it starts on
            backend = VoxtralBackend(model.voxtral, gpu_share=a.num_gpus or None)
            await warm_up(backend)
            result["gpu_memory_both"] = gpu_memory()
            from ray import serve

            handle = serve.get_deployment_handle(f"model-{model.name}", app_name="stt")
            paths = {
                "http": {s: http_sender(base, t) for s, t in CASES.items()},
                "handle": {s: handle_sender(handle, t) for s, t in CASES.items()},
                "direct": {s: direct_sender(backend, t) for s, t in CASES.items()},
            }
            result["side_by_side_c1"] = await side_by_side(paths, maker, a.side_by_side_n)
            result["direct"] = await matrix(lambda t: direct_sender(backend, t), maker, concurrencies, a.budget_audio_s)
            result["direct_throughput_128"] = await throughput_128(lambda t: direct_sender(backend, t), maker, a.throughput_n)

        run_http(direct())
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["shared-card", "speed", "engine"])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--audio-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-ongoing", type=int, help="the model replica's max_ongoing_requests (default: 2 batches, >= 64)")
    p.add_argument("--ingress-replicas", type=int, default=4, help="ingress replicas (they decode audio in parallel)")
    p.add_argument("--engine-direct", action="store_true")
    p.add_argument("--side-by-side-n", type=int, default=40, help="speed --engine-direct: clips per length and path")
    p.add_argument("--num-gpus", type=float, default=0.15, help="the replica's GPU share (0: a CPU dry run)")
    p.add_argument("--concurrency", default="1,8,32,128")
    p.add_argument("--budget-audio-s", type=float, default=2000, help="audio seconds per case at most")
    p.add_argument("--throughput-n", type=int, default=384)
    p.add_argument("--cases", default="3,10,30", help="engine: clip lengths to run (of 3,10,30)")
    p.add_argument("--engine-json", default="{}", help="speed: JSON overrides of the preset's voxtral settings")
    p.add_argument("--variant", action="append",
                   help='engine: JSON overrides of the preset\'s voxtral settings (repeatable); "env": {...} sets the engine\'s environment')
    p.add_argument("--py-spy", help="engine: path to py-spy, to sample the engine core and the front end")
    p.add_argument("--hold-gib", type=float, default=50)
    p.add_argument("--churn-gib", type=float, default=4)
    a = p.parse_args()
    apply_serve_env()  # before Ray starts: what `make serve` and cluster/ run
    apply_product_env()
    started = time.time()
    result = {"command": command_line(), "machine": machine_info()}
    result |= {"shared-card": cmd_shared_card, "speed": cmd_speed, "engine": cmd_engine}[a.command](a)
    result["wall_s"] = round(time.time() - started, 1)
    write_result(a.out, result, echo=False)
    print(json.dumps({k: v for k, v in result.items() if k not in ("http", "direct")}, indent=1)[:6000])


if __name__ == "__main__":
    main()
