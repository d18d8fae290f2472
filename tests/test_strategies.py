"""Search strategies: pure selection rules with hand-set scores, runners on the testbed with known errors."""

import json
import math

import pytest

from trl_vlprm.data.answers import grade
from trl_vlprm.guidance.aggregation import aggregate
from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.strategies import (
    STRATEGIES,
    SearchConfig,
    get_strategy,
    majority_vote,
    question_answer_key,
    select_best_of_n,
    vote_tally,
    weighted_vote,
)
from trl_vlprm.testbed import GoldOracleScorer, RandomScorer, ScriptedPolicy, generate_puzzles

# The built-in aggregations that read step scores alone (what the GRPO reward, which has no input lengths, accepts).
STEP_AGGREGATIONS = ("last", "min", "mean", "prod")


def scored(step_scores, answer=None):
    return Candidate(
        steps=[f"s{i}" for i in range(len(step_scores))], finished=True, answer=answer, step_scores=list(step_scores)
    )


# ---------------------------------------------------------------- aggregation and pure selection functions


def test_aggregate_values():
    scores = [0.9, 0.5, 0.8]
    assert aggregate(scores, "last") == 0.8
    assert aggregate(scores, "min") == 0.5
    assert math.isclose(aggregate(scores, "mean"), 2.2 / 3)
    assert math.isclose(aggregate(scores, "prod"), 0.36)
    assert [aggregate([], how) for how in STEP_AGGREGATIONS] == [0.0] * 4
    with pytest.raises(ValueError, match="'median'"):
        aggregate(scores, "median")


def test_select_best_of_n_depends_on_aggregation():
    candidates = [scored([0.9, 0.2, 0.95]), scored([0.8, 0.8, 0.8]), scored([0.99, 0.99, 0.5])]
    picks = {how: select_best_of_n(candidates, how) for how in STEP_AGGREGATIONS}
    assert picks == {"last": 0, "min": 1, "mean": 2, "prod": 1}
    assert select_best_of_n([scored([0.5]), scored([0.5])], "min") == 0  # ties: lowest index
    with pytest.raises(ValueError, match="no candidates"):
        select_best_of_n([], "min")


def test_majority_vote_normalises_and_breaks_ties_by_first_answer():
    candidates = [scored([1], a) for a in ["C", "(b)", "B", "c", None, "b."]]
    assert vote_tally(candidates) == {"c": 2.0, "b": 3.0}
    assert majority_vote(candidates) == 1
    assert majority_vote([scored([1], a) for a in ["C", "B", "B", "C"]]) == 0
    assert majority_vote([scored([1], None)] * 3) is None


def test_weighted_vote_weighs_answers_by_prm():
    # Two weak votes for A lose to one confident vote for B, which plain majority would not allow.
    candidates = [scored([0.3], "A"), scored([0.3], "A"), scored([0.9], "B")]
    assert majority_vote(candidates) == 0
    assert weighted_vote(candidates, "last") == 2
    # Among the holders of the winning answer, the best-scored one is chosen.
    candidates = [scored([0.4], "A"), scored([0.7], "A"), scored([0.9], "B")]
    assert weighted_vote(candidates, "last") == 1
    assert weighted_vote([scored([0.5], None)], "last") is None


def test_search_config_validation_and_registry():
    with pytest.raises(ValueError, match="aggregation='max'"):
        SearchConfig(aggregation="max")
    with pytest.raises(ValueError, match="beam_width=0"):
        SearchConfig(beam_width=0)
    assert set(STRATEGIES) == {
        "greedy",
        "majority",
        "best_of_n",
        "weighted_vote",
        "beam_search",
        "dvts",
        "step_selection",
    }
    with pytest.raises(ValueError, match="unknown strategy 'mcts'"):
        get_strategy("mcts")


# ---------------------------------------------------------------- runners on the testbed


@pytest.fixture(scope="module")
def puzzles():
    return list(generate_puzzles(120, seed=0))


def scripted(seed=0):
    return ScriptedPolicy(perception_error_rate=0.3, reasoning_error_rate=0.3, seed=seed)


def correct(question, answer):
    return grade(answer, question["answer"], question["options"])


def run_all(strategy, puzzles, scorer, config, policy=None):
    policy = policy or scripted()
    return [get_strategy(strategy)(q, policy, scorer, config) for q in puzzles], policy


def accuracy(puzzles, results):
    return sum(correct(q, r.answer) for q, r in zip(puzzles, results)) / len(puzzles)


