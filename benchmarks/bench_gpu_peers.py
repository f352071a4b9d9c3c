"""This service against vLLM's own OpenAI server on one GPU machine in one sitting, as JSON.

    python -m benchmarks.bench_gpu_peers --servers product,vllm,vllm-seed --model-dir /tmp/vox-full \
        --audio-dir .bench-audio --out peers.json

Servers, one after another on the same card (each stopped before the next starts):

* ``product``: this project's Serve app with the product defaults (``bench_gpu``'s ``default`` preset), through the
  transcription route and through the chat route that the old vLLM server's clients send;
* ``vllm``: ``vllm.entrypoints.openai.api_server`` with the same engine flags (the same FP8 layers, sequences, batch
  tokens, CUDA graph sizes, KV cache bytes), vLLM's own model class (this project's plugin is not loaded);
* ``vllm-seed``: the same server with the old deployment's flags (eager, 4 sequences, bf16);
* ``product-lever``: the product with ``--lever-json`` merged into its voxtral settings (a lever under test, e.g.
  ``'{"max_num_seqs": 64}'``); its keys ``replicas`` and ``num_gpus`` set the deployment instead, so
  ``'{"replicas": 2, "num_gpus": 0.075}'`` runs two engines in the same 0.15 share.

Every server gets the same clips and the same chat request (``max_tokens`` fixed per clip length, greedy), and each
answer must carry exactly that many completion tokens, so every server does the same work. Each server's greedy
answers to the same few clips are recorded (``greedy_texts``), so a lever that should leave the output unchanged is
checked against the product's (``same_text_as_product``). The product's processes' most memory on the card is sampled
all along (``gpu_memory_peak``), beside a neighbour that holds ``--neighbour-gib`` of it if asked. All traffic goes to
127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench_gpu import (
    CASES,
    PRESETS,
    GpuMemoryPeak,
    apply_product_env,
    gpu_memory,
    http_sender,
    matrix,
    neighbour,
    product_chunking,
    start_serve,
    throughput_128,
    voxtral_model,
)  # fmt: skip
from benchmarks.common import command_line, machine_info, write_result
from benchmarks.loadgen import ClipMaker, http_session, run_http, speech_pool
from benchmarks.local_serve import free_port, stop_local_serve
from serve_app.audio.wav import wav_bytes
from serve_app.backends.voxtral import engine_arg_dict
from serve_app.config import VoxtralConfig
from serve_app.ray_env import apply_serve_env

SERVED_NAME = "voxtral"
# The engine's own memory accounting, as its engine core and the model replica log it.
MEMORY_LINES = re.compile(r"Model loading took|GPU KV cache size|KV cache memory|Graph capturing finished|audio encoder CUDA graphs|GPU memory plan|loaded on")


def chat_body(clip, max_tokens: int, stream: bool = False) -> bytes:
    """The old clients' request: one user turn with the clip as ``input_audio`` (base64 WAV) and an instruction; with
    ``stream``, streamed with a last chunk that carries the usage."""
    audio = {"data": base64.b64encode(wav_bytes(clip)).decode(), "format": "wav"}
    content = [{"type": "input_audio", "input_audio": audio}, {"type": "text", "text": "Transcribe this audio."}]
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True}  # fmt: skip
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body).encode()


def streamed_answer(events: str) -> dict:
    """A streamed chat answer put together from its server-sent events: the text of its deltas and the usage of its
    last chunk, in the shape of an answer without ``stream``."""
    chunks = [json.loads(line[len("data: ") :]) for line in events.splitlines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return {"choices": [{"message": {"content": text}}], "usage": chunks[-1]["usage"]}


def chat_sender(base_url: str, max_tokens: int, stream: bool = False):
    session = http_session()

    async def send(body: bytes) -> str:
        """The answer's text."""
        headers = {"content-type": "application/json"}
        async with session.post(f"{base_url}/v1/chat/completions", data=body, headers=headers) as r:
            r.raise_for_status()
            answer = streamed_answer(await r.text()) if stream else await r.json()
        got = answer["usage"]["completion_tokens"]
        if got != max_tokens:  # the same work on every server, or the comparison means nothing
            raise RuntimeError(f"{got} completion tokens, expected {max_tokens}")
        return answer["choices"][0]["message"]["content"]

    send.prepare = lambda clip: chat_body(clip, max_tokens, stream)  # encoded before the clock starts (loadgen.run_load)
    return send


