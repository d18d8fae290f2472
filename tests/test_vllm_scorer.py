"""VLLMScorer against PRMScorer: a real CPU vLLM pooling engine and transformers score the same tiny PRMs (value head
with 2 labels and with 1 soft label, generative head) to float tolerance, with vLLM's prefix cache read across
candidates and beam-search rounds. Runs in the CPU vLLM venv (`bash .ci/vllm_test.sh`); the checkpoint view runs
there too (the file needs vLLM to be collected, see tests/conftest.py).
"""

import copy
import gc
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from scoring_inputs import STEP_TEXTS, random_candidates

from trl_vlprm.guidance.backends import build_scorer
from trl_vlprm.guidance.policy import Candidate, StepScorer
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.guidance.vllm_checkpoints import vllm_checkpoint
from trl_vlprm.guidance.vllm_scorer import VLLMScorer
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_vlm

# Head sizes of the CPU attention kernels are multiples of 32 (width 128, 4 heads); see tests/test_vllm_policy.py.
ENGINE_KWARGS = {
    "enforce_eager": True,
    "gpu_memory_utilization": 0.05,
    "kv_cache_memory_bytes": 32 << 20,
    "max_num_seqs": 16,
    "disable_log_stats": False,  # keeps the prefix-cache counters
}
TOLERANCE = 1e-5


def save_prm(base, folder, head, num_labels=2, separator="\n"):
    """A trained-PRM folder as the trainer leaves it (head and separator recorded in the config)."""
    model = load_prm(base, head=head, num_labels=num_labels)
    model.config.prm_step_separator = separator
    if head == "value":
        # Logit std ~1 over unit-RMS hidden states of width 128: scores spread over (0, 1) without saturating.
        torch.manual_seed(1)
        model.score.weight.data.normal_(0, 0.06)
        model.score.bias.data.normal_(0, 1.0)  # a bias vLLM failed to load would shift every score
    model.save_pretrained(folder)
    load_processor(base).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def question():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    # Over 128 tokens (one CPU KV block), so the question prefix is shareable; varied text keeps scores apart.
    grid = " ".join(f"Cell {i} holds {i * 7 % 13}." for i in range(24))
    return {"id": "q1", "prompt": f"<image>Which number is missing in the grid? {grid}", "images": [image]}