def test_best_of_n_with_oracle_reaches_pass_at_n_on_the_same_samples(puzzles):
    config = SearchConfig(n=4, aggregation="min")
    results, policy = run_all("best_of_n", puzzles, GoldOracleScorer(), config)
    # The same seed replays the same samples: the candidates kept are exactly what the policy sampled.
    replay = scripted()
    for q, r in zip(puzzles, results):
        assert [c.steps for c in r.candidates] == [c.steps for c in replay.sample_solutions(q, 4)]
        assert r.policy_stats == {
            "calls": 1,
            "sequences": 4,
            "tokens": sum(len(" ".join(c.steps).split()) for c in r.candidates),
        }
    # pass@N of the testbed: some sample is error-free (first-error gold; every error-free sample is right).
    pass_at_n = sum(any(all(c.gold_correct) for c in r.candidates) for r in results) / len(puzzles)
    error_free_picked = sum(all(r.candidates[r.chosen].gold_correct) for r in results) / len(puzzles)
    assert error_free_picked == pass_at_n
    assert all(correct(q, c.answer) for q, r in zip(puzzles, results) for c in r.candidates if all(c.gold_correct))
    # Answer-level: right whenever an error-free sample exists, else right only by luck (ties go to sample 0).
    for q, r in zip(puzzles, results):
        expected = correct(q, r.candidates[0].answer) if not any(all(c.gold_correct) for c in r.candidates) else True
        assert correct(q, r.answer) == expected
    single = sum(correct(q, r.candidates[0].answer) for q, r in zip(puzzles, results)) / len(puzzles)
    assert pass_at_n > single + 0.15  # 1 - (1 - 0.49)^4 = 0.93 against 0.49 in expectation


def test_best_of_n_with_random_scorer_matches_single_sample_accuracy(puzzles):
    results, _ = run_all("best_of_n", puzzles * 3, RandomScorer(seed=1), SearchConfig(n=4, aggregation="mean"))
    questions = puzzles * 3
    picked = accuracy(questions, results)
    single = sum(correct(q, c.answer) for q, r in zip(questions, results) for c in r.candidates) / (4 * len(questions))
    standard_error = math.sqrt(single * (1 - single) / len(questions))
    assert abs(picked - single) < 3 * standard_error


def test_beam_search_with_oracle_never_keeps_a_wrong_beam_over_a_correct_expansion(puzzles):
    config = SearchConfig(beam_width=2, expansions_per_beam=2, aggregation="min", max_steps=5)
    results, policy = run_all("beam_search", puzzles, GoldOracleScorer(), config)
    wrong_kept_with_alternative = 0
    for r in results:
        for step in r.details["iterations"]:
            kept = set(step["kept"])
            correct_expansions = {i for i, ok in enumerate(step["gold_ok"]) if ok}
            if any(not step["gold_ok"][i] for i in kept):
                wrong_kept_with_alternative += len(correct_expansions - kept)
            assert len(kept) == min(
                len(step["gold_ok"]),
                config.beam_width
                - sum(
                    1
                    for prior in r.details["iterations"][: step["depth"]]
                    for i in prior["kept"]
                    if prior["finished"][i]
                ),
            )
        assert 1 <= len(r.candidates) <= config.beam_width and all(c.finished for c in r.candidates)
        assert len(r.candidate_scores) == len(r.candidates)
    assert wrong_kept_with_alternative == 0
    # 3-step solutions: the first level has beam_width * expansions = 4 expansions, later levels 2 per beam.
    assert [len(s["gold_ok"]) for s in results[0].details["iterations"]] == [4, 4, 4]
    # The search finds an error-free solution whenever its 4 first steps hold a correct one and later steps do too;
    # it clearly beats a single sample.
    single, _ = run_all("greedy", puzzles, None, config)
    assert accuracy(puzzles, results) > accuracy(puzzles, single) + 0.2


def test_dvts_and_step_selection_follow_the_oracle(puzzles):
    config = SearchConfig(n=8, beam_width=4, aggregation="min")
    for strategy, walks, fan_out in (("dvts", 2, 4), ("step_selection", 1, 8)):
        results, policy = run_all(strategy, puzzles, GoldOracleScorer(), config)
        for r in results:
            assert len(r.candidates) == walks and all(c.finished and len(c.steps) == 3 for c in r.candidates)
            for step in r.details["steps"]:
                for walk in step["walks"]:
                    assert len(walk["gold_ok"]) == fan_out
                    # The kept step is correct whenever one of its siblings is.
                    assert walk["gold_ok"][walk["kept"]] == any(walk["gold_ok"])
            # One policy call per walk per step.
            assert r.policy_stats["calls"] == 3 * walks and r.policy_stats["sequences"] == 3 * walks * fan_out
        # A step is right with probability 0.7, so 4+ draws per step almost always hold a correct one.
        assert accuracy(puzzles, results) > 0.95


