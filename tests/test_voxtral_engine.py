"""How the Voxtral backend sets up vLLM: quantization choices, the audio encoder's CUDA graphs as a vLLM plugin,
audio windows shorter than 30 s, and what the engine is asked to send back.

The graphs themselves need a GPU: the H100 runs check them against the eager encoder when they are captured
(``|graph - eager| 0`` in benchmarks/results/gpu/). Here: the plugin is installed and registered, and everything the
graphs do not cover (a CPU tensor, another shape) goes to vLLM's own encoder unchanged. The shorter window runs for
real, through the CPU build of vLLM and a tiny random Voxtral.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from contextlib import ExitStack
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_app.backends.voxtral import (
    ENGINE_FIELDS,
    EngineLoad,
    VoxtralBackend,
    _quantization_args,
    engine_arg_dict,
    engine_args,
    windowed_tokenizer,
)
from serve_app.backends.voxtral_encoder_graphs import CONFIG_KEY, WINDOW_KEY, EncoderGraphs, window_lengths
from serve_app.config import VoxtralConfig
from serve_app.core.types import ChatOptions, ChatTurn, TranscribeOptions


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
    assert len(calls) == 2 and not graphs.graphs and graphs.mel_bins is None


def test_window_lengths_are_the_multiples_of_the_window_up_to_vllms_30_s_chunk():
    assert window_lengths(3000, 100, None) == (3000,)
    assert window_lengths(3000, 100, 30) == (3000,)
    assert window_lengths(3000, 100, 10) == (3000, 2000, 1000)
    with pytest.raises(ValueError, match="does not divide"):
        window_lengths(3000, 100, 7)


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
    assert cpu.tokenizer is None  # the checkpoint's own, and its own 30 s window
    windowed = engine_arg_dict(VoxtralConfig(model=str(tiny_voxtral_dir), audio_window_s=10), "cpu", {}, "/tmp/tok")
    assert windowed["additional_config"] == {CONFIG_KEY: 0, WINDOW_KEY: 10} and windowed["tokenizer"] == "/tmp/tok"


def test_the_windowed_tokenizer_pads_to_the_window_and_keeps_the_rest(tiny_voxtral_dir, tmp_path, request):
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    directory, checkpoint_window_s = windowed_tokenizer(str(tiny_voxtral_dir), 10)
    directory = Path(directory)
    request.addfinalizer(lambda: shutil.rmtree(directory))  # the backend removes its own at shutdown
    assert checkpoint_window_s == 30.0
    original, windowed = (json.loads((d / "tekken.json").read_text()) for d in (tiny_voxtral_dir, directory))
    assert windowed["audio"].pop("chunk_length_s") == 10.0 and original["audio"].pop("chunk_length_s") == 30.0
    assert windowed == original
    encoder = MistralTokenizer.from_file(str(directory / "tekken.json")).instruct_tokenizer.audio_encoder
    padded = [len(encoder.pad(np.zeros(n, np.float32), 16000)) for n in (16000, 160_000, 160_001)]
    assert padded == [160_000, 160_000, 320_000]
    (tmp_path / "tekken.json").write_text(json.dumps({**original, "audio": {}}))
    with pytest.raises(ValueError, match="pads no audio"):
        windowed_tokenizer(str(tmp_path), 10)


def test_a_shorter_audio_window_pads_less_and_batches_windows_of_mixed_lengths(tiny_voxtral_dir):
    """``audio_window_s: 10`` on the real engine: a 3 s clip is one 10 s window (125 audio tokens, not 375), and one
    encoder batch mixes a 10 s window, a 30 s one and a 35 s clip's 30 + 10 s (vLLM's own encoder stacks them into one
    tensor, and the engine dies); a clip's text does not depend on what it was batched with."""
    config = VoxtralConfig(model=str(tiny_voxtral_dir), device="cpu", enforce_eager=True, max_model_len=2048,
                           max_num_seqs=8, kv_cache_memory_bytes=64 << 20, audio_window_s=10)  # fmt: skip
    rng = np.random.default_rng(5)
    clips = [rng.normal(0, 0.1, seconds * 16000).astype(np.float32) for seconds in (3, 25, 35)]
    options = TranscribeOptions(max_tokens=5, ignore_eos=True)

    async def run():
        backend = VoxtralBackend(config)
        try:
            audio_token = backend.tokenizer.instruct.audio_encoder.audio_token
            prompts = [backend._transcription_prompt(clip, None)["prompt_token_ids"] for clip in clips]
            alone = await backend.transcribe(clips[0], options)
            together = await asyncio.gather(*(backend.transcribe(clip, options) for clip in clips))
            return [p.count(audio_token) for p in prompts], alone, together, backend._tokenizer_dir
        finally:
            backend.shutdown()

    audio_tokens, alone, together, tokenizer_dir = asyncio.run(run())
    assert audio_tokens == [125, 375, 500]  # 12.5 tokens a second of the padded audio: 10, 30 and 40 s
    # the engine took those prompts (its audio processor padded alike) and the same text around each
    assert len({t.usage.prompt_tokens - n for t, n in zip(together, audio_tokens)}) == 1
    assert all(t.usage.completion_tokens == 5 for t in together)
    assert together[0].text == alone.text
    assert not Path(tokenizer_dir).exists()  # removed at shutdown


