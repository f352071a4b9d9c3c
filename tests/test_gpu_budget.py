"""The GPU byte budget (deploy-time check) and the planner over whole Serve configs, including over-committed ones."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from fixtures.voxtral_checkpoint import build
from serve_app.config import VoxtralConfig
from serve_app.gpu import planner
from serve_app.gpu.budget import BudgetError, GiB, check_free_memory, kv_bytes_per_token, plan_memory, weights_bytes

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
H100 = int(79.6 * GiB)


@pytest.fixture(scope="module")
def full_size_dir(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("full"), size="full")  # params.json + tekken.json, no weights file


def test_full_size_weights_match_the_real_checkpoint(full_size_dir):
    n = weights_bytes(VoxtralConfig(model=str(full_size_dir), load_format="dummy"))
    assert n == pytest.approx(8.72 * GiB, rel=0.01)  # the real Voxtral-Mini-3B-2507 is 8.72 GiB in bf16


def test_tiny_weights_are_the_files_on_disk(tiny_voxtral_dir):
    n = weights_bytes(VoxtralConfig(model=str(tiny_voxtral_dir)))
    assert n == (tiny_voxtral_dir / "consolidated.safetensors").stat().st_size


def test_share_015_of_h100_fits_and_splits_into_bytes(full_size_dir):
    config = VoxtralConfig(model=str(full_size_dir), load_format="dummy")
    plan = plan_memory(config, 0.15, H100)
    assert plan.weights_bytes + plan.activation_bytes + plan.kv_cache_bytes == plan.budget_bytes
    # 11.9 GiB - 8.7 GiB of weights - the 2.75 GiB reserve measured on an H100: about 4 k tokens at 120 KiB a token
    assert 0.4 * GiB < plan.kv_cache_bytes < 0.6 * GiB
    assert plan.engine_args() == {"gpu_memory_utilization": 0.15, "kv_cache_memory_bytes": plan.kv_cache_bytes}


def test_fp8_weights_leave_the_freed_bytes_to_the_kv_cache(full_size_dir):
    bf16 = plan_memory(VoxtralConfig(model=str(full_size_dir), load_format="dummy"), 0.15, H100)
    fp8 = plan_memory(VoxtralConfig(model=str(full_size_dir), load_format="dummy", quantization="fp8"), 0.15, H100)
    # Linear layers go to one byte a parameter; embeddings and the output head (1.5 GiB) stay bf16.
    assert fp8.weights_bytes == pytest.approx(5.13 * GiB, rel=0.01)
    assert fp8.kv_cache_bytes - bf16.kv_cache_bytes == bf16.weights_bytes - fp8.weights_bytes
    per_token = kv_bytes_per_token(VoxtralConfig(model=str(full_size_dir)))
    assert per_token == 120 * 1024  # 30 layers x 8 KV heads x 128 x (K, V) x bf16
    assert kv_bytes_per_token(VoxtralConfig(model=str(full_size_dir), kv_cache_dtype="fp8")) == per_token // 2


def test_a_hub_id_is_planned_from_its_known_shapes(full_size_dir):
    hub = VoxtralConfig(quantization="fp8")  # mistralai/Voxtral-Mini-3B-2507, not on this machine
    assert weights_bytes(hub) == weights_bytes(VoxtralConfig(model=str(full_size_dir), load_format="dummy", quantization="fp8"))
    with pytest.raises(BudgetError, match="Cannot tell the size"):
        weights_bytes(VoxtralConfig(model="someone/unknown-model"))


def test_share_too_small_for_weights_names_the_numbers(full_size_dir):
    config = VoxtralConfig(model=str(full_size_dir), load_format="dummy")
    with pytest.raises(BudgetError, match=r"share 0\.1 of 79\.60 GiB = 7\.96 GiB: weights 8\.7\d GiB"):
        plan_memory(config, 0.10, H100)


def test_explicit_kv_cache_over_the_share_is_refused(full_size_dir):
    config = VoxtralConfig(model=str(full_size_dir), load_format="dummy", kv_cache_memory_bytes=4 * GiB)
    with pytest.raises(BudgetError, match="does not fit its GPU share"):
        plan_memory(config, 0.15, H100)


def test_neighbours_holding_the_share_fail_at_deploy_time(full_size_dir):
    plan = plan_memory(VoxtralConfig(model=str(full_size_dir), load_format="dummy"), 0.15, H100)
    check_free_memory(plan, free_bytes=26 * GiB)  # a neighbour holds 54 GiB: our 11.9 GiB share is still free
    with pytest.raises(BudgetError, match=r"has 8\.00 GiB free of 79\.60 GiB"):
        check_free_memory(plan, free_bytes=8 * GiB, device_name="GPU 0")


def _run_planner(tmp_path, config: dict, *args: str) -> tuple[int, str]:
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = planner.main([str(path), *args])
    return code, out.getvalue()


@pytest.fixture
def production() -> dict:
    return yaml.safe_load((REPO / "serve_config.yaml").read_text())


def test_planner_accepts_the_production_config(tmp_path, production):
    code, out = _run_planner(tmp_path, production, "--gpus", "1", "--gpu-memory-gib", "80")
    assert code == 0, out
    assert "stt/voxtral-mini" in out and "llm/qwen2.5-7b-instruct" in out
    assert "OVER-COMMITTED" not in out
    used = float(out.split("GPU 0: ")[1].split(" of")[0])
    assert used == pytest.approx(0.5 + 2 * 0.15 + 0.1)


def test_planner_flags_an_over_committed_gpu(tmp_path, production):
    crowded = copy.deepcopy(production)
    voxtral = crowded["applications"][0]["args"]["models"][0]
    voxtral["deployment"]["autoscaling_config"]["max_replicas"] = 4  # 0.5 + 4 x 0.15 + 0.1 > 1
    code, out = _run_planner(tmp_path, crowded, "--gpus", "1")
    assert code == 1
    assert "OVER-COMMITTED: stt/voxtral-mini (0.15 GPU) does not fit" in out
    code, _ = _run_planner(tmp_path, crowded, "--gpus", "2")
    assert code == 0


def test_planner_flags_a_share_too_small_for_the_model(tmp_path, production):
    small = copy.deepcopy(production)
    small["applications"][0]["args"]["models"][0]["deployment"]["ray_actor_options"]["num_gpus"] = 0.1
    code, out = _run_planner(tmp_path, small, "--gpu-memory-gib", "80")
    assert code == 1 and "does not fit its GPU share" in out


def test_planner_counts_deployment_overrides_of_other_apps(tmp_path, production):
    other = copy.deepcopy(production)
    other["applications"].append(
        {"name": "tts", "import_path": "tts_app:app", "deployments": [{"name": "TTS", "num_replicas": 1, "ray_actor_options": {"num_gpus": 0.2}}]}
    )
    code, out = _run_planner(tmp_path, other, "--gpus", "1")
    assert code == 1 and "tts/TTS" in out


def test_fp8_language_model_keeps_the_audio_encoder_in_bf16(full_size_dir):
    model = dict(model=str(full_size_dir), load_format="dummy")
    lm_only = weights_bytes(VoxtralConfig(**model, quantization="fp8-language-model"))
    everything = weights_bytes(VoxtralConfig(**model, quantization="fp8"))
    # The encoder's 32 layers keep 2 bytes for their 629 M linear parameters: 5.72 GiB, as loaded on the H100.
    assert lm_only == pytest.approx(5.72 * GiB, rel=0.01)
    assert lm_only - everything == 32 * (4 * 1280 * 1280 + 2 * 1280 * 5120)


def test_encoder_graphs_are_paid_for_out_of_the_kv_cache(full_size_dir):
    model = dict(model=str(full_size_dir), load_format="dummy", quantization="fp8-language-model")
    eager = plan_memory(VoxtralConfig(**model), 0.15, H100)
    graphs = plan_memory(VoxtralConfig(**model, encoder_cuda_graphs=4), 0.15, H100)
    assert graphs.activation_bytes - eager.activation_bytes == 4 * 112 * 2**20  # 384-444 MiB measured for 1-4 windows
    assert graphs.kv_cache_bytes == eager.kv_cache_bytes - 4 * 112 * 2**20
    # 10 s windows: graphs for 3000, 2000 and 1000 frames, twice the 30 s graphs' bytes (364 -> 638 MiB measured), and
    # 512 MiB more (such an engine once grew 110 MiB over its share under load without them)
    windowed = plan_memory(VoxtralConfig(**model, encoder_cuda_graphs=4, audio_window_s=10), 0.15, H100)
    assert windowed.activation_bytes - eager.activation_bytes == 2 * 4 * 112 * 2**20 + 512 * 2**20
    previews = plan_memory(VoxtralConfig(**model, encoder_cuda_graphs=4, preview_window_s=10), 0.15, H100)
    assert previews.activation_bytes == windowed.activation_bytes  # the engine pads to the shorter window either way
    # bf16 weights leave too little for the graphs and one 4096-token sequence: refused, with the way out named
    with pytest.raises(BudgetError, match="encoder_cuda_graphs"):
        plan_memory(VoxtralConfig(model=str(full_size_dir), load_format="dummy", encoder_cuda_graphs=4), 0.15, H100)


def test_larger_language_model_graphs_are_paid_for_out_of_the_kv_cache(full_size_dir):
    model = dict(model=str(full_size_dir), load_format="dummy", quantization="fp8-language-model", max_num_seqs=80)
    default = plan_memory(VoxtralConfig(**model), 0.15, H100)
    larger = plan_memory(VoxtralConfig(**model, max_cudagraph_capture_size=512), 0.15, H100)
    # vLLM already captures up to 2 x 80 = 160 tokens; 352 more at 0.5 MiB each (0.18 -> 0.34 GiB measured)
    assert larger.activation_bytes - default.activation_bytes == (512 - 160) * 512 * 1024
    assert larger.kv_cache_bytes == default.kv_cache_bytes - (512 - 160) * 512 * 1024
    smaller = plan_memory(VoxtralConfig(**model, max_cudagraph_capture_size=64), 0.15, H100)
    eager = plan_memory(VoxtralConfig(**model, max_cudagraph_capture_size=512, enforce_eager=True), 0.15, H100)
    assert smaller.kv_cache_bytes == eager.kv_cache_bytes == default.kv_cache_bytes


def test_the_production_config_fits_its_share_with_room_for_its_batch():
    app = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]
    voxtral = next(m for m in app["models"] if m["backend"] == "voxtral")
    config = VoxtralConfig(**voxtral["voxtral"])
    plan = plan_memory(config, voxtral["deployment"]["ray_actor_options"]["num_gpus"], H100)
    # ~430 tokens a request (375 of audio): the KV cache holds most of max_num_seqs at once (~25 k tokens, 58 requests)
    assert plan.kv_cache_bytes // kv_bytes_per_token(config) >= 0.7 * config.max_num_seqs * 430


def _llm_entry(config: dict) -> dict:
    return next(a for a in config["applications"] if a["name"] == "llm")["args"]["llm_configs"][0]


def test_planner_rejects_an_llm_held_by_gpu_memory_utilization_alone(tmp_path, production):
    old = copy.deepcopy(production)
    _llm_entry(old)["engine_kwargs"] = {"gpu_memory_utilization": 0.5, "max_model_len": 8192}  # the entry before
    code, out = _run_planner(tmp_path, old, "--gpus", "1", "--gpu-memory-gib", "80")
    assert code == 1, out
    problem = next(line for line in out.splitlines() if line.startswith("OVER-COMMITTED: llm/qwen2.5-7b-instruct"))
    assert "No available memory for the cache blocks" in problem
    # the fix is named in bytes: 40 GiB - 14.19 GiB of weights - 4 GiB reserve, rounded down to 256 MiB
    assert "gpu_memory_utilization: 0.5, kv_cache_memory_bytes: 23353884672" in problem


def test_planner_prints_the_llm_byte_plan_and_checks_it_against_the_card(tmp_path, production):
    code, out = _run_planner(tmp_path, production, "--gpus", "1", "--gpu-memory-gib", "79.6")  # an H100's 79.6 GiB
    assert code == 0, out
    assert (
        "memory plan llm/qwen2.5-7b-instruct: share 0.5 of 79.60 GiB = 39.80 GiB: weights 14.19 GiB + activations"
        " 4.00 GiB + KV cache 20.00 GiB, kv_cache_memory_bytes 21474836480" in out
    )
    assert "memory plan stt/voxtral-mini: share 0.15" in out
    # the same bytes on a 40 GB card do not fit the half of it
    code, out = _run_planner(tmp_path, production, "--gpus", "2", "--gpu-memory-gib", "40")
    assert code == 1 and "Qwen/Qwen2.5-7B-Instruct does not fit its GPU share" in out


def test_llm_plan_counts_the_real_qwen_sizes():
    from serve_app.gpu.llm_budget import KNOWN_LLM_SHAPES

    qwen = KNOWN_LLM_SHAPES["Qwen/Qwen2.5-7B-Instruct"]
    assert qwen.weights_bytes(None) == 2 * 7_615_616_512  # Qwen2.5-7B's 7.62 B parameters in bf16
    assert qwen.kv_bytes_per_token(None) == 56 * 1024  # 28 layers x 4 KV heads x 128 x (K, V) x bf16


def test_llm_plan_refuses_an_unbounded_step_and_a_utilization_other_than_the_share(tmp_path, production):
    for change in ({"max_num_batched_tokens": 32768}, {"gpu_memory_utilization": 0.9}):
        config = copy.deepcopy(production)
        _llm_entry(config)["engine_kwargs"].update(change)
        code, out = _run_planner(tmp_path, config, "--gpus", "1")
        assert code == 1 and "OVER-COMMITTED: llm/qwen2.5-7b-instruct" in out, change