def test_greedy_and_majority(puzzles):
    config = SearchConfig(n=5)
    greedy, _ = run_all("greedy", puzzles, None, config)
    assert all(len(r.candidates) == 1 and r.chosen == 0 and r.candidate_scores == [] for r in greedy)
    assert all(r.policy_stats["calls"] == 1 and r.policy_stats["sequences"] == 1 for r in greedy)
    majority, _ = run_all("majority", puzzles, GoldOracleScorer(), config)
    for r in majority:
        counts = {}
        for c in r.candidates:
            counts[c.answer.casefold()] = counts.get(c.answer.casefold(), 0) + 1
        assert counts[r.answer.casefold()] == max(counts.values())
        assert sum(r.details["votes"].values()) == 5
        assert len(r.candidate_scores) == 5  # scored for the record, not for the choice
    # Errors scatter over wrong answers while right answers agree, so voting beats one sample.
    assert accuracy(puzzles, majority) > accuracy(puzzles, greedy) + 0.1


def test_weighted_vote_with_oracle_equals_oracle_best_of_n(puzzles):
    # With 0/1 oracle weights only error-free solutions carry weight, so the vote lands where best-of-N does.
    config = SearchConfig(n=4, aggregation="min")
    voted, _ = run_all("weighted_vote", puzzles, GoldOracleScorer(), config)
    best, _ = run_all("best_of_n", puzzles, GoldOracleScorer(), config)
    for v, b in zip(voted, best):
        assert [c.steps for c in v.candidates] == [c.steps for c in b.candidates]
        if any(all(c.gold_correct) for c in v.candidates):
            assert v.answer == b.answer and all(v.candidates[v.chosen].gold_correct)


def test_results_serialise_and_scorers_are_required(puzzles):
    result = get_strategy("beam_search")(puzzles[0], scripted(), GoldOracleScorer(), SearchConfig(beam_width=2))
    line = json.loads(json.dumps(result.to_dict()))
    assert line["id"] == puzzles[0]["id"] and line["strategy"] == "beam_search"
    assert line["candidates"][line["chosen"]]["answer"] == line["answer"]
    assert all(len(c["step_scores"]) == len(c["steps"]) == 3 for c in line["candidates"])
    for strategy in ("best_of_n", "weighted_vote", "beam_search", "dvts", "step_selection"):
        with pytest.raises(ValueError, match=f"'{strategy}' needs a step scorer"):
            get_strategy(strategy)(puzzles[0], scripted(), None, SearchConfig())
    with pytest.raises(ValueError, match="dvts: n=2 < beam_width=4"):
        get_strategy("dvts")(puzzles[0], scripted(), GoldOracleScorer(), SearchConfig(n=2, beam_width=4))


def test_scorer_shape_is_checked(puzzles):
    class ShortScorer:
        def score(self, question, candidates):
            return [[0.5] for _ in candidates]

    with pytest.raises(ValueError, match=f"question {puzzles[0]['id']}: candidate 0: scorer returned 1 scores for 3"):
        get_strategy("best_of_n")(puzzles[0], scripted(), ShortScorer(), SearchConfig(n=2))


def test_question_answer_key_merges_letters_and_option_text():
    key = question_answer_key({"options": ["red", "blue", "green"]})
    candidates = [scored([1], a) for a in ["blue", "(B)", "green", "Blue."]]
    assert [key(c.answer) for c in candidates] == ["b", "b", "c", "b"]
    assert vote_tally(candidates, key=key) == {"b": 3.0, "c": 1.0}
    assert majority_vote([scored([1], "green"), scored([1], "B"), scored([1], "blue")], key) == 1
    assert key(None) is None


def test_search_stops_at_max_steps_and_completes_open_solutions(puzzles):
    config = SearchConfig(n=4, beam_width=2, expansions_per_beam=2, max_steps=1)
    beam = get_strategy("beam_search")(puzzles[0], scripted(), GoldOracleScorer(), config)
    assert len(beam.details["iterations"]) == 1 and beam.details["completed_at_max_steps"] == 2
    assert [len(c.steps) for c in beam.candidates] == [3, 3] and all(c.finished for c in beam.candidates)
    walk = get_strategy("step_selection")(puzzles[0], scripted(), GoldOracleScorer(), config)
    assert len(walk.details["steps"]) == 1 and len(walk.candidates[0].steps) == 3
    assert walk.policy_stats["calls"] == 2  # one step sampled, then one completion
