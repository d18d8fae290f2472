"""Training with the library produces a PRM that helps: the guard against a silently uninformative PRM.

`CPURecipe` (seeded) trains a tiny VL-PRM on the learnable testbed tier, once for the module; then, each claim with
a statistical margin rather than a point threshold:

- its held-out bad-step F1, per step type, beats the best constant verdict (calling every step bad) by a bootstrap
  margin, and its 99% bootstrap interval lies above the recipe's target;
- swapping each question's image for another's moves its perception scores (it looks at the image);
- with a policy that misreads some questions systematically, its best-of-8 beats a random pick and majority vote:
  where the two picks disagree, the PRM's is the right one more often than not (99% Wilson interval above 1/2);
- on the real PuzzleVQA process bench (gold captions against perturbed ones) it runs end to end with a finite score
  for every step, and its ranking of gold above perturbed captions is reported against chance.

A bug that left the PRM uninformative (labels on the wrong tokens, scores read at the wrong positions, selection
reversed) fails these: with the untrained model the F1s fall below the constant verdict, the image swap misses
its bound and best-of-8 loses to random. Slow: one training run of the recipe (2,400 steps, about 90 s on a quiet
2-core machine; the whole file about 2.5 minutes).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from trl_vlprm.cpu_recipe import CPURecipe

pytestmark = pytest.mark.slow

Z_99 = 2.576  # two-sided 99% normal quantile: a one-sided test at 0.5%
# The recipe's promise (docs/testbed.md): held-out bad-step F1 per type, on the held-out distribution below.
TARGET_F1 = {"perception": 0.6, "reasoning": 0.8}
HELD_OUT = {"perception_error_rate": 0.3, "reasoning_error_rate": 0.3}
SYSTEMATIC = {"perception_error_rate": 0.2, "reasoning_error_rate": 0.2, "systematic_share": 0.4,
              "systematic_rate": 0.6}  # fmt: skip


def wilson_interval(successes: int, trials: int, z: float = Z_99) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (good at small counts and near 0 or 1)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return centre - half, centre + half


def test_the_recipe_warms_up_over_its_share_of_the_steps(tmp_path):
    """`warmup_ratio` reaches transformers as `warmup_steps` < 1: transformers 5 reads that as a share of the steps."""
    recipe = CPURecipe()
    args = recipe.training_args(tmp_path)
    assert args.get_warmup_steps(recipe.max_steps) == math.ceil(recipe.warmup_ratio * recipe.max_steps) == 120
    assert recipe.training_args(tmp_path, warmup_steps=7).get_warmup_steps(recipe.max_steps) == 7  # overrides win


def test_wilson_interval_matches_a_textbook_value():
    # 8 successes of 10 at 95%: (0.490, 0.943) (Wilson 1927; Newcombe 1998, table I)
    low, high = wilson_interval(8, 10, z=1.96)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def bad_f1(predicted_bad: np.ndarray, actual_bad: np.ndarray) -> float:
    true_positive = float(np.sum(predicted_bad & actual_bad))
    denominator = float(np.sum(predicted_bad) + np.sum(actual_bad))
    return 2 * true_positive / denominator if denominator else 0.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    recipe = CPURecipe(seed=0)
    held_out = recipe.supervision(150, seed=1, **HELD_OUT)
    result = recipe.train(tmp_path_factory.mktemp("prm_learns"), eval_dataset=held_out, report_to="none")
    return recipe, result, held_out


@pytest.fixture(scope="module")
def scorer(trained):
    from trl_vlprm.guidance.scorer import PRMScorer

    return PRMScorer.from_pretrained(trained[1].path)


def scores_by_type(scorer, rows) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """P(correct) and gold label of every step, by step type, scored by the inference path (`PRMScorer`)."""
    from trl_vlprm.types import Candidate

    out: dict[str, tuple[list, list]] = {"perception": ([], []), "reasoning": ([], [])}
    for row in rows:
        (scores,) = scorer.score(row, [Candidate(steps=list(row["completions"]))])
        for score, label, kind in zip(scores, row["labels"], row["step_types"]):
            out[kind][0].append(score)
            out[kind][1].append(bool(label))
    return {kind: (np.array(s), np.array(labels)) for kind, (s, labels) in out.items()}


def test_step_f1_beats_the_constant_verdict_and_meets_the_target(trained, scorer):
    _, result, held_out = trained
    rng = np.random.default_rng(0)
    for kind, (scores, labels) in scores_by_type(scorer, list(held_out)).items():
        actual_bad, predicted_bad = ~labels, scores < 0.5
        f1 = bad_f1(predicted_bad, actual_bad)
        share_bad = actual_bad.mean()
        constant = 2 * share_bad / (1 + share_bad)  # F1 of calling every step bad (calling none bad scores 0)
        resampled = [bad_f1(predicted_bad[i], actual_bad[i]) for i in rng.integers(0, len(labels), (400, len(labels)))]
        lower, upper = (float(q) for q in np.quantile(resampled, [0.005, 0.995]))
        print(f"{kind}: bad-step F1 {f1:.3f} (99% bootstrap interval {lower:.3f}-{upper:.3f}) vs constant verdict "
              f"{constant:.3f} and target {TARGET_F1[kind]} over {len(labels)} steps")  # fmt: skip
        # The scorer reads the verdicts where the trainer put the labels: its F1 is the trainer's evaluation.
        assert f1 == pytest.approx(result.metrics_after[f"eval_{kind}_bad_f1"], abs=0.01), kind
        assert lower > constant, kind
        # The target is a promise about the recipe (met by seeds 0, 1 and 2 on 80 held-out puzzles, docs/testbed.md);
        # on these 150 the whole interval clears it (measured: 0.964-1.000 and 0.928-0.964), so it is asserted so.
        assert lower >= TARGET_F1[kind], kind


def test_perception_scores_move_when_the_image_is_swapped(trained, scorer):
    from trl_vlprm.eval.guardrails import BLIND_SHIFT, image_swap_sensitivity

    report = image_swap_sensitivity(scorer, list(trained[2]), max_questions=60)
    print("\n".join(report.lines()))
    assert not report.blind
    # A reader, not a rounding effect: ten times the blindness threshold (the untrained demo PRM moved by 0.0002).
    assert report.mean_abs_shift["perception"] > 10 * BLIND_SHIFT


def test_best_of_8_beats_random_and_majority_under_systematic_misreadings(trained, scorer):
    from trl_vlprm.guidance.strategies import majority_vote, select_best_of_n
    from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles
    from trl_vlprm.types import Candidate

    recipe = trained[0]
    questions = generate_puzzles(200, seed=2, families=recipe.families, image_size=recipe.image_size)
    policy = ScriptedPolicy(**SYSTEMATIC, seed=2)
    rng = random.Random(2)
    right = {"prm": 0, "random": 0, "majority": 0}
    versus = {"random": [0, 0], "majority": [0, 0]}  # [PRM right & other wrong, PRM wrong & other right]
    for question in questions:
        candidates = [Candidate(steps=[], gold_correct=[]).extend(c) for c in policy.sample_solutions(question, 8)]
        for candidate, scores in zip(candidates, scorer.score(question, candidates)):
            candidate.step_scores = scores
        picks = {"prm": select_best_of_n(candidates, "min"), "random": rng.randrange(8),
                 "majority": majority_vote(candidates)}  # fmt: skip
        correct = {name: candidates[i].answer == question["answer"] for name, i in picks.items()}
        for name in right:
            right[name] += correct[name]
        for other, tally in versus.items():
            tally[0] += correct["prm"] and not correct[other]
            tally[1] += correct[other] and not correct["prm"]
    print({name: count / len(questions) for name, count in right.items()}, "discordant (PRM wins, losses):", versus)
    for other, (wins, losses) in versus.items():
        low, _ = wilson_interval(wins, wins + losses)
        assert low > 0.5, (other, wins, losses, low)


def rank_auc(higher: np.ndarray, lower: np.ndarray) -> float:
    """P(a score of `higher` exceeds one of `lower`), ties counting half (the Mann-Whitney AUC; chance is 0.5)."""
    wins = np.mean(higher[:, None] > lower[None, :])
    return float(wins + 0.5 * np.mean(higher[:, None] == lower[None, :]))


def test_puzzlevqa_process_bench_runs_end_to_end(scorer):
    """The real PuzzleVQA bench (../shared/benchmarks): gold captions against perturbed ones.

    A PRM trained on the learnable tier's one-shape images and one-sentence steps does not transfer to PuzzleVQA's
    grids and long captions: measured, its AUC of gold over perturbed perception captions is 0.51 (standard error
    0.03), i.e. chance. So this test asserts what holds (every step of the real bench gets a finite probability,
    the bench's metrics count every step) and prints the AUC against its chance band; it does not claim transfer.
    """
    from trl_vlprm.eval.process_bench import puzzlevqa_process_bench, score_process_bench
    from trl_vlprm.types import Candidate

    bench = puzzlevqa_process_bench(limit_per_category=10, seed=0)
    first_step = {"gold": [], "perception": []}
    total_steps = 0
    for row in bench:
        (scores,) = scorer.score(row, [Candidate(steps=list(row["completions"]))])
        assert len(scores) == len(row["completions"]) and all(0.0 <= s <= 1.0 for s in scores), row["id"]
        total_steps += len(scores)
        variant = row["id"].rsplit("#", 1)[1]
        if variant in first_step:
            first_step[variant].append(scores[0])
    gold, perturbed = np.array(first_step["gold"]), np.array(first_step["perception"])
    assert len(gold) == len(perturbed) > 0
    se = math.sqrt((len(gold) + len(perturbed) + 1) / (12 * len(gold) * len(perturbed)))
    print(f"PuzzleVQA perception AUC {rank_auc(gold, perturbed):.3f} (chance 0.5 +- {Z_99 * se:.3f} at 99%) "
          f"over {len(gold)}+{len(perturbed)} captions")  # fmt: skip
    metrics = score_process_bench(scorer, bench)
    assert metrics["all"]["num_steps"] == total_steps
