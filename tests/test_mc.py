"""MC step labels on a toy chain policy whose step errors and MC outcomes are known exactly."""

from __future__ import annotations

import random

import pytest

from trl_vlprm.guidance.policy import Continuation, PolicyStats
from trl_vlprm.labeling.mc import MCConfig, Rollout, label_rollout, mc_score, sample_rollouts


def exact_grader(prediction, gold, options=None):
    return prediction == gold


class ToyPolicy:
    """Solutions of `num_steps` steps; a step slips with `error_rate`; a slipped solution answers wrong unless lucky.

    Step text carries a serial so identical prefixes never collide; the first two steps are perception steps.
    """

    step_separator = "\n\n"

    def __init__(self, error_rate=0.2, lucky_rate=0.0, num_steps=6, seed=0, sleep=0.0):
        self.error_rate, self.lucky_rate, self.num_steps, self.sleep = error_rate, lucky_rate, num_steps, sleep
        self.rng = random.Random(seed)
        self.stats = PolicyStats()
        self.serial = 0

    def _continue(self, question, prefix):
        slipped = any("slip" in step for step in prefix)
        steps, gold, types = [], [], []
        for i in range(len(prefix), self.num_steps):
            slip = self.rng.random() < self.error_rate
            self.serial += 1
            steps.append(f"step {i} {'slip' if slip else 'ok'} #{self.serial}")
            gold.append(not slip)
            types.append("perception" if i < 2 else "reasoning")
            slipped |= slip
        right = not slipped or self.rng.random() < self.lucky_rate
        answer = str(question["answer"]) if right else "wrong"
        return Continuation(steps, True, answer, types, gold, num_tokens=5 * len(steps))

    def complete(self, question, prefix, n):
        if self.sleep:
            import time

            time.sleep(self.sleep)
        out = [self._continue(question, prefix) for _ in range(n)]
        self.stats.record(out)
        return out

    def sample_solutions(self, question, n):
        return self.complete(question, [], n)

    def sample_next_steps(self, question, prefix, n):
        raise NotImplementedError


def toy_questions(n, with_image=True):
    from PIL import Image

    return [
        {
            "id": f"q{i}",
            "prompt": ("<image>" if with_image else "") + f"What is {i}+1?",
            "images": [Image.new("RGB", (8, 6), (40 * i % 255, 20, 90))] if with_image else [],
            "answer": str(i + 1),
            "options": [],
            "category": "toy",
        }
        for i in range(n)
    ]


def slipped_rollout(num_steps, first_slip):
    steps = [f"step {i} {'slip' if i == first_slip else 'ok'} #x{i}" for i in range(num_steps)]
    return Rollout(steps, ["reasoning"] * num_steps, [i != first_slip for i in range(num_steps)], "wrong", False)


def test_sample_rollouts_grades_every_answer_and_counts_the_call():
    policy = ToyPolicy(error_rate=0.3, seed=1)
    question = toy_questions(1)[0]
    rollouts, cost = sample_rollouts(policy, question, 16, exact_grader)
    assert len(rollouts) == 16
    for rollout in rollouts:
        assert rollout.correct == (rollout.answer == "1")
        assert rollout.correct == all(rollout.gold_correct)  # no luck: right iff no slip
        assert len(rollout.steps) == len(rollout.step_types) == 6
    assert cost.as_dict() == {"calls": 1, "sequences": 16, "tokens": 16 * 30}


def test_sample_rollouts_needs_an_answer():
    with pytest.raises(Exception, match="q0.*answer"):
        sample_rollouts(ToyPolicy(), {"id": "q0", "prompt": "x", "images": []}, 2, exact_grader)


def test_every_step_scores_each_prefix_and_spends_one_call_per_estimate():
    policy = ToyPolicy(error_rate=0.0, num_steps=5)  # completions never slip: a prefix succeeds iff it has no slip
    rollout = slipped_rollout(5, first_slip=2)
    result = label_rollout(policy, toy_questions(1)[0], rollout, MCConfig(4, 0.0, "every_step"), exact_grader)
    assert result.scores == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert result.labels == [True, True, False, False, False]
    assert result.first_error == 2
    assert result.num_estimates == 4  # the full prefix is the rollout's own graded answer
    assert result.cost.as_dict() == {"calls": 4, "sequences": 16, "tokens": 5 * (4 * 4 + 4 * 3 + 4 * 2 + 4 * 1)}
    assert policy.stats.calls == 4


@pytest.mark.parametrize("first_slip", [0, 1, 4, 7, 9])
def test_binary_search_finds_the_first_error_in_log_steps(first_slip):
    policy = ToyPolicy(error_rate=0.0)
    rollout = slipped_rollout(10, first_slip)
    result = label_rollout(policy, toy_questions(1)[0], rollout, MCConfig(2, 0.0, "binary_search"), exact_grader)
    assert result.first_error == first_slip
    assert result.labels == [i < first_slip for i in range(10)]
    assert result.num_estimates <= 4 == (10 - 1).bit_length()
    assert result.cost.calls == result.num_estimates
    measured = [i for i, s in enumerate(result.scores) if s is not None]
    assert all(result.scores[i] == (1.0 if i < first_slip else 0.0) for i in measured)


