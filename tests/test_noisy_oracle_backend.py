"""The `noisy_oracle` scorer backend: one file registers it, and every runner reaches it by spec."""

import math

import pytest

from trl_vlprm.eval.eval_tts import EvalTTSConfig, run
from trl_vlprm.guidance.backends import build_scorer
from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles
from trl_vlprm.types import Candidate


@pytest.fixture(scope="module")
def question_and_candidates():
    question = generate_puzzles(1, seed=2)[0]
    solutions = ScriptedPolicy(0.4, 0.4, seed=1).sample_solutions(question, 400)
    return question, [Candidate(s.steps, gold_correct=s.gold_correct) for s in solutions]


def test_flip_rate_sets_the_step_accuracy(question_and_candidates):
    question, candidates = question_and_candidates
    gold = [[float(g) for g in c.gold_correct] for c in candidates]
    assert build_scorer("noisy_oracle:flip_rate=0.0").score(question, candidates) == gold
    assert build_scorer("noisy_oracle:flip_rate=1.0").score(question, candidates) == [[1 - g for g in s] for s in gold]
    scores = build_scorer("noisy_oracle:flip_rate=0.25", seed=3).score(question, candidates)
    flips = [s != g for ss, gs in zip(scores, gold) for s, g in zip(ss, gs)]
    steps = len(flips)
    assert steps > 1000  # a binomial share within 4 standard deviations of the rate
    assert abs(sum(flips) / steps - 0.25) < 4 * math.sqrt(0.25 * 0.75 / steps)
    assert build_scorer("noisy_oracle:flip_rate=0.25", seed=3).score(question, candidates) == scores  # seeded
    with pytest.raises(ValueError, match=r"flip_rate must be in \[0, 1\]"):
        build_scorer("noisy_oracle:flip_rate=1.5")


def test_evaluation_sweep_reads_the_spec(tmp_path):
    config = EvalTTSConfig(
        benchmarks=["testbed:0,limit=6"],
        scorers=["oracle", "inverse@noisy_oracle:flip_rate=1.0"],
        selections=["best_of_n:min", "pass@n"],
        n_values=[4],
        num_subsamples=1,
        output_dir=str(tmp_path),
    )
    rows = {(r["scorer"], r["selection"]): r["accuracy"] for r in run(config)}
    # The oracle picks an error-free sample whenever one exists; the always-wrong scorer never does better.
    assert rows[("oracle", "best_of_n:min")] >= rows[("inverse", "best_of_n:min")]
    assert rows[("oracle", "best_of_n:min")] <= rows[("-", "pass@n")]
