"""GPU memory as a byte budget: a replica with ``num_gpus: f`` may hold ``f x device memory``, whoever else is on the card.

vLLM sizes its memory from ``gpu_memory_utilization`` minus what it sees in use, so next to a neighbour that holds
most of the card it finds "no available memory for the cache blocks"; ``kv_cache_memory_bytes`` alone fails vLLM's
start-up check against its default utilization of 0.92. Passing both holds: the share as the utilization (what the
start-up check asks to be free) and an explicit KV cache of share - weights - activations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from serve_app.backends.voxtral_encoder_graphs import window_lengths
from serve_app.config import VoxtralConfig
from serve_app.gpu.voxtral_shapes import AUDIO_ENCODING, KNOWN_SHAPES, MAX_SOURCE_POSITIONS, params

GiB = 1 << 30

# The audio encoder's CUDA graphs keep a memory pool of their own, beside the engine's activations: 384-444 MiB for
# graphs of 1-4 30 s windows on an H100 (benchmarks/results/gpu/engine_*.json). A shorter window (audio_window_s or
# preview_window_s) adds graphs for each multiple of the window, charged by their frames: 10 s windows add 2000 + 1000
# frames to the 3000, so twice the bytes (measured 364 -> 638 MiB on an H200, benchmarks/results/gpu/engine_window10_h200.log.txt).
ENCODER_GRAPH_BYTES_PER_WINDOW = 112 << 20
ENCODER_WINDOW_FRAMES = 2 * MAX_SOURCE_POSITIONS  # a 30 s window's mel frames: vLLM's chunk
MEL_FRAMES_PER_S = AUDIO_ENCODING["sampling_rate"] // AUDIO_ENCODING["hop_length"]
# An engine with windows shorter than 30 s began serving at 10 708-10 714 MiB in two sittings and grew under 128
# clients to 11 806 MiB in one and 12 344 MiB in the other, 110 MiB over its 12 234 MiB share (H100; the defaults grew
# by 844-874 MiB to 11 784-11 808; benchmarks/NOTES-gpu.md, sixteenth session). The growth is most likely the
# activations of the largest steps the load happened to form; until what bounds them is known, such an engine is
# charged this much more, out of a KV cache that prompts a third as long need less of. With it the same load peaked at
# 10 728 MiB (benchmarks/NOTES-gpu.md, nineteenth session).
SHORT_WINDOW_ACTIVATION_BYTES = 512 << 20

# The language model's CUDA graphs grow with the largest step they capture: vLLM's pool took 0.18 GiB for steps up to
# 160 tokens (its default at 80 sequences) and 0.34 GiB up to 512 on an H200 (benchmarks/results/gpu/engine_capture.json).
# The activation reserve covers vLLM's default sizes; a larger max_cudagraph_capture_size is charged per extra token.
LM_GRAPH_BYTES_PER_TOKEN = 512 << 10


class BudgetError(ValueError):
    """The configured share of the GPU cannot hold the model: raised at deploy time, before the engine starts."""


@dataclass(frozen=True)
class MemoryPlan:
    device_bytes: int
    share: float
    weights_bytes: int
    activation_bytes: int
    kv_cache_bytes: int

    @property
    def budget_bytes(self) -> int:
        return int(self.share * self.device_bytes)

    @property
    def used_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes + self.kv_cache_bytes

    def engine_args(self) -> dict:
        return {"gpu_memory_utilization": self.share, "kv_cache_memory_bytes": self.kv_cache_bytes}

    def describe(self) -> str:
        return (
            f"share {self.share:g} of {gib(self.device_bytes)} = {gib(self.budget_bytes)}: weights {gib(self.weights_bytes)}"
            f" + activations {gib(self.activation_bytes)} + KV cache {gib(self.kv_cache_bytes)}"
        )


def gib(n: int | float) -> str:
    return f"{n / GiB:.2f} GiB"


def weights_bytes(config: VoxtralConfig) -> int:
    """Bytes of weights: from the config, the checkpoint's params.json or files, or the shapes of a known model.

    With ``quantization: fp8`` the linear layers take one byte a parameter, with ``fp8-language-model`` only the
    language model's; embeddings, the output head, norms, the audio convolutions and the adapter stay in ``dtype``
    (what vLLM's FP8 quantizes).
    """
    if config.weights_bytes:
        return config.weights_bytes
    files = list(Path(config.model).glob("consolidated*.safetensors")) or list(Path(config.model).glob("*.safetensors"))
    if files and config.load_format != "dummy" and not config.quantization:
        return sum(f.stat().st_size for f in files)
    params = _params(config)
    if params is None:
        raise BudgetError(f"Cannot tell the size of {config.model!r}'s weights: set voxtral.weights_bytes in the config.")
    lm_linear, encoder_linear, other = _parameter_counts(params)
    bytes_per = 4 if config.dtype in ("float32", "float") else 2
    lm_bytes = 1 if config.quantization in ("fp8", "fp8-language-model") else bytes_per
    encoder_bytes = 1 if config.quantization == "fp8" else bytes_per
    return lm_linear * lm_bytes + encoder_linear * encoder_bytes + other * bytes_per


def _parameter_counts(p: dict) -> tuple[int, int, int]:
    """(language-model linear, audio-encoder linear, other) parameter counts of a Mistral-format Voxtral."""
    q, kv = p["n_heads"] * p["head_dim"], p["n_kv_heads"] * p["head_dim"]
    linear = p["n_layers"] * (p["dim"] * (2 * q + 2 * kv) + 3 * p["dim"] * p["hidden_dim"])
    encoder_linear = 0
    other = p["n_layers"] * 2 * p["dim"] + 2 * p["vocab_size"] * p["dim"] + p["dim"]
    whisper = p.get("multimodal", {}).get("whisper_model_args")
    if whisper:
        e = whisper["encoder_args"]
        eq = e["n_heads"] * e["head_dim"]
        encoder_linear = e["n_layers"] * (4 * e["dim"] * eq + 2 * e["dim"] * e["hidden_dim"])
        other += e["n_layers"] * (9 * e["dim"] + 2 * eq + e["hidden_dim"])
        mels = e["audio_encoding_args"]["num_mel_bins"]
        other += e["dim"] * mels * 3 + e["dim"] * e["dim"] * 3 + 4 * e["dim"]
        other += p["dim"] * e["dim"] * whisper["downsample_args"]["downsample_factor"] + p["dim"] * p["dim"]
    return linear, encoder_linear, other


def _params(config: VoxtralConfig) -> dict | None:
    """The model's params.json: from its directory, or the shapes of a known hub id."""
    path = Path(config.model) / "params.json"
    if path.exists():
        return json.loads(path.read_text())
    if config.model in KNOWN_SHAPES:
        return params(KNOWN_SHAPES[config.model])
    return None


def kv_bytes_per_token(config: VoxtralConfig) -> int | None:
    p = _params(config)
    if p is None:
        return None
    return 2 * p["n_layers"] * p["n_kv_heads"] * p["head_dim"] * (1 if config.kv_cache_dtype == "fp8" else 2)


def plan_memory(config: VoxtralConfig, share: float, device_bytes: int) -> MemoryPlan:
    """The bytes this replica may use and how they split; raises BudgetError if the model does not fit its share."""
    weights = weights_bytes(config)
    activations = config.activation_reserve_bytes + graph_bytes(config)
    kv = config.kv_cache_memory_bytes or int(share * device_bytes) - weights - activations
    plan = MemoryPlan(device_bytes, share, weights, activations, kv)
    per_token = kv_bytes_per_token(config)
    hint = (
        "Raise num_gpus, lower max_model_len, encoder_cuda_graphs or max_cudagraph_capture_size, use FP8 weights, or"
        " set kv_cache_memory_bytes."
    )
    check_fits(plan, config.model, per_token * config.max_model_len if per_token else 1, config.max_model_len, hint)
    return plan


def check_fits(plan: MemoryPlan, model: str, needed_kv: int, max_model_len: int, hint: str) -> None:
    """The plan's parts fit its share, and its KV cache holds at least one full sequence."""
    if plan.kv_cache_bytes < needed_kv or plan.used_bytes > plan.budget_bytes:
        raise BudgetError(
            f"{model} does not fit its GPU share: {plan.describe()} exceeds the budget, or the KV cache is below one"
            f" full sequence ({gib(needed_kv)} for max_model_len {max_model_len}). {hint}"
        )


def graph_bytes(config: VoxtralConfig) -> int:
    """Memory beyond what the activation reserve covers: the encoder's graphs, the margin of an engine with short
    windows, larger language-model steps' graphs."""
    vllm_default = min(2 * config.max_num_seqs, 512)
    extra_tokens = max(0, (config.max_cudagraph_capture_size or 0) - vllm_default) if not config.enforce_eager else 0
    lengths = window_lengths(ENCODER_WINDOW_FRAMES, MEL_FRAMES_PER_S, config.engine_window_s())
    encoder = round(config.encoder_cuda_graphs * ENCODER_GRAPH_BYTES_PER_WINDOW * sum(lengths) / ENCODER_WINDOW_FRAMES)
    short_windows = SHORT_WINDOW_ACTIVATION_BYTES if len(lengths) > 1 else 0
    return encoder + short_windows + extra_tokens * LM_GRAPH_BYTES_PER_TOKEN


def check_free_memory(plan: MemoryPlan, free_bytes: int, device_name: str = "the GPU") -> None:
    """At start-up the share must be free on the card this replica landed on, whatever the neighbours hold."""
    if free_bytes < plan.budget_bytes:
        raise BudgetError(
            f"{device_name} has {gib(free_bytes)} free of {gib(plan.device_bytes)}, less than this replica's share"
            f" ({plan.describe()}). Other processes hold more of the card than Ray's fractional GPUs allow for."
        )


def plan_for_this_gpu(config: VoxtralConfig, share: float) -> MemoryPlan:
    """Plan against the GPU Ray gave this replica, and check that the share is free on it now."""
    free, total, name = gpu_memory_info()
    plan = plan_memory(config, share, total)
    check_free_memory(plan, free, name)
    return plan


def gpu_memory_info() -> tuple[int, int, str]:
    """(free, total, name) of this process's GPU, read in a short-lived child process.

    Asking torch here would create a CUDA context in the replica (about 0.5 GiB that the engine's own process does not
    need) and keep it for the replica's life; the child's context is released when it exits.
    """
    code = "import torch; f, t = torch.cuda.mem_get_info(); print(f, t, torch.cuda.get_device_name())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    if out.returncode != 0:
        raise BudgetError(f"Cannot read this replica's GPU memory: {out.stderr.strip()[-500:]}")
    free, total, name = out.stdout.strip().split(" ", 2)
    return int(free), int(total), name
