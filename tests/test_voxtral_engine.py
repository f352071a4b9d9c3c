"""How the Voxtral backend sets up vLLM: quantization choices, and the audio encoder's CUDA graphs as a vLLM plugin.

The graphs themselves need a GPU: the H100 runs check them against the eager encoder when they are captured
(``|graph - eager| 0`` in benchmarks/results/gpu/). Here: the plugin is installed and registered, and everything the
graphs do not cover (a CPU tensor, another shape) goes to vLLM's own encoder unchanged.
"""

from __future__ import annotations

from contextlib import ExitStack
from importlib.metadata import entry_points

import pytest
import torch

from serve_app.backends.voxtral import ENGINE_FIELDS, EngineLoad, _quantization_args, engine_args
from serve_app.backends.voxtral_encoder_graphs import CONFIG_KEY, EncoderGraphs
from serve_app.config import VoxtralConfig


def test_the_plugin_is_installed_and_serves_voxtral_with_the_graphed_class():
    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins["stt_voxtral_encoder_graphs"] == "serve_app.backends.voxtral_encoder_graphs:register"

    from vllm.model_executor.models.registry import ModelRegistry
    from vllm.model_executor.models.voxtral import VoxtralForConditionalGeneration
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    cls = ModelRegistry._try_load_model_cls("VoxtralForConditionalGeneration")
    assert cls.__name__ == "GraphedVoxtral" and issubclass(cls, VoxtralForConditionalGeneration)
    assert cls._processor_factory is VoxtralForConditionalGeneration._processor_factory  # same audio processing


def test_what_the_graphs_do_not_cover_runs_the_eager_encoder():
    calls = []

    def eager(features):
        calls.append(features)
        return features[0] * 2

    graphs = EncoderGraphs(eager, max_batch=4)
    x = torch.ones(3, 128, 3000)
    assert torch.equal(graphs([x]), x * 2)  # on the CPU
    assert torch.equal(graphs([x, x]), x * 2)  # not one batched tensor
    assert len(calls) == 2 and not graphs.graphs and graphs.window_shape is None


@pytest.mark.parametrize(
    "setting, engine",
    [
        (None, {"quantization": None}),
        ("fp8", {"quantization": "fp8"}),
        (
            "fp8-language-model",
            {"quantization": "fp8_per_channel", "quantization_config": {"ignore": ["re:.*whisper_encoder.*"]}},
        ),
    ],
)
def test_quantization_settings_map_to_vllm(setting, engine):
    assert _quantization_args(setting) == engine


def test_the_encoder_ignore_pattern_matches_the_encoder_layers_only():
    from vllm.model_executor.layers.quantization.compressed_tensors.utils import should_ignore_layer

    ignore = _quantization_args("fp8-language-model")["quantization_config"]["ignore"]
    fused = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    encoder = "whisper_encoder.whisper_encoder.layers.3.self_attn.qkv_proj"
    language_model = "language_model.model.layers.3.self_attn.qkv_proj"
    assert should_ignore_layer(encoder, ignore=ignore, fused_mapping=fused)
    assert should_ignore_layer("whisper_encoder.whisper_encoder.layers.0.mlp.fc1", ignore=ignore, fused_mapping=fused)
    assert not should_ignore_layer(language_model, ignore=ignore, fused_mapping=fused)
    assert not should_ignore_layer("language_model.model.layers.0.mlp.gate_up_proj", ignore=ignore, fused_mapping=fused)


def test_engine_args_carry_the_graph_sizes_and_engine_kwargs_win(tiny_voxtral_dir):
    config = VoxtralConfig(
        model=str(tiny_voxtral_dir),
        max_cudagraph_capture_size=512,
        encoder_cuda_graphs=4,
        engine_kwargs={"disable_log_stats": False, "additional_config": {"other": 1}},
    )
    args = engine_args(config, "cuda", {"gpu_memory_utilization": 0.15, "kv_cache_memory_bytes": 1 << 30})
    assert args.max_cudagraph_capture_size == 512
    assert {name: getattr(args, name) for name in ENGINE_FIELDS} == config.model_dump(include=ENGINE_FIELDS)
    assert (args.gpu_memory_utilization, args.kv_cache_memory_bytes) == (0.15, 1 << 30)
    assert args.disable_log_stats is False and args.mm_processor_cache_gb == 0
    assert args.additional_config == {CONFIG_KEY: 4, "other": 1}
    # No CUDA, no graphs: the CPU engine gets vLLM's eager encoder and its own default sizes.
    cpu = engine_args(VoxtralConfig(model=str(tiny_voxtral_dir), encoder_cuda_graphs=4), "cpu", {})
    assert cpu.additional_config == {CONFIG_KEY: 0} and cpu.max_cudagraph_capture_size is None


def test_a_preview_is_admitted_only_where_it_starts_at_once_and_delays_no_full_request():
    load = EngineLoad(kv_tokens=10_000, max_seqs=8, max_model_len=2048, step_tokens=4096)
    assert load.preview_fits(430, 470)
    with load.holding(100, 7_000):
        assert load.preview_fits(430, 470)  # 7 000 + 470 + a 2 048-token request fit in 10 000
        with load.holding(100, 600):
            assert not load.preview_fits(430, 470)  # no KV room left for a full request beside it
        assert load.preview_fits(430, 470)
    with pytest.raises(RuntimeError):
        with load.holding(430, 9_000):
            raise RuntimeError("a failed request gives its room back too")
    assert (load.prompt_tokens, load.tokens, load.requests) == (0, 0, 0)
    with ExitStack() as stack:
        for _ in range(6):
            stack.enter_context(load.holding(1, 1))
        assert load.preview_fits(1, 1)
        stack.enter_context(load.holding(1, 1))
        assert not load.preview_fits(1, 1)  # one of the 8 sequences stays free for full requests
    big = EngineLoad(kv_tokens=100_000, max_seqs=80, max_model_len=2048, step_tokens=4096)
    with ExitStack() as stack:  # compute: the prompts in flight and its own fit in one step's token budget
        for _ in range(8):
            stack.enter_context(big.holding(430, 470))
        assert big.preview_fits(430, 470)  # 9 x 430 = 3 870 tokens: one step prefills them all
        stack.enter_context(big.holding(430, 470))
        assert not big.preview_fits(430, 470)  # a tenth would wait behind the others' prefill
