"""The paper's whole-solution reward and selection, against a reference written from its code.

Reference: theogbrand/vlprm, eval/tts_eval/reward_guided_search/VisualPRMv2.py (`inference_single`: softmax over the
`+`/`-` logits at the last position, -1 when the argmax is `-`, else P(+)^0.3 / input_ids.shape[1]^0.6) and
vllm_bon_greedy_search_no_template.py (selection: the first strictly highest reward above -1; when every candidate
is -1, the first with the lowest P(-)).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from trl_vlprm.guidance.aggregation import aggregate, paper_reward, rank_key
from trl_vlprm.guidance.policy import Candidate, Continuation, PolicyStats
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.guidance.strategies import SearchConfig, run_best_of_n, run_step_selection, select_best_of_n
from trl_vlprm.guidance.strategies.base import whole_solutions
from trl_vlprm.modeling.encoding import encode_steps
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_vlm

# ---------------------------------------------------------------- the reference, written from the paper's code


def reference_inference_single(model, input_ids, vision_inputs, pos_id, neg_id):
    """VisualPRMv2.inference_single on already-built inputs: one plain forward, the last position read."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, **vision_inputs).logits
    allowed = torch.tensor([pos_id, neg_id])
    masked = logits[:, -1, :][:, allowed]
    probs = F.softmax(masked, dim=-1)
    negative = bool(allowed[masked.argmax(dim=-1)][0] == neg_id)
    positive_prob, negative_prob = probs[0][0].item(), probs[0][1].item()
    reward = -1 if negative else positive_prob**0.3 / input_ids.shape[1] ** 0.6
    return {"positive_prob": positive_prob, "negative_prob": negative_prob, "reward_score": reward}


def reference_select(results):
    """The paper's "enhanced greedy selection" over the candidates' `inference_single` results."""
    max_reward, max_idx = -1, -1
    for idx, result in enumerate(results):
        if result["reward_score"] > max_reward:
            max_reward, max_idx = result["reward_score"], idx
    if max_idx == -1:
        best_negative = float("inf")
        for idx, result in enumerate(results):
            if result["reward_score"] == -1 and result["negative_prob"] < best_negative:
                best_negative, max_idx = result["negative_prob"], idx
    return max_idx


# ---------------------------------------------------------------- pure functions


def test_paper_reward_values():
    assert paper_reward(0.9, 100) == pytest.approx(0.9**0.3 / 100**0.6, rel=1e-12)
    assert paper_reward(0.49, 10) == -1.0
    assert paper_reward(0.5, 10) == pytest.approx(0.5**0.3 / 10**0.6)  # a logit tie is argmax index 0: "+"
    # Length-normalised: of two equally confident solutions the shorter one wins, and length can beat confidence.
    assert paper_reward(0.8, 200) > paper_reward(0.8, 400)
    assert paper_reward(0.6, 200) > paper_reward(0.99, 400)
    with pytest.raises(ValueError, match="input_length must be >= 1"):
        paper_reward(0.9, 0)


def test_aggregate_paper_reads_the_last_step_and_its_length():
    assert aggregate([0.1, 0.9], "paper", [50, 80]) == pytest.approx(0.9**0.3 / 80**0.6)
    assert aggregate([0.9, 0.2], "paper", [50, 80]) == -1.0
    assert aggregate([], "paper", []) == -1.0
    with pytest.raises(ValueError, match="needs the PRM input length of every step: 2 scores, none"):
        aggregate([0.9, 0.8], "paper")
    with pytest.raises(ValueError, match="2 scores, 1 input lengths"):
        aggregate([0.9, 0.8], "paper", [3])


@pytest.mark.parametrize(
    "probs, lengths",
    [
        ([0.7, 0.9, 0.6, 0.95], [300, 500, 120, 900]),  # all positive: length decides against the most confident
        ([0.3, 0.8, 0.1, 0.8], [100, 400, 50, 400]),  # mixed, with an exact tie between 1 and 3: first wins
        ([0.3, 0.45, 0.1, 0.45], [100, 400, 50, 90]),  # all negative: lowest P(-), first of a tie
        ([0.2], [10]),
    ],
)
def test_selection_matches_reference(probs, lengths):
    candidates = [
        Candidate(steps=["s"], finished=True, step_scores=[p], step_input_lengths=[n]) for p, n in zip(probs, lengths)
    ]
    results = [
        {"positive_prob": p, "negative_prob": 1 - p, "reward_score": -1 if p < 0.5 else p**0.3 / n**0.6}
        for p, n in zip(probs, lengths)
    ]
    assert select_best_of_n(candidates, "paper") == reference_select(results)
    keys = [rank_key(c.step_scores, "paper", c.step_input_lengths) for c in candidates]
    assert [k[0] for k in keys] == pytest.approx([r["reward_score"] for r in results])


