"""HFPolicy semantics on a tiny random Qwen-VL built offline (it writes gibberish: only the contract is tested)."""

import pytest
import torch
from PIL import Image

from trl_vlprm.guidance.hf_policy import HFPolicy, _SeparatorStop
from trl_vlprm.guidance.policy import Policy
from trl_vlprm.guidance.solutions import question_messages, read_answer
from trl_vlprm.testing import build_tiny_vlm


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def model_dir(request, tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp(request.param), arch=request.param, seed=0)


@pytest.fixture(scope="module")
def question():
    return {"id": "q7", "prompt": "<image>How many circles are there?", "images": [Image.new("RGB", (64, 48), "red")]}


def make_policy(path, **kwargs):
    defaults = {"dtype": torch.float32, "seed": 0, "temperature": 1.0, "max_step_tokens": 12, "max_new_tokens": 30}
    return HFPolicy.from_pretrained(str(path), **{**defaults, **kwargs})


def test_is_a_policy(model_dir):
    assert isinstance(make_policy(model_dir), Policy)


def test_next_steps_stop_at_separator(model_dir, question):
    # A one-space separator is frequent in any byte-level output, so most samples stop on it well before the budget.
    policy = make_policy(model_dir, step_separator=" ")
    steps = policy.sample_next_steps(question, ["First step", "second step"], 6)
    assert len(steps) == 6
    for continuation in steps:
        assert len(continuation.steps) <= 1
        assert all(" " not in s and s == s.strip() for s in continuation.steps)
        assert 0 < continuation.num_tokens <= 12
    assert any(c.num_tokens < 12 and not c.finished for c in steps)  # stopped by the separator, not the budget
    assert policy.stats.as_dict() == {"calls": 1, "sequences": 6, "tokens": sum(c.num_tokens for c in steps)}


def test_prefix_is_continued(model_dir, question):
    policy = make_policy(model_dir)
    inputs = policy._inputs(question, ["Count the circles.", "There are 3 circles."])
    prompt = policy.tokenizer.decode(inputs["input_ids"][0])
    assert prompt.endswith("<|im_start|>assistant\nCount the circles.\n\nThere are 3 circles.\n\n")
    # The image placeholder was expanded to one pad token per merged 2x2 patch group of the image grid.
    assert prompt.count("<|image_pad|>") == int(inputs["image_grid_thw"].prod()) // 4 > 0


def test_complete_respects_budget(model_dir, question):
    policy = make_policy(model_dir, max_new_tokens=20)
    solutions = policy.complete(question, ["Count the circles."], 3)
    assert len(solutions) == 3
    for solution in solutions:
        assert solution.finished
        assert 0 < solution.num_tokens <= 20
        assert all(s and "\n\n" not in s for s in solution.steps)
    assert policy.sample_solutions(question, 2)[0].num_tokens <= 20
    assert policy.stats.calls == 2 and policy.stats.sequences == 5


def test_deterministic_under_seed(model_dir, question):
    def texts(seed):
        policy = make_policy(model_dir, seed=seed)
        return [c.steps for c in policy.sample_solutions(question, 3)] + [
            c.steps for c in policy.sample_next_steps(question, ["a step"], 3)
        ]

    assert texts(seed=3) == texts(seed=3)
    assert texts(seed=3) != texts(seed=4)


def test_greedy_samples_are_identical(model_dir, question):
    policy = make_policy(model_dir, temperature=0.0, seed=None)
    solutions = policy.complete(question, [], 3)
    assert [s.steps for s in solutions] == [solutions[0].steps] * 3
    assert solutions[0].num_tokens > 0 and solutions[1].num_tokens == 0  # generated once, counted once
    assert policy.complete(question, [], 1)[0].steps == solutions[0].steps


def test_bad_n(model_dir, question):
    with pytest.raises(ValueError, match="q7.*n=0"):
        make_policy(model_dir).sample_solutions(question, 0)


