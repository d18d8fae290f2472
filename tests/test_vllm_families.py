"""The model families vLLM 0.32 runs on this CPU (vLLM venv, transformers 5.19): only Idefics3 of the families added
for issue 21 (and VipLLaVA, served by the generic adapter, through vLLM's Transformers backend). Qwen3-VL / Qwen3.5
stop at vLLM building the video processor, LLaVA / LLaVA-NeXT / LLaVA-OneVision / Gemma 3 / InternVL at vLLM's model
modules importing torchvision (docs/models.md, "vLLM"); no test pretends otherwise.

The Idefics3 models here are of width 128 (4 heads of 32: vLLM's CPU attention kernels refuse smaller heads), so they
are built here rather than taken from the session's tiny hub (width 64); they are placed in a hub cache of their own
under the published id, and every scorer loads them by that id.
"""

import gc
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scoring_inputs import random_candidates

from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.guidance.server_scorer import ServerPRMScorer, prm_server_args
from trl_vlprm.guidance.vllm_policy import VLLMPolicy
from trl_vlprm.guidance.vllm_scorer import VLLMScorer
from trl_vlprm.guidance.vllm_server import launch_vllm_server
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_vlm, offline_hub, save_to_hub_cache, write_upstream_layout

ENGINE_KWARGS = {"enforce_eager": True, "gpu_memory_utilization": 0.05, "kv_cache_memory_bytes": 32 << 20,
                 "max_num_seqs": 8, "seed": 0}  # fmt: skip
IDEFICS3 = "HuggingFaceM4/Idefics3-8B-Llama3"
TOLERANCE = 1e-5  # float32 on both sides


@pytest.fixture(scope="module")
def idefics3_hub(tmp_path_factory):
    """A hub cache holding a tiny Idefics3 (width 128, upstream file layout) under its published id, offline."""
    root = tmp_path_factory.mktemp("idefics3_hub")
    base = write_upstream_layout(build_tiny_vlm(root / "base", arch="idefics3", hidden_size=128, seed=5))
    save_to_hub_cache(base, IDEFICS3, cache_dir=root / "hub")
    with offline_hub(root), pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the in-process engine starts in seconds
        patch.setenv("TRL_VLPRM_CACHE", str(root / "views"))
        yield root


@pytest.fixture(scope="module")
def question():
    # 100 x 90 px: a 2 x 2 grid of tiles (`<row_i_col_j>` markers) plus the global view on the tiny processor; over
    # 128 tokens (one CPU KV block), so the question prefix is read from vLLM's cache.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 100, 3), dtype=np.uint8))
    grid = " ".join(f"Cell {i} holds {i * 7 % 13}." for i in range(24))
    return {"id": "q1", "prompt": f"<image>Which number is missing in the grid? {grid}", "images": [image]}


def max_difference(got, expected) -> float:
    assert [len(row) for row in got] == [len(row) for row in expected] and sum(map(len, expected)) > 0
    assert np.ptp(np.concatenate(expected)) > 1e-4  # scores differ: no constant matching a constant
    return max(abs(a - b) for g, e in zip(got, expected) for a, b in zip(g, e))