def vllm_server_args(config: VoxtralConfig, memory: dict) -> list[str]:
    """vLLM's CLI flags for the engine arguments the product's engine gets, without the product's own additions
    (``additional_config``: the encoder's CUDA graphs, which only this project's plugin reads)."""
    args = engine_arg_dict(config, "cuda", memory)
    args.pop("additional_config")
    flags = ["--served-model-name", SERVED_NAME, "--disable-uvicorn-access-log"]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        else:
            flags += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return flags


def engine_memory_lines(logs: Path = Path("/tmp/ray/session_latest/logs"), limit: int = 80) -> list[str]:
    """The lines of this Ray session's logs that give the engine's own memory accounting (its engine core writes to
    the model replica's worker files)."""
    lines = []
    for path in sorted(p for p in logs.rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err")):
        lines += [f"{path.name}: {line[:400]}" for line in path.read_text(errors="replace").splitlines() if MEMORY_LINES.search(line)]
    return lines[:limit]


def wait_until_up(proc: subprocess.Popen, url: str, timeout_s: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"no answer from {url} in {timeout_s} s")


def wait_for_free_gpu(limit_mib: int = 4096, timeout_s: float = 120) -> dict:
    """After a server stops, until the card holds less than ``limit_mib`` again (the next server plans on it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        mem = gpu_memory()
        if mem.get("used_mib", 0) < limit_mib or time.monotonic() > deadline:
            return mem
        time.sleep(1)


async def greedy_texts(base: str, pool) -> list[str]:
    """The chat answers to the same six clips (seed 7), one at a time: the same weights must give the same text."""
    maker, texts = ClipMaker(pool, seed=7), []
    for seconds in (3, 10, 3, 10, 3, 10):
        send = chat_sender(base, CASES[seconds])
        texts.append(await send(send.prepare(maker.clip(seconds))))
    return texts


def measure(base: str, make_senders: dict, maker: ClipMaker, a, with_throughput: bool) -> dict:
    out = {"greedy_texts": run_http(greedy_texts(base, maker.pool))}
    for route, make_sender in make_senders.items():
        out[route] = run_http(matrix(make_sender, maker, a.concurrencies, a.budget_audio_s))
        if with_throughput:
            out[f"{route}_throughput_128"] = run_http(throughput_128(make_sender, maker, a.throughput_n))
    return out


def run_product(a, maker: ClipMaker, lever: dict) -> dict:
    overrides = {k: v for k, v in lever.items() if k not in ("replicas", "num_gpus")}
    deployment = {k: v for k, v in lever.items() if k in ("replicas", "num_gpus")}
    model = voxtral_model(a.model_dir, "default", overrides=overrides, **deployment)
    ingress = {"deployment": {"num_replicas": 4, "max_ongoing_requests": 512, "ray_actor_options": {"num_cpus": 1}}}
    # Random weights loop at once: the chat's runaway cut would stop each answer early (less work than the peers do).
    chat = {"cut_repetitions": False}
    beside = neighbour(a.neighbour_gib, a.churn_gib) if a.neighbour_gib else contextlib.nullcontext()
    with beside as neighbour_pid, GpuMemoryPeak(exclude={neighbour_pid}) as peak:
        started = time.perf_counter()
        base = start_serve({"models": [model], "ingress": ingress, "chunking": product_chunking(), "chat": chat})
        row = {
            "start_s": round(time.perf_counter() - started, 1),
            "engine": model["voxtral"],
            "chat": chat,
            "deployment": model["deployment"],
        }
        row["gpu_memory_serving"] = gpu_memory()
        try:
            senders = {"transcriptions": lambda t: http_sender(base, t), "chat": lambda t: chat_sender(base, t)}
            row |= measure(base, senders, maker, a, with_throughput=True)
            row["gpu_memory_after_load"] = gpu_memory()
        finally:
            row["engine_memory_log"] = engine_memory_lines()
            stop_local_serve()
    share_mib = round(0.15 * row["gpu_memory_serving"].get("total_mib", 0))  # of nvidia-smi's total, not torch's
    row["gpu_memory_peak"] = {"neighbour_gib": a.neighbour_gib, "ours_mib": peak.peak_mib, "ours_mib_by_pid": peak.peak_mib_by_pid,
                              "share_mib": share_mib, "within_share": peak.peak_mib <= share_mib}  # fmt: skip
    return row


def run_vllm_server(a, maker: ClipMaker, preset: str, with_throughput: bool) -> dict:
    from serve_app.gpu.budget import plan_for_this_gpu

    engine = {k: v for k, v in PRESETS[preset].items() if k != "encoder_cuda_graphs"}
    config = VoxtralConfig(model=a.model_dir, load_format="dummy", max_model_len=4096, **engine)
    plan = plan_for_this_gpu(config, 0.15)
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *vllm_server_args(config, plan.engine_args()),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = dict(os.environ, VLLM_PLUGINS="none")  # vLLM's own Voxtral class, not this project's plugin
    log_path = Path(a.out).with_suffix(f".{preset}.log")
    row = {"command": " ".join(cmd), "byte_plan": plan.describe(), "log": log_path.name}
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(proc, f"{base}/health")
            row["start_s"] = round(time.perf_counter() - started, 1)
            row["gpu_memory_serving"] = gpu_memory()
            row |= measure(base, {"chat": lambda t: chat_sender(base, t)}, maker, a, with_throughput)
            row["gpu_memory_after_load"] = gpu_memory()
        finally:
            proc.terminate()
            proc.wait(60)
    return row


def summary(servers: dict) -> dict:
    """The README table's cells per server and route: p50 at one request for 3/10/30 s, 10 s at 32, 10 s at 128."""
    table = {}
    for name, row in servers.items():
        for route in ("transcriptions", "chat"):
            cells = {}
            for r in row.get(route, []):
                cells[f"{r['clip_s']}s_c{r['concurrency']}_p50_s"] = r["p50_s"]
                cells.setdefault("errors", 0)
                cells["errors"] += r["errors"]
            if f"{route}_throughput_128" in row:
                cells["10s_c128_audio_s_per_s"] = row[f"{route}_throughput_128"]["audio_s_per_s"]
            if cells:
                cells["same_text_as_product"] = row.get("same_text_as_product")
                table[f"{name} ({route})"] = cells
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="product,vllm,vllm-seed")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--audio-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--budget-audio-s", type=float, default=1000, help="audio seconds per case at most")
    p.add_argument("--throughput-n", type=int, default=256)
    p.add_argument(
        "--lever-json",
        default="{}",
        help="product-lever: merged into the product's voxtral settings (replicas, num_gpus: its deployment)",
    )
    p.add_argument("--neighbour-gib", type=float, default=0, help="product: another process holds this much of the card")
    p.add_argument("--churn-gib", type=float, default=4, help="... and churns this much more")
    a = p.parse_args()
    a.concurrencies = [int(c) for c in a.concurrency.split(",")]
    apply_serve_env()
    apply_product_env()
    pool = speech_pool(sorted(Path(a.audio_dir).glob("*.wav")))
    result = {"command": command_line(), "machine": machine_info(), "cases_output_tokens": CASES, "servers": {}}
    started = time.time()
    for name in a.servers.split(","):
        maker = ClipMaker(pool, seed=2)  # the same clips, in the same order, for every server
        try:
            if name in ("product", "product-lever"):
                row = run_product(a, maker, json.loads(a.lever_json) if name == "product-lever" else {})
            elif name in ("vllm", "vllm-seed"):
                row = run_vllm_server(a, maker, "default" if name == "vllm" else "seed", with_throughput=name == "vllm")
            else:
                raise SystemExit(f"unknown server {name!r}")
        except Exception as e:  # recorded; the next server still runs
            row = {"error": f"{type(e).__name__}: {e}"[:2000]}
        row["gpu_memory_after_stop"] = wait_for_free_gpu()
        result["servers"][name] = row
        if "greedy_texts" in row and "greedy_texts" in result["servers"].get("product", {}):
            row["same_text_as_product"] = row["greedy_texts"] == result["servers"]["product"]["greedy_texts"]
        result["summary"] = summary(result["servers"])
        write_result(a.out, result, echo=False)  # partial results survive a later failure
        print(json.dumps({name: result["summary"]}), flush=True)
    result["wall_s"] = round(time.time() - started, 1)
    write_result(a.out, result, echo=False)
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