def test_separator_stop_criterion():
    class CharTokenizer:
        def batch_decode(self, rows, skip_special_tokens=True):
            return ["".join(chr(int(t)) for t in row) for row in rows]

    rows = [[ord(c) for c in text] for text in ["PPab\n\nc", "PP\n\nabc", "PPabcde"]]
    stop = _SeparatorStop(CharTokenizer(), prompt_length=2, separator="\n\n")
    # Leading blank output is not a step end; a separator after text is.
    assert stop(torch.tensor(rows), None).tolist() == [True, False, False]


def test_question_messages_place_images():
    messages = question_messages({"prompt": "A <image> and <image>?"}, system_prompt="Be brief.")
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert [p["type"] for p in messages[1]["content"]] == ["text", "image", "text", "image", "text"]
    chat = question_messages(
        {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}]}
    )
    assert chat[0]["content"][0] == {"type": "image"}


def test_read_answer_uses_question_options():
    question = {"options": ["red", "blue", "green"]}
    assert read_answer("The row lacks blue.\n\nSo the answer is (B).", question) == "B"
    assert read_answer("The answer is green", question) == "C"
    assert read_answer("The answer is 12.", {}) == "12"


@pytest.mark.parametrize("strategy", ["best_of_n", "beam_search", "dvts"])
def test_strategies_run_on_hf_policy(model_dir, question, strategy):
    from trl_vlprm.guidance.strategies import SearchConfig, get_strategy
    from trl_vlprm.testbed import RandomScorer

    policy = make_policy(model_dir, step_separator=" ", max_step_tokens=6, max_new_tokens=12)
    config = SearchConfig(n=4, beam_width=2, expansions_per_beam=2, max_steps=2)
    result = get_strategy(strategy)(question, policy, RandomScorer(seed=0), config)
    assert len(result.candidates) == {"best_of_n": 4, "beam_search": 2, "dvts": 2}[strategy]
    assert all(len(c.step_scores) == len(c.steps) and " " not in "".join(c.steps) for c in result.candidates)
    assert result.candidate_scores[result.chosen] == max(result.candidate_scores)
    assert result.policy_stats == policy.stats.as_dict() and result.policy_stats["tokens"] > 0


def _generated_ids(policy, question, n):
    inputs = policy._inputs(question, [])
    captured = []
    generate = policy.model.generate

    def spy(**kwargs):
        output = generate(**kwargs)
        captured.append(output[:, inputs["input_ids"].shape[1] :])
        return output

    policy.model.generate = spy
    try:
        policy.complete(question, [], n)
    finally:
        policy.model.generate = generate
    return captured[0]


def test_top_k_one_samples_the_greedy_path(model_dir, question):
    # top_k=1 leaves one token to sample from at every position: each hot sample is the greedy solution.
    greedy = make_policy(model_dir, temperature=0).complete(question, [], 1)[0]
    hot = make_policy(model_dir, temperature=5.0, top_p=1.0, top_k=1).complete(question, [], 4)
    assert all(c.steps == greedy.steps for c in hot)
    # Without the filter, temperature 5 on a random model leaves the greedy path (the test is not vacuous).
    free = make_policy(model_dir, temperature=5.0, top_p=1.0).complete(question, [], 4)
    assert any(c.steps != greedy.steps for c in free)


def test_repetition_penalty_reaches_generate(model_dir, question):
    # A huge penalty makes every token already in the sequence (prompt included) unpickable: no generated token
    # repeats, where plain greedy decoding of a random model loops.
    plain = _generated_ids(make_policy(model_dir, temperature=0, max_new_tokens=30), question, 1)[0].tolist()
    assert len(set(plain)) < len(plain)
    policy = make_policy(model_dir, temperature=0, max_new_tokens=30, repetition_penalty=1e6)
    penalised = _generated_ids(policy, question, 1)[0].tolist()
    prompt_ids = set(policy._inputs(question, [])["input_ids"][0].tolist())
    assert len(set(penalised)) == len(penalised) == 30
    assert not prompt_ids & set(penalised[:-1])
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        make_policy(model_dir, repetition_penalty=0)
