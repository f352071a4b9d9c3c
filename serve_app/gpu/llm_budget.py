"""The byte plan of a Ray Serve LLM engine (an ``llm_configs`` entry) that shares a card, as budget.py plans Voxtral's.

Ray Serve LLM hands ``engine_kwargs`` to vLLM unchanged, so the same rule holds: ``gpu_memory_utilization`` alone sizes
the KV cache from what vLLM sees free and fails beside neighbours; an entry whose placement bundles ask for less than a
card sets ``gpu_memory_utilization`` to that share and ``kv_cache_memory_bytes`` to a KV cache that fits in it.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.gpu.budget import BudgetError, GiB, MemoryPlan, check_fits

# Everything the engine holds besides weights and KV cache (CUDA context, the activation peak of a step of up to
# LLM_MAX_BATCHED_TOKENS tokens, CUDA graphs). Not measured for these models here: Voxtral's measured 2.4 GiB at 3 B
# parameters and 4096 batched tokens, scaled to a 7 B model's wider layers and twice the tokens, with room to spare.
LLM_ACTIVATION_RESERVE_BYTES = 4 * GiB
LLM_MAX_BATCHED_TOKENS = 8192
ROUND_TO = 256 << 20


@dataclass(frozen=True)
class DecoderShape:
    """A decoder-only transformer's sizes, as its config.json gives them."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_position: int
    tied_embeddings: bool = False

    def weights_bytes(self, quantization: str | None) -> int:
        """bf16 weights; with ``quantization: fp8`` vLLM stores the linear layers' weights in one byte a parameter."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        linear = self.layers * (self.hidden * (2 * q + 2 * kv) + 3 * self.hidden * self.intermediate)
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        other = self.layers * (2 * self.hidden + q + 2 * kv) + embeddings + self.hidden  # norms, q/k/v biases
        return linear * (1 if quantization == "fp8" else 2) + other * 2

    def kv_bytes_per_token(self, kv_cache_dtype: str | None) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * (1 if kv_cache_dtype == "fp8" else 2)


# Hub ids (model_source) whose shapes the plan knows without their files.
KNOWN_LLM_SHAPES = {
    "Qwen/Qwen2.5-7B-Instruct": DecoderShape(
        layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, head_dim=128, vocab=152064,
        max_position=32768,
    ),
}


def llm_share(llm: dict) -> float:
    """The GPUs one replica's placement bundles ask for (Ray Serve LLM's default is one whole GPU)."""
    bundles = (llm.get("placement_group_config") or {}).get("bundles") or [{"GPU": 1}]
    return sum(float(b.get("GPU", 0)) for b in bundles)


def plan_llm_memory(llm: dict, device_bytes: int) -> MemoryPlan | None:
    """The byte plan of a shared-card entry (None when it holds whole cards); BudgetError says what to set."""
    share = llm_share(llm)
    if share >= 1:
        return None
    loading = llm.get("model_loading_config") or {}
    model = loading.get("model_source") or loading.get("model_id", "")
    shape = KNOWN_LLM_SHAPES.get(model)
    if shape is None:
        raise BudgetError(f"Cannot tell the size of {model!r}'s weights: add its shape to KNOWN_LLM_SHAPES.")
    engine = llm.get("engine_kwargs") or {}
    weights = shape.weights_bytes(engine.get("quantization"))
    room = int(share * device_bytes) - weights - LLM_ACTIVATION_RESERVE_BYTES
    suggested = f"gpu_memory_utilization: {share:g}, kv_cache_memory_bytes: {max(room, 0) // ROUND_TO * ROUND_TO}"
    if engine.get("gpu_memory_utilization") != share or not engine.get("kv_cache_memory_bytes"):
        raise BudgetError(
            f"{model} shares a card ({share:g} GPU) but its engine_kwargs do not hold it to its share: vLLM sizes a KV"
            f" cache from gpu_memory_utilization alone with what it finds free, which fails beside neighbours (\"No"
            f" available memory for the cache blocks\"). Set engine_kwargs {{{suggested}}}."
        )
    if engine.get("max_num_batched_tokens", LLM_MAX_BATCHED_TOKENS + 1) > LLM_MAX_BATCHED_TOKENS:
        raise BudgetError(
            f"{model}: set engine_kwargs.max_num_batched_tokens to at most {LLM_MAX_BATCHED_TOKENS}: the activation"
            f" reserve of its byte plan covers steps of that many tokens."
        )
    plan = MemoryPlan(device_bytes, share, weights, LLM_ACTIVATION_RESERVE_BYTES, int(engine["kv_cache_memory_bytes"]))
    max_len = int(engine.get("max_model_len") or shape.max_position)
    hint = f"Lower kv_cache_memory_bytes or max_model_len, or raise the share ({suggested} fits this card)."
    check_fits(plan, model, shape.kv_bytes_per_token(engine.get("kv_cache_dtype")) * max_len, max_len, hint)
    return plan