@pytest.fixture(
    scope="module",
    params=[("qwen2_vl", "value", 2), ("qwen2_5_vl", "generative", 2), ("qwen2_vl", "value", 1)],
    ids=["qwen2_vl-value", "qwen2_5_vl-generative", "qwen2_vl-soft-value"],
)
def pair(request, tmp_path_factory):
    """(PRMScorer, VLLMScorer) on the same PRM folder; the vLLM one built through the `vllm:` spec."""
    arch, head, num_labels = request.param
    root = tmp_path_factory.mktemp(f"{arch}-{head}-{num_labels}")
    base = build_tiny_vlm(root / "base", arch=arch, hidden_size=128, seed=0)
    folder = save_prm(base, root / "prm", head, num_labels)
    reference = PRMScorer.from_pretrained(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: starts in seconds
        # The `prm:vllm:` spec (a config's `prm_model_path` naming the PRM on vLLM) builds the vLLM scorer.
        defaults = {
            "max_model_len": 1024,
            "dtype": torch.float32,
            "llm_kwargs": ENGINE_KWARGS,
            "cache_dir": root / "views",
        }
        scorer = build_scorer(f"prm:vllm:{folder}", defaults=defaults)
    yield reference, scorer
    del scorer.llm
    gc.collect()


def prefix_cache_hits(llm) -> int:
    (hits,) = [m.value for m in llm.get_metrics() if m.name == "vllm:prefix_cache_hits"]
    return hits


def assert_close(got, expected):
    assert [len(row) for row in got] == [len(row) for row in expected]
    difference = max(abs(a - b) for g, e in zip(got, expected) for a, b in zip(g, e))
    assert difference < TOLERANCE, difference


def test_spec_picks_vllm_and_scores_equal_transformers(pair, question):
    reference, scorer = pair
    assert isinstance(scorer, VLLMScorer) and isinstance(scorer, StepScorer)
    assert scorer.step_separator == reference.step_separator == "\n" and scorer.head == reference.head
    group = random_candidates(0, 12) + [Candidate(steps=[STEP_TEXTS[0], STEP_TEXTS[4]])] * 2  # twins are scored once
    expected = reference.score_plain(question, group)
    got = scorer.score(question, group)
    assert_close(got, expected)
    spread = np.ptp(np.concatenate(expected))
    assert spread > 1e-3  # the scores differ between steps: equality is not a constant matching a constant
    assert got[-1] == got[-2]
    assert scorer.score(question, []) == []


def test_prefix_is_read_from_vllm_cache(pair, question):
    _, scorer = pair
    scorer.clear_cache()
    hits = prefix_cache_hits(scorer.llm)
    before = dict(scorer.counters)
    scorer.score(question, random_candidates(1, 8))
    prompts = scorer.counters["prompts"] - before["prompts"]
    computed = scorer.counters["computed_tokens"] - before["computed_tokens"]
    total = scorer.counters["prompt_tokens"] - before["prompt_tokens"]
    block = scorer.llm.llm_engine.vllm_config.cache_config.block_size
    prefix_tokens = len(scorer.processing_class.tokenizer(question["prompt"])["input_ids"])  # lower bound
    assert prefix_tokens >= block
    # Every prompt after the first finds at least the question's first full block cached, and computes no row for it.
    assert prefix_cache_hits(scorer.llm) - hits >= (prompts - 1) * block
    assert total - computed >= (prompts - 1) * block


def test_beam_rounds_reuse_earlier_steps(pair, question):
    reference, scorer = pair
    scorer.clear_cache()
    beams = [Candidate(steps=[STEP_TEXTS[i]]) for i in range(4)]
    for round_index in range(3):
        before = scorer.counters["known_steps"]
        assert_close(scorer.score(question, beams), reference.score_plain(question, beams))
        # Round r re-sends the r steps scored before: each is known (same tokens up to it), none recomputed.
        assert scorer.counters["known_steps"] - before == len(beams) * round_index
        beams = [
            Candidate(steps=b.steps + [STEP_TEXTS[(i + round_index) % len(STEP_TEXTS)]]) for i, b in enumerate(beams)
        ]
    # Kept scores belong to one question at a time (memory stays bounded over a dataset): after another question,
    # the first one's steps are computed again, not looked up.
    scorer.score({**question, "id": "q2", "prompt": question["prompt"] + " Be brief."}, beams)
    before = scorer.counters["known_steps"]
    assert_close(scorer.score(question, beams), reference.score_plain(question, beams))
    assert scorer.counters["known_steps"] == before


def test_step_end_inside_cached_blocks_is_rescored(pair, question):
    """A fresh scorer on a warm engine: the cache holds a long candidate's blocks, so a shorter candidate that is its
    prefix has step ends in cached blocks with no kept score; they are rescored without the cache, never guessed."""
    reference, scorer = pair
    long = Candidate(steps=STEP_TEXTS * 3)
    scorer.score(question, [long])
    fresh = VLLMScorer(scorer.llm, scorer.processing_class)
    short = Candidate(steps=STEP_TEXTS * 2)
    assert_close(fresh.score(question, [short]), reference.score_plain(question, [short]))
    assert fresh.counters["rescored"] == 1


def test_word_verdicts_pool_as_transformers_does(tmp_path, question):
    """A PRM judging perception steps word by word (`prm_word_verdicts`, no separator): the engine cuts and pools as
    `PRMScorer` does, read from the checkpoint, and the pooled caption score is the lowest of its words'."""
    base = build_tiny_vlm(tmp_path / "base", hidden_size=128, seed=0)
    folder = save_prm(base, tmp_path / "prm", "value", separator="")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "prm_word_verdicts": "perception"}))
    reference = PRMScorer.from_pretrained(folder)
    assert reference.layout.word_verdicts == "perception"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        defaults = {"max_model_len": 1024, "dtype": torch.float32, "llm_kwargs": ENGINE_KWARGS}
        scorer = build_scorer(f"prm:vllm:{folder}", defaults={**defaults, "cache_dir": tmp_path / "views"})
    caption = "The colors of the circles are ['red', 'blue', 'green'], and the square is ['yellow']."
    group = [
        Candidate(steps=[caption, STEP_TEXTS[3], STEP_TEXTS[4]], step_types=["perception", "reasoning", "reasoning"]),
        Candidate(steps=[STEP_TEXTS[1], STEP_TEXTS[4]], step_types=["perception", "reasoning"]),
        Candidate(steps=[caption, STEP_TEXTS[4]]),  # no step types: every step read at its end
    ]
    (got, lengths), (expected, expected_lengths) = (
        scorer.score_with_input_lengths(question, group),
        reference.score_with_input_lengths(question, group),
    )
    assert_close(got, expected)
    assert lengths == expected_lengths
    ends = reference.score_plain(question, group)
    assert got[0][0] <= ends[0][0] + TOLERANCE and abs(got[2][0] - ends[2][0]) < TOLERANCE  # pooled; not pooled
    del scorer.llm
    gc.collect()