@pytest.mark.vllm
def test_vllm_policy_on_idefics3(tmp_path, monkeypatch):
    """A real vLLM engine on a tiny Idefics3 (tiles with row/column markers): steps stop at the separator, the image
    is expanded by vLLM's own Idefics3 processing, the token budget holds and the stats count what was generated."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process
    path = build_tiny_vlm(tmp_path / "idefics3", arch="idefics3", hidden_size=128)
    policy = VLLMPolicy.from_pretrained(
        str(path), max_model_len=512, dtype="float32", llm_kwargs=ENGINE_KWARGS, seed=0, temperature=1.0,
        max_step_tokens=8, max_new_tokens=16, step_separator=" ",
    )  # fmt: skip
    question = {"id": "q1", "prompt": "<image>How many circles?", "images": [Image.new("RGB", (100, 90), "red")]}
    steps = policy.sample_next_steps(question, ["First"], 3)
    assert len(steps) == 3 and all(len(c.steps) <= 1 and 0 < c.num_tokens <= 8 for c in steps)
    solutions = policy.sample_solutions(question, 2)
    assert len(solutions) == 2 and all(0 < s.num_tokens <= 16 for s in solutions)
    assert policy.stats.calls == 2 and policy.stats.sequences == 5
    del policy
    gc.collect()


@pytest.mark.vllm
def test_vllm_scorer_on_idefics3_by_repo_id_equals_prm_scorer(idefics3_hub, question):
    """The generative PRM (the LM head's `+`/`-` rows) by repo id on a real in-process engine gives PRMScorer's
    per-step P(+). vLLM 0.32's online conversion would read uninitialised rows for Idefics3 (NaN scores), so the
    scorer serves it through the two-row view; the image's tile grid goes to vLLM as its one `<image>` placeholder."""
    reference = PRMScorer.from_pretrained(IDEFICS3, head="generative")
    scorer = VLLMScorer.from_pretrained(
        IDEFICS3, head="generative", max_model_len=1024, dtype="float32", llm_kwargs=ENGINE_KWARGS
    )
    try:
        folder = Path(scorer.llm.llm_engine.vllm_config.model_config.model)
        assert folder.parent == idefics3_hub / "views" / "vllm"
        view = json.loads((folder / "config.json").read_text())
        assert view["architectures"] == ["Idefics3ForTokenClassification"] and len(view["id2label"]) == 2
        candidates = random_candidates(0, 8)
        expected, expected_lengths = reference.score_with_input_lengths(question, candidates)
        got, lengths = scorer.score_with_input_lengths(question, candidates)
        difference = max_difference(got, expected)
        print(f"in-process vLLM vs PRMScorer, Idefics3 generative: max |dP(+)| = {difference:.2e}")
        assert difference < TOLERANCE
        assert lengths == expected_lengths
        total, computed = scorer.counters["prompt_tokens"], scorer.counters["computed_tokens"]
        assert total - computed >= (scorer.counters["prompts"] - 1) * 128  # the question's block came from the cache
    finally:
        del scorer.llm
        gc.collect()


@pytest.mark.vllm
def test_vllm_value_head_on_idefics3_equals_prm_scorer(idefics3_hub, question, tmp_path):
    """A trained value-head Idefics3 PRM on the engine: vLLM must see the tile grid exactly as the encoder expanded
    it (dropping repeated image tokens alone left the tile markers for vLLM to add again: 2.8e-3 off)."""
    model = load_prm(IDEFICS3, head="value", num_labels=2)
    torch.manual_seed(1)
    model.score.weight.data.normal_(0, 0.06)
    model.score.bias.data.normal_(0, 1.0)  # a bias vLLM failed to load would shift every score
    model.config.prm_step_separator = "\n"
    model.save_pretrained(tmp_path / "prm")
    load_processor(IDEFICS3).save_pretrained(tmp_path / "prm")
    reference = PRMScorer.from_pretrained(tmp_path / "prm")
    scorer = VLLMScorer.from_pretrained(
        tmp_path / "prm", max_model_len=1024, dtype="float32", llm_kwargs=ENGINE_KWARGS
    )
    try:
        candidates = random_candidates(1, 8)
        difference = max_difference(scorer.score(question, candidates), reference.score_plain(question, candidates))
        print(f"in-process vLLM vs PRMScorer, Idefics3 value head: max |dP(+)| = {difference:.2e}")
        assert difference < TOLERANCE
    finally:
        del scorer.llm
        gc.collect()


@pytest.mark.vllm
def test_served_idefics3_prm_by_repo_id_equals_prm_scorer(idefics3_hub, question):
    """`vllm serve` on the same generative PRM (its two-row view, from `prm_server_args`), scored over HTTP."""
    arguments = prm_server_args(IDEFICS3, head="generative")
    assert "--hf-overrides" not in arguments  # the view, not the online conversion
    server_args = [
        "--served-model-name", "idefics3-prm", "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024",
        "--max-num-seqs", "8", "--gpu-memory-utilization", "0.05", "--kv-cache-memory-bytes", str(32 << 20),
        "--limit-mm-per-prompt", '{"image": 1, "video": 0}', "--seed", "0",
    ]  # fmt: skip
    reference = PRMScorer.from_pretrained(IDEFICS3, head="generative")
    candidates = random_candidates(2, 4)
    expected = reference.score_plain(question, candidates)
    with launch_vllm_server(arguments, server_args, idefics3_hub / "serve.log", timeout=300) as url:
        scorer = ServerPRMScorer.from_pretrained(url, IDEFICS3, head="generative")
        try:
            got = scorer.score(question, candidates)
        finally:
            scorer.close()
    difference = max_difference(got, expected)
    print(f"served vLLM vs PRMScorer, Idefics3 generative: max |dP(+)| = {difference:.2e}")
    assert difference < TOLERANCE


@pytest.mark.vllm
def test_vllm_scorer_on_a_type_only_the_generic_adapter_serves(tmp_path, monkeypatch, question):
    """VipLLaVA (no family registers it; the generic LLaVA-style adapter serves it) runs on vLLM 0.32's CPU engine,
    unlike the registered LLaVA types: its generative PRM scores as PRMScorer does."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    path = build_tiny_vlm(tmp_path / "vipllava", arch="vipllava", hidden_size=128, seed=1)
    candidates = random_candidates(3, 8)
    # Before the engine starts: vLLM runs VipLLaVA through its Transformers backend, which patches transformers'
    # LlamaModel for torch.compile in this process (a later transformers forward fails on `do_not_compile`).
    expected = PRMScorer.from_pretrained(path, head="generative").score_plain(question, candidates)
    scorer = VLLMScorer.from_pretrained(
        path, head="generative", max_model_len=1024, dtype="float32", llm_kwargs=ENGINE_KWARGS
    )
    try:
        difference = max_difference(scorer.score(question, candidates), expected)
        print(f"in-process vLLM vs PRMScorer, VipLLaVA generative: max |dP(+)| = {difference:.2e}")
        assert difference < TOLERANCE
    finally:
        del scorer.llm
        gc.collect()
