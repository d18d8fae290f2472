"""Scripted testbed policy: measured error rates, error propagation, prefixes read back, gold correctness."""

from __future__ import annotations

import math

import pytest

from trl_vlprm.data.schema import RecordError
from trl_vlprm.guidance.policy import Candidate, Policy, StepScorer
from trl_vlprm.testbed import GoldOracleScorer, ScriptedPolicy, generate_puzzles, gold_steps, read_metadata
from trl_vlprm.testbed.families import parse_value

SAMPLES = 2000


@pytest.fixture(scope="module")
def questions():
    return list(generate_puzzles(120, seed=0))


def classify(question, continuation):
    """(perception error, reasoning error) of a full solution, judged from its text against the hidden state."""
    family, state = read_metadata(question)
    gold = gold_steps(family, state)
    observed = family.parse(state, continuation.steps[0])
    sound = family.explain(state, observed, family.solve(state, observed))
    return continuation.steps[0] != gold[0], continuation.steps[1] != sound


def within(measured: int, n: int, rate: float, sigmas: float = 4.0) -> bool:
    return abs(measured / n - rate) <= sigmas * math.sqrt(rate * (1 - rate) / n)


def test_implements_the_policy_and_scorer_protocols():
    assert isinstance(ScriptedPolicy(), Policy)
    assert ScriptedPolicy().step_separator == "\n"
    assert isinstance(GoldOracleScorer(), StepScorer)
    with pytest.raises(ValueError, match="perception_error_rate=1.5"):
        ScriptedPolicy(perception_error_rate=1.5)


@pytest.mark.parametrize("perception_rate,reasoning_rate", [(0.3, 0.2), (0.1, 0.4)])
def test_measured_error_rates_match_configured(questions, perception_rate, reasoning_rate):
    policy = ScriptedPolicy(perception_rate, reasoning_rate, seed=1)
    perception_errors = reasoning_errors = all_correct = 0
    wrong_after_misread = misread_only = 0
    for i in range(SAMPLES):
        question = questions[i % len(questions)]
        (solution,) = policy.sample_solutions(question, 1)
        perception, reasoning = classify(question, solution)
        perception_errors += perception
        reasoning_errors += reasoning
        all_correct += all(solution.gold_correct)
        # first-error convention: a step is correct iff no error happened at or before it
        assert solution.gold_correct == [not perception, not (perception or reasoning), not (perception or reasoning)]
        assert (solution.answer == question["answer"]) >= solution.gold_correct[-1]
        if reasoning and not perception:
            assert solution.answer != question["answer"]  # a slip always changes the conclusion
        if perception and not reasoning:
            misread_only += 1
            wrong_after_misread += solution.answer != question["answer"]
    assert within(perception_errors, SAMPLES, perception_rate), perception_errors
    assert within(reasoning_errors, SAMPLES, reasoning_rate), reasoning_errors
    assert within(all_correct, SAMPLES, (1 - perception_rate) * (1 - reasoning_rate)), all_correct
    assert wrong_after_misread / misread_only >= 0.8  # misreads mostly reach the answer (measured ~0.9)


def test_zero_and_full_error_rates(questions):
    perfect = ScriptedPolicy(0.0, 0.0, seed=0)
    for question in questions[:30]:
        (solution,) = perfect.sample_solutions(question, 1)
        assert solution.steps == question["completions"]
        assert solution.gold_correct == [True, True, True] and solution.answer == question["answer"]
    always_misreads = ScriptedPolicy(1.0, 0.0, seed=0)
    for question in questions[:30]:
        (solution,) = always_misreads.sample_solutions(question, 1)
        assert solution.gold_correct == [False, False, False]
        assert solution.steps[0] != question["completions"][0]