def test_a_preview_window_shortens_previews_only_and_leaves_full_requests_as_they_were(tiny_voxtral_dir):
    """``preview_window_s: 10`` on the real engine: a preview of a 3 s utterance is one 10 s window (250 audio tokens
    fewer than 30 s), while a final, a long clip and a chat answer get the prompts, tokens and text of an engine
    without the option."""
    base = dict(model=str(tiny_voxtral_dir), device="cpu", enforce_eager=True, max_model_len=2048, max_num_seqs=8,
                kv_cache_memory_bytes=64 << 20)  # fmt: skip
    rng = np.random.default_rng(7)
    short, long = (rng.normal(0, 0.1, seconds * 16000).astype(np.float32) for seconds in (3, 35))
    options = TranscribeOptions(max_tokens=6, ignore_eos=True)
    turns = [ChatTurn("user", (short, "Transcribe this."))]

    async def answers(config: VoxtralConfig) -> dict:
        backend = VoxtralBackend(config)
        try:
            chat = [d async for d in backend.chat_stream(turns, ChatOptions(max_tokens=6, stream=False))][0]
            return {
                "final": await backend.transcribe(short, options),
                "long": await backend.transcribe(long, options),
                "preview": await backend.transcribe(short, replace(options, best_effort=True)),
                "chat": (chat.text, chat.usage),
            }
        finally:
            backend.shutdown()

    plain = asyncio.run(answers(VoxtralConfig(**base)))
    windowed = asyncio.run(answers(VoxtralConfig(**base, preview_window_s=10)))
    for name in ("final", "long"):
        assert (windowed[name].text, windowed[name].usage) == (plain[name].text, plain[name].usage)
    assert windowed["chat"] == plain["chat"]
    assert plain["preview"].usage == plain["final"].usage  # without the option a preview is a final's twin
    assert windowed["preview"].usage.prompt_tokens == plain["final"].usage.prompt_tokens - 250  # 10 s, not 30 s


def test_a_preview_window_must_divide_the_full_window():
    assert VoxtralConfig(preview_window_s=10).engine_window_s() == 10
    assert VoxtralConfig(audio_window_s=10, preview_window_s=5).engine_window_s() == 5
    assert VoxtralConfig(audio_window_s=15).engine_window_s() == 15 and VoxtralConfig().engine_window_s() is None
    for bad in ({"preview_window_s": 10, "audio_window_s": 15}, {"preview_window_s": 10, "audio_window_s": 10}):
        with pytest.raises(ValueError, match="preview_window_s"):
            VoxtralConfig(**bad)


def test_a_chat_answer_without_streaming_comes_whole_and_equals_the_streamed_one(tiny_voxtral_dir):
    """A chat request without ``stream`` asks the engine for its final output only: one piece, nothing per token
    through vLLM's output path and the handle. Its text, usage and finish reason are those of the streamed answer."""
    config = VoxtralConfig(model=str(tiny_voxtral_dir), device="cpu", enforce_eager=True, max_model_len=2048,
                           max_num_seqs=8, kv_cache_memory_bytes=64 << 20)  # fmt: skip
    clip = np.random.default_rng(6).normal(0, 0.1, 3 * 16000).astype(np.float32)
    turns = [ChatTurn("user", (clip, "Transcribe this."))]

    async def run():
        backend = VoxtralBackend(config)
        try:
            pieces = {}
            for stream in (True, False):
                pieces[stream] = [d async for d in backend.chat_stream(turns, ChatOptions(max_tokens=12, stream=stream))]
            return pieces
        finally:
            backend.shutdown()

    pieces = asyncio.run(run())
    streamed, whole = pieces[True], pieces[False]
    assert len(streamed) > 3 and len(whole) == 1
    assert whole[0].text == "".join(d.text for d in streamed)
    assert whole[0].usage == streamed[-1].usage and whole[0].usage.completion_tokens == 12
    assert whole[0].finish_reason == streamed[-1].finish_reason == "length"


def test_a_preview_is_admitted_only_where_it_starts_at_once_and_delays_no_full_request():
    load = EngineLoad(kv_tokens=10_000, max_seqs=8, max_model_len=2048, step_tokens=4096, max_previews=8)
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
    big = EngineLoad(kv_tokens=100_000, max_seqs=80, max_model_len=2048, step_tokens=4096, max_previews=80)
    with ExitStack() as stack:  # compute: the prompts in flight and its own fit in one step's token budget
        for _ in range(8):
            stack.enter_context(big.holding(430, 470))
        assert big.preview_fits(430, 470)  # 9 x 430 = 3 870 tokens: one step prefills them all
        stack.enter_context(big.holding(430, 470))
        assert not big.preview_fits(430, 470)  # a tenth would wait behind the others' prefill


def test_previews_in_flight_are_capped_whatever_their_prompts_cost():
    """Short windows make a preview's prompt cheap, not its decoding steps: past ``max_previews`` previews in flight
    another is refused though tokens and sequences are free, while full requests count only against the rest."""
    load = EngineLoad(kv_tokens=100_000, max_seqs=80, max_model_len=2048, step_tokens=4096, max_previews=3)
    with ExitStack() as stack:
        for _ in range(3):
            assert load.preview_fits(75, 115)
            stack.enter_context(load.holding(75, 115, preview=True))
        assert not load.preview_fits(75, 115)  # 4 x 75 prompt tokens would fit one step; the cap holds it
        stack.enter_context(load.holding(430, 470))  # a full request is no preview
        assert (load.previews, load.requests) == (3, 4)
    assert load.previews == 0 and load.preview_fits(75, 115)
    assert not EngineLoad(100_000, 80, 2048, 4096, max_previews=0).preview_fits(1, 1)  # 0: no previews at all