def test_value_view_renames_only_the_head(tmp_path):
    base = build_tiny_vlm(tmp_path / "base", arch="qwen2_vl", hidden_size=128, seed=0)
    folder = save_prm(base, tmp_path / "prm", "value")
    view = vllm_checkpoint(folder, tmp_path / "cache")
    assert vllm_checkpoint(folder, tmp_path / "cache") == view  # reused, not rewritten
    with (
        safe_open(str(view / "model.safetensors"), "pt") as renamed,
        safe_open(str(folder / "model.safetensors"), "pt") as original,
    ):
        head = {"score.weight", "score.bias"}
        assert set(renamed.keys()) == (set(original.keys()) - head) | {f"language_model.{k}" for k in head}
        for key in head:
            assert torch.equal(renamed.get_tensor(f"language_model.{key}"), original.get_tensor(key))
        backbone = "model.layers.0.mlp.up_proj.weight"
        assert torch.equal(renamed.get_tensor(backbone), original.get_tensor(backbone))
    assert (view / "config.json").resolve() == (folder / "config.json").resolve()  # a symlink, not a copy
    assert json.loads((view / "config.json").read_text())["prm_head"] == "value"
    generative = save_prm(base, tmp_path / "gen", "generative")
    assert vllm_checkpoint(generative, tmp_path / "cache") == generative.resolve()  # nothing to convert
    assert not list((tmp_path / "cache" / "vllm").glob("*.partial-*"))


# ---- a text PRM (Math-Shepherd's layout, no image) ----------------------------------------------------------------

SHEPHERD = "peiyi9979/math-shepherd-mistral-7b-prm"
SHEPHERD_SOLUTIONS = [
    ["Step 1: 3 + 4 = 7", "Step 2: The answer is 7"],
    ["Step 1: She sells 16 - 3 - 4 = 9 eggs", "Step 2: 9 * 2 = 18 dollars", "Step 3: The answer is: 18"],
    ["Step 1: 2 / 2 = 1"],
    ["Step 1: 3 + 4 = 7", "Step 2: 9 * 2 = 18 dollars", "Step 3: The answer is 7"],
    ["Step 1: She sells 16 - 3 - 4 = 9 eggs", "Step 2: The answer is: 18"],
]


@pytest.fixture(scope="module")
def shepherd_hub(tmp_path_factory):
    """An offline hub cache holding a tiny Mistral causal LM (width 128: head size 32, as the CPU kernels need) with a
    sentencepiece-like tokenizer under Math-Shepherd's id, no PRM metadata: only the preset says how to score it (the
    "text" layout: `f"{question} {step} ки\\n{step} ки"`, P(+) against `-` at every step tag)."""
    from test_paper_prm import build_llama_like_tokenizer
    from transformers import MistralConfig, MistralForCausalLM

    from trl_vlprm.testing import offline_hub, save_to_hub_cache

    root = tmp_path_factory.mktemp("shepherd")
    tokenizer = build_llama_like_tokenizer()
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, sliding_window=None,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(5)
    MistralForCausalLM(config).save_pretrained(root / "prm")
    tokenizer.save_pretrained(root / "prm")
    assert not any(k.startswith("prm_") for k in json.loads((root / "prm" / "config.json").read_text()))
    save_to_hub_cache(root / "prm", SHEPHERD, cache_dir=root / "hub")
    with offline_hub(root), pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        yield root