def test_binary_search_spends_nothing_on_a_right_rollout():
    policy = ToyPolicy(error_rate=0.0)
    rollout = Rollout([f"s{i}" for i in range(6)], [None] * 6, None, "1", True)
    result = label_rollout(policy, toy_questions(1)[0], rollout, MCConfig(8), exact_grader)
    assert result.labels == [True] * 6 and result.first_error is None
    assert result.num_estimates == 0 and policy.stats.calls == 0


def test_mc_score_is_the_share_of_successful_completions():
    question = toy_questions(1)[0]
    assert mc_score(ToyPolicy(error_rate=0.0), question, ["step 0 ok"], 10, exact_grader) == 1.0
    lucky = mc_score(ToyPolicy(error_rate=0.0, lucky_rate=0.5, seed=3), question, ["step 0 slip"], 400, exact_grader)
    assert 0.42 < lucky < 0.58


def test_threshold_turns_scores_into_labels():
    policy = ToyPolicy(error_rate=0.0, lucky_rate=0.3, seed=5)
    rollout = slipped_rollout(4, first_slip=1)
    loose = label_rollout(policy, toy_questions(1)[0], rollout, MCConfig(50, 0.0, "every_step"), exact_grader)
    strict = label_rollout(policy, toy_questions(1)[0], rollout, MCConfig(50, 0.5, "every_step"), exact_grader)
    assert loose.labels[:3] == [True, True, True]  # a lucky completion keeps the slipped prefixes "good"
    assert strict.labels[:3] == [True, False, False]


def test_mc_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mode"):
        MCConfig(mode="every")
    with pytest.raises(ValueError, match="num_completions"):
        MCConfig(num_completions=0)
    with pytest.raises(ValueError, match="threshold"):
        MCConfig(threshold=1.0)


@pytest.mark.parametrize("first_slip", [0, 2, 4])
def test_every_step_until_zero_stops_at_the_first_zero(first_slip):
    # The paper's MC: prefixes in order, estimation ends at the first prefix no completion rescues.
    policy = ToyPolicy(error_rate=0.0, num_steps=6)
    rollout = slipped_rollout(6, first_slip)
    config = MCConfig(4, 0.0, "every_step_until_zero")
    result = label_rollout(policy, toy_questions(1)[0], rollout, config, exact_grader)
    assert result.labels == [i < first_slip for i in range(6)] and result.first_error == first_slip
    assert result.scores == [1.0] * first_slip + [0.0] + [None] * (5 - first_slip)
    assert result.num_estimates == first_slip + 1 == policy.stats.calls  # every_step would spend 5
    every = label_rollout(
        ToyPolicy(error_rate=0.0, num_steps=6),
        toy_questions(1)[0],
        rollout,
        MCConfig(4, 0.0, "every_step"),
        exact_grader,
    )
    assert every.labels == result.labels and every.num_estimates == 5


def test_every_step_until_zero_keeps_a_low_but_nonzero_step_and_goes_on():
    # Lucky completions give a slipped prefix a score above 0: it is not where the estimation stops.
    policy = ToyPolicy(error_rate=0.0, lucky_rate=0.5, num_steps=6, seed=3)
    rollout = slipped_rollout(6, first_slip=1)
    result = label_rollout(
        policy, toy_questions(1)[0], rollout, MCConfig(16, 0.0, "every_step_until_zero"), exact_grader
    )
    measured = [s for s in result.scores if s is not None]
    assert 0.0 < result.scores[1] < 1.0 and len(measured) == 6  # never 0 before the rollout's own wrong answer
    assert result.labels == [True] * 5 + [False]


def test_a_registered_mc_mode_is_a_labelling_setting():
    """MC modes are the project's Registry: a mode registered at its definition labels rollouts and is accepted by
    `LabelConfig.mc_mode`; a typo lists the modes (it was an if-chain with a tuple of three names)."""
    from trl_vlprm.labeling.config import LabelConfig
    from trl_vlprm.labeling.mc import MC_MODES

    @MC_MODES.register("last_prefix_only")
    def last_prefix_only(estimator, n):  # one estimate, before the last step; every step takes its verdict
        return [estimator.good(n - 2)] * n

    try:
        policy = ToyPolicy(error_rate=0.0, num_steps=5)
        result = label_rollout(
            policy, toy_questions(1)[0], slipped_rollout(5, 2), MCConfig(3, 0.0, "last_prefix_only"), exact_grader
        )
        assert result.labels == [False] * 5 and result.scores == [None, None, None, 0.0, None]
        assert result.num_estimates == 1 and policy.stats.calls == 1
        assert LabelConfig(mc_mode="last_prefix_only", show_progress=False).mc_config().mode == "last_prefix_only"
    finally:
        MC_MODES.unregister("last_prefix_only")
    with pytest.raises(ValueError, match=r"LabelConfig.mc_mode='binary': .*available: binary_search, every_step,"):
        LabelConfig(mc_mode="binary")
    with pytest.raises(ValueError, match=r"LabelConfig.disagreement='keep'; expected one of \('drop', 'weight'\)"):
        LabelConfig(disagreement="keep")