def test_empty_candidate_ranks_last():
    empty = Candidate(steps=[], finished=True)
    wrong = Candidate(steps=["s"], step_scores=[0.01], step_input_lengths=[5])
    assert select_best_of_n([empty, wrong], "paper") == 1


# ---------------------------------------------------------------- a tiny generative PRM against the reference


def random_image(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (70, 90, 3), dtype=np.uint8))


QUESTION = {"id": "q1", "prompt": "<image>Which number is missing?", "images": [random_image(0)]}
SOLUTIONS = [
    ["There are 3 circles.", "So 3 + 4 = 7.", "The answer is 7."],
    ["Count the sides: 6.", "The answer is (B)."],
    ["The colours alternate red, blue, red.", "So the next one is blue.", "Answer: blue"],
    ["7"],
    ["Look at the clock.", "It shows 3.", "Add four hours.", "It is 7.", "The answer is 7."],
    ["The missing number is 12 because each row sums to 20.", "Answer: 12"],
    ["Hmm.", "Answer: 4"],
    ["The larger circle holds the larger number, so 9.", "Answer: 9"],
]


def last_hidden_states(scorer, question, candidates):
    """Final (normed) hidden state at the score position of each candidate, from plain forwards."""
    prefix = scorer._encode_prefix(question)
    states = []
    for candidate in candidates:
        step_ids = [t for ids in encode_steps(scorer.tokenizer, candidate.steps, scorer.step_separator) for t in ids]
        inputs = full_inputs(scorer, prefix, step_ids)
        with torch.no_grad():
            states.append(scorer._backbone()(**inputs).last_hidden_state[0, -1])
    return torch.stack(states)


def full_inputs(scorer, prefix, step_ids):
    inputs = dict(scorer._vision_inputs(prefix))
    inputs["input_ids"] = torch.cat([prefix.input_ids, torch.tensor([step_ids])], dim=1)
    suffix_types = torch.zeros((1, len(step_ids)), dtype=torch.long)
    inputs["mm_token_type_ids"] = torch.cat([prefix.mm_token_type_ids, suffix_types], dim=1)
    return inputs


@pytest.fixture(scope="module")
def prm(tmp_path_factory):
    path = build_tiny_vlm(tmp_path_factory.mktemp("prm"), arch="qwen2_5_vl", seed=0)
    model = load_prm(path, head="generative")
    scorer = PRMScorer(model, load_processor(path), batch_size=3)
    pos_id, neg_id = scorer.token_ids
    # A random tiny model gives every whole solution about the same P(+). Rewriting the "+"/"-" rows of the LM head
    # as +v/-v, with v orthogonal to the mean final state of QUESTION's solutions, centres their logit margins on 0
    # so that both branches of the reward ("+" and "-" wins) occur among them.
    states = last_hidden_states(scorer, QUESTION, whole_solutions([Candidate(steps=s) for s in SOLUTIONS], "\n\n"))
    mean = states.mean(0)
    v = states[0] - states[1]
    v = v - (v @ mean) / (mean @ mean) * mean
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[pos_id] = 20.0 * v / v.norm()
        head[neg_id] = -head[pos_id]
    return scorer