def test_a_misread_prefix_propagates_whoever_wrote_it(questions):
    misreader = ScriptedPolicy(1.0, 0.0, seed=3)
    careful = ScriptedPolicy(0.0, 0.0, seed=3)
    for question in questions[:60]:
        family, state = read_metadata(question)
        (first,) = misreader.sample_next_steps(question, [], 1)
        assert first.step_types == ["perception"] and first.gold_correct == [False] and not first.finished
        misread = family.parse(state, first.steps[0])
        (rest,) = careful.complete(question, first.steps, 1)
        assert rest.steps[0] == family.explain(state, misread, family.solve(state, misread))
        assert rest.answer == family.solve(state, misread) == parse_value(rest.steps[0])
        assert rest.gold_correct == [False, False] and rest.finished


def test_next_steps_one_at_a_time_and_finished_prefixes(questions):
    policy = ScriptedPolicy(0.0, 0.0, seed=0)
    question = questions[5]
    candidate = Candidate(steps=[], gold_correct=[])
    for expected_type in ["perception", "reasoning", "reasoning"]:
        continuations = policy.sample_next_steps(question, candidate.steps, 3)
        assert len(continuations) == 3 and all(len(c.steps) == 1 for c in continuations)
        assert continuations[0].step_types == [expected_type]
        candidate = candidate.extend(continuations[0])
    assert candidate.finished and candidate.answer == question["answer"]
    assert candidate.steps == question["completions"] and candidate.gold_correct == [True, True, True]
    (done,) = policy.complete(question, candidate.steps, 1)
    assert done.steps == [] and done.finished and done.answer == question["answer"]
    # a gold prefix with a reasoning step the policy did not write: it keeps the prefix's conclusion
    family, state = read_metadata(question)
    observed = family.observe(state)
    foreign = family.explain(state, observed, "17")
    (last,) = policy.complete(question, question["completions"][:1] + [foreign], 1)
    assert last.steps == ["Answer: 17"] and last.gold_correct == [False]


def test_unreadable_prefix_step_falls_back_to_a_true_reading(questions):
    policy = ScriptedPolicy(0.0, 0.0, seed=0)
    question = questions[2]
    (rest,) = policy.complete(question, ["I think it looks nice."], 1)
    assert rest.steps == question["completions"][1:]
    assert rest.answer == question["answer"]
    assert rest.gold_correct == [False, False]  # first-error: the prefix step is not true of the puzzle


def test_same_seed_same_samples_and_cost_counters(questions):
    a = ScriptedPolicy(0.3, 0.3, seed=9)
    b = ScriptedPolicy(0.3, 0.3, seed=9)
    first = [a.sample_solutions(q, 4) for q in questions[:10]]
    assert first == [b.sample_solutions(q, 4) for q in questions[:10]]
    tokens = sum(len(s.split()) for batch in first for c in batch for s in c.steps)
    assert a.stats.as_dict() == {"calls": 10, "sequences": 40, "tokens": tokens}
    assert all(c.num_tokens == sum(len(s.split()) for s in c.steps) for batch in first for c in batch)
    assert all("\n" not in s for batch in first for c in batch for s in c.steps)


def test_missing_metadata_is_named():
    with pytest.raises(RecordError, match="row q1: field 'metadata'"):
        ScriptedPolicy().sample_solutions({"id": "q1", "prompt": "<image>", "answer": "3"}, 1)


def test_gold_oracle_scores_are_the_gold_correctness(questions):
    policy = ScriptedPolicy(0.5, 0.5, seed=2)
    question = questions[0]
    candidates = [Candidate(steps=[], gold_correct=[]).extend(c) for c in policy.sample_solutions(question, 16)]
    scores = GoldOracleScorer().score(question, candidates)
    assert scores == [[1.0 if g else 0.0 for g in c.gold_correct] for c in candidates]
    assert {tuple(s) for s in scores} > {(1.0, 1.0, 1.0)}  # both right and wrong solutions appear
    with pytest.raises(ValueError, match="candidate 0 has no gold_correct"):
        GoldOracleScorer().score(question, [Candidate(steps=["a"])])
