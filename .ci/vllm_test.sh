#!/usr/bin/env bash
# Runs the vLLM tests in the venv .ci/vllm_setup.sh builds (the project is installed there under vLLM's pins):
# VLLMPolicy and VLLMScorer on real in-process CPU engines, ServerPolicy against a real server process on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/vllm_setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HOME=${HF_HOME:-$PWD/.cache/hf}
"${VLLM_VENV:-.cache/vllm-venv}/bin/python" -m pytest -q -p no:cacheprovider tests/test_vllm_policy.py tests/test_vllm_scorer.py tests/test_vllm_server.py tests/test_vllm_scaleout.py tests/test_vllm_benchmarks.py tests/test_vllm_paper_prm.py tests/test_vllm_families.py "$@"
