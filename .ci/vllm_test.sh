#!/usr/bin/env bash
# Runs the VLLMPolicy tests against a real CPU vLLM engine, in the venv .ci/vllm_setup.sh builds.
# The repository is on sys.path through `python -m pytest` run from its root (trl_vlprm is not installed there:
# its pyproject asks transformers >= 5.20, the engine < 5.20; the modules these tests import work with both).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/vllm_setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HOME=${HF_HOME:-$PWD/.cache/hf}
"${VLLM_VENV:-.cache/vllm-venv}/bin/python" -m pytest -q -p no:cacheprovider tests/test_vllm_policy.py "$@"
