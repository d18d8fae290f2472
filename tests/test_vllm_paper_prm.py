"""The paper's PRM by its id on vLLM: `VLLMScorer` (a real CPU pooling engine in process) and `ServerPRMScorer` (a real
`vllm serve` on loopback) read the head, the multi-turn layout, the system prompt and the pixel bounds from the preset
of `ob11/Qwen-VL-PRM-7B`, and give `PRMScorer`'s per-step P(+) on the same checkpoint, with the same input lengths.

The checkpoint is a tiny generative Qwen2.5-VL of width 128 (the CPU attention kernels need a head size multiple of
32) saved in an offline hub cache under the paper PRM's id *without* any PRM metadata, as the published checkpoint
is: only the preset says how to score it. Runs in the CPU vLLM venv (`bash .ci/vllm_test.sh`).
"""

import gc
import json

import numpy as np
import pytest
from PIL import Image
from scoring_inputs import random_candidates

from trl_vlprm.guidance.backends import build_scorer
from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.guidance.server_scorer import ServerPRMScorer, prm_server_args
from trl_vlprm.guidance.strategies.base import aggregated_scores, score_candidates
from trl_vlprm.guidance.vllm_scorer import VLLMScorer
from trl_vlprm.guidance.vllm_server import launch_vllm_server
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.presets import get_preset
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_vlm, offline_hub, save_to_hub_cache

PAPER_PRM = "ob11/Qwen-VL-PRM-7B"
TOLERANCE = 1e-5  # float32 on both sides
ENGINE_KWARGS = {"enforce_eager": True, "gpu_memory_utilization": 0.05, "kv_cache_memory_bytes": 64 << 20}
# Only what a CPU engine needs (the tiny model's 2,048 positions, float32, small memory): the head, layout, system
# prompt and pixel bounds come from the preset.
ENGINE = {"llm_kwargs": ENGINE_KWARGS, "dtype": "float32", "max_model_len": 2048}
SERVER_ARGS = [
    "--served-model-name", "paper-prm", "--enforce-eager", "--dtype", "float32", "--max-model-len", "2048",
    "--max-num-seqs", "16", "--gpu-memory-utilization", "0.05", "--kv-cache-memory-bytes", str(64 << 20),
    "--limit-mm-per-prompt", '{"image": 1, "video": 0}', "--seed", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def paper_hub(tmp_path_factory):
    """An offline hub cache holding a tiny generative PRM under the paper PRM's id, no PRM metadata in its config."""
    root = tmp_path_factory.mktemp("paper_hub")
    base = build_tiny_vlm(root / "base", arch="qwen2_5_vl", hidden_size=128, seed=3, max_pixels=1280 * 28 * 28)
    load_prm(base, head="generative").save_pretrained(root / "prm")
    load_processor(base).save_pretrained(root / "prm")
    config = json.loads((root / "prm" / "config.json").read_text())
    for key in [k for k in config if k.startswith("prm_")]:
        del config[key]  # as published: nothing but the preset says how to score it
    (root / "prm" / "config.json").write_text(json.dumps(config))
    save_to_hub_cache(root / "prm", PAPER_PRM, cache_dir=root / "hub")
    with offline_hub(root), pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the in-process engine starts in seconds
        yield root


@pytest.fixture(scope="module")
def question():
    # 448 x 448 = 256 x 28 x 28 pixels: the preset's lower bound, 256 image tokens.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8))
    return {"id": "paper-q", "prompt": "<image>Which number is missing in the grid?", "images": [image]}


@pytest.fixture(scope="module")
def reference(paper_hub, question):
    scorer = PRMScorer.from_pretrained(PAPER_PRM)
    preset = get_preset(PAPER_PRM)
    assert scorer.layout == preset.layout and scorer.layout.name == "multi_turn" and scorer.layout.system_prompt
    return scorer


def max_difference(got, expected) -> float:
    assert [len(row) for row in got] == [len(row) for row in expected] and sum(map(len, expected)) > 0
    return max(abs(a - b) for g, e in zip(got, expected) for a, b in zip(g, e))


def test_paper_prm_by_id_on_the_engine_equals_prm_scorer(paper_hub, reference, question):
    scorer = build_scorer(f"vllm:{PAPER_PRM}", defaults=ENGINE)
    try:
        assert isinstance(scorer, VLLMScorer) and scorer.head == "generative"
        assert scorer.layout == reference.layout  # the preset's multi-turn layout and system prompt
        preset = get_preset(PAPER_PRM)
        processor = scorer.processing_class.image_processor
        assert (processor.min_pixels, processor.max_pixels) == (preset.min_pixels, preset.max_pixels)
        candidates = random_candidates(0, 6)
        expected, expected_lengths = reference.score_with_input_lengths(question, candidates)
        got, lengths = scorer.score_with_input_lengths(question, candidates)
        difference = max_difference(got, expected)
        print(f"in-process vLLM vs PRMScorer, paper layout: max |dP(+)| = {difference:.2e}")
        assert difference < TOLERANCE
        assert lengths == expected_lengths and min(min(row) for row in lengths) > 256  # image tokens counted
        assert np.ptp(np.concatenate(expected)) > 1e-3  # scores differ: no constant matching a constant

        # `best_of_n:paper` divides by the PRM input lengths: filled from the vLLM scorer as from PRMScorer.
        values = {}
        for name, prm in (("hf", reference), ("vllm", scorer)):
            scored = [Candidate(steps=list(c.steps)) for c in candidates]
            score_candidates(prm, question, scored)
            assert all(c.step_input_lengths for c in scored)
            values[name] = aggregated_scores(scored, "paper")
        assert values["vllm"] == pytest.approx(values["hf"], abs=1e-4)
        assert int(np.argmax(values["vllm"])) == int(np.argmax(values["hf"]))
    finally:
        del scorer.llm
        gc.collect()


def test_paper_prm_by_id_served_equals_prm_scorer(paper_hub, reference, question):
    arguments = prm_server_args(PAPER_PRM)
    assert "--mm-processor-kwargs" in arguments  # the preset's pixel bounds reach the server's image processor
    with launch_vllm_server(arguments, SERVER_ARGS, paper_hub / "serve.log", timeout=300) as url:
        scorer = ServerPRMScorer.from_pretrained(url, PAPER_PRM)
        try:
            assert scorer.layout == reference.layout
            candidates = random_candidates(1, 6)
            expected, expected_lengths = reference.score_with_input_lengths(question, candidates)
            got, lengths = scorer.score_with_input_lengths(question, candidates)
        finally:
            scorer.close()
    difference = max_difference(got, expected)
    print(f"served vLLM vs PRMScorer, paper layout: max |dP(+)| = {difference:.2e}")
    assert difference < TOLERANCE
    assert lengths == expected_lengths and scorer.counters["requests"] == len(candidates)