def test_whole_solution_reward_and_choice_equal_the_reference(prm):
    question = QUESTION
    sampled = [Candidate(steps=list(s), finished=True) for s in SOLUTIONS]
    wholes = whole_solutions(sampled, "\n\n")
    scores, lengths = prm.score_with_input_lengths(question, wholes)
    assert [len(s) for s in scores] == [1] * len(SOLUTIONS)

    prefix = prm._encode_prefix(question)
    pos_id, neg_id = prm.token_ids
    references = []
    for candidate in wholes:
        step_ids = [t for ids in encode_steps(prm.tokenizer, candidate.steps, prm.step_separator) for t in ids]
        inputs = full_inputs(prm, prefix, step_ids)
        input_ids = inputs.pop("input_ids")
        references.append(reference_inference_single(prm.model, input_ids, inputs, pos_id, neg_id))
        # The input length counts every input token, the image's pad tokens included.
        assert lengths[len(references) - 1] == [input_ids.shape[1]]
    image_tokens = int(
        (prefix.input_ids == prm.processing_class.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()
    )
    assert image_tokens > 0 and all(n[0] > image_tokens for n in lengths)

    np.testing.assert_allclose([s[0] for s in scores], [r["positive_prob"] for r in references], atol=1e-5)
    for candidate, s, n in zip(wholes, scores, lengths):
        candidate.step_scores, candidate.step_input_lengths = s, n
    rewards = [aggregate(c.step_scores, "paper", c.step_input_lengths) for c in wholes]
    np.testing.assert_allclose(rewards, [r["reward_score"] for r in references], rtol=1e-4)
    # Both branches of the reward occur, so the choice below is not decided by one rule alone.
    assert any(r == -1 for r in rewards) and any(r > 0 for r in rewards), [s[0] for s in scores]
    assert select_best_of_n(wholes, "paper") == reference_select(references)
    # All judged wrong: the reference falls back to the lowest P(-); so do we.
    negatives = [i for i, r in enumerate(rewards) if r == -1]
    assert select_best_of_n([wholes[i] for i in negatives], "paper") == reference_select(
        [references[i] for i in negatives]
    )


class ListPolicy:
    """Hands out fixed solutions (and fixed next steps), so the strategy runs on the real PRM deterministically."""

    step_separator = "\n\n"

    def __init__(self, solutions):
        self.solutions, self.stats = solutions, PolicyStats()

    def sample_solutions(self, question, n):
        out = [Continuation(steps=list(s), finished=True, answer=s[-1]) for s in self.solutions[:n]]
        self.stats.record(out)
        return out

    def sample_next_steps(self, question, prefix, n):
        depth = len(prefix)
        out = [
            Continuation(steps=[s[depth]], finished=depth + 1 == len(s), answer=s[-1] if depth + 1 == len(s) else None)
            for s in self.solutions[:n]
            if len(s) > depth
        ]
        self.stats.record(out)
        return out

    def complete(self, question, prefix, n):
        return self.sample_solutions(question, n)


def test_best_of_n_paper_protocol_scores_each_solution_once(prm):
    question = {"id": "q2", "prompt": "<image>Which number is missing?", "images": [random_image(1)]}
    policy = ListPolicy(SOLUTIONS)
    result = run_best_of_n(
        question, policy, prm, SearchConfig(n=len(SOLUTIONS), aggregation="paper", whole_solution=True)
    )
    assert [c.steps for c in result.candidates] == [["\n\n".join(s)] for s in SOLUTIONS]
    assert all(len(c.step_scores) == len(c.step_input_lengths) == 1 for c in result.candidates)
    expected = max(
        range(len(SOLUTIONS)),
        key=lambda i: rank_key(result.candidates[i].step_scores, "paper", result.candidates[i].step_input_lengths),
    )
    assert result.chosen == expected and result.answer == SOLUTIONS[expected][-1]
    assert result.candidate_scores[expected] == max(result.candidate_scores)
    assert result.details == {"aggregation": "paper", "whole_solution": True}


def test_step_selection_with_paper_rule_picks_by_step_reward(prm):
    question = {"id": "q3", "prompt": "<image>Which number is missing?", "images": [random_image(2)]}
    solutions = [s for s in SOLUTIONS if len(s) >= 2]
    result = run_step_selection(
        question, ListPolicy(solutions), prm, SearchConfig(n=len(solutions), aggregation="paper")
    )
    first = result.details["steps"][0]["walks"][0]
    # The first step kept is the one the reference would pick among the first steps, each read with its own length.
    firsts = [Candidate(steps=[s[0]]) for s in solutions]
    scores, lengths = prm.score_with_input_lengths(question, firsts)
    results = [
        {
            "positive_prob": p[0],
            "negative_prob": 1 - p[0],
            "reward_score": -1 if p[0] < 0.5 else p[0] ** 0.3 / n[0] ** 0.6,
        }
        for p, n in zip(scores, lengths)
    ]
    assert first["kept"] == reference_select(results)
    assert first["scores"] == pytest.approx([r["reward_score"] for r in results])
    assert result.candidates[0].steps[0] == solutions[first["kept"]][0]
    assert math.isfinite(result.candidate_scores[0])