@pytest.fixture(scope="module")
def shepherd_reference(shepherd_hub):
    scorer = PRMScorer.from_pretrained(SHEPHERD)
    assert scorer.head == "generative" and scorer.layout.name == "text" and scorer.layout.step_separator == " ки"
    return scorer


SHEPHERD_QUESTION = {"id": "s1", "prompt": "Janet has 3 apples and buys 4 more. How many apples does she have?"}


def max_step_difference(got, expected) -> float:
    assert [len(row) for row in got] == [len(row) for row in expected] and sum(map(len, expected)) > 0
    return max(abs(a - b) for g, e in zip(got, expected) for a, b in zip(g, e))


def test_text_prm_by_id_on_the_engine_equals_prm_scorer(shepherd_hub, shepherd_reference):
    engine = {"llm_kwargs": ENGINE_KWARGS, "dtype": "float32", "max_model_len": 512}
    scorer = build_scorer(f"vllm:{SHEPHERD}", defaults=engine)
    try:
        assert isinstance(scorer, VLLMScorer) and scorer.layout == shepherd_reference.layout
        candidates = [Candidate(steps=s) for s in SHEPHERD_SOLUTIONS]
        expected, expected_lengths = shepherd_reference.score_with_input_lengths(SHEPHERD_QUESTION, candidates)
        got, lengths = scorer.score_with_input_lengths(SHEPHERD_QUESTION, candidates)
        difference = max_step_difference(got, expected)
        print(f"in-process vLLM vs PRMScorer, text layout: max |dP(+)| = {difference:.2e}")
        assert difference < TOLERANCE
        assert lengths == expected_lengths
        assert np.ptp(np.concatenate(expected)) > 1e-3  # scores differ: no constant matching a constant
    finally:
        del scorer.llm
        gc.collect()


def test_text_prm_by_id_served_equals_prm_scorer(shepherd_hub, shepherd_reference):
    from trl_vlprm.guidance.server_scorer import ServerPRMScorer, prm_server_args
    from trl_vlprm.guidance.vllm_server import launch_vllm_server

    server_args = [
        "--served-model-name", "shepherd", "--enforce-eager", "--dtype", "float32", "--max-model-len", "512",
        "--max-num-seqs", "16", "--gpu-memory-utilization", "0.05", "--kv-cache-memory-bytes", str(32 << 20),
        "--seed", "0",
    ]  # fmt: skip
    with launch_vllm_server(prm_server_args(SHEPHERD), server_args, shepherd_hub / "serve.log", timeout=300) as url:
        scorer = ServerPRMScorer.from_pretrained(url, SHEPHERD)
        try:
            assert scorer.layout == shepherd_reference.layout
            candidates = [Candidate(steps=s) for s in SHEPHERD_SOLUTIONS]
            expected, expected_lengths = shepherd_reference.score_with_input_lengths(SHEPHERD_QUESTION, candidates)
            got, lengths = scorer.score_with_input_lengths(SHEPHERD_QUESTION, candidates)
            requests = scorer.counters["requests"]
            # The same PRM read as judging its first steps word by word: the served scorer cuts and pools them as
            # PRMScorer does (`PRMLayout.word_verdicts`, one hook in every scorer).
            typed = [Candidate(steps=c.steps, step_types=["perception"] + ["reasoning"] * 3) for c in candidates]
            worded = copy.copy(shepherd_reference)
            worded.layout = scorer.layout = replace(scorer.layout, word_verdicts="perception")
            got_words = scorer.score(SHEPHERD_QUESTION, typed)
        finally:
            scorer.close()
    difference = max_step_difference(got, expected)
    print(f"served vLLM vs PRMScorer, text layout: max |dP(+)| = {difference:.2e}")
    assert difference < TOLERANCE
    assert lengths == expected_lengths and requests == len(candidates)
    expected_words = worded.score(SHEPHERD_QUESTION, typed)
    assert max_step_difference(got_words, expected_words) < TOLERANCE
    assert any(abs(w[0] - e[0]) > 1e-4 for w, e in zip(expected_words, expected))  # the first steps were pooled
