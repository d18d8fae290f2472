"""A PRM trained only on rendered puzzles ranks PuzzleVQA's real captions: the guard that the transfer holds.

`CPURecipe.lookalike()` trains one seed on the lookalike tier (PuzzleVQA's shapes, palette and caption phrasing,
rendered here; nothing of PuzzleVQA is trained on). On the real PuzzleVQA process bench (`../shared/benchmarks`,
read in place) its scores must rank gold captions above perturbed ones over the colour-based types: the 99%
bootstrap interval of that AUC (resampling puzzles) must clear chance by `MARGIN`. The same check on the untrained
model (same weights before training) must fail, so the test cannot pass by an artefact of the bench alone.

What it holds is measured in docs/testbed.md: the transfer is a rule read from the caption's text (a colour name
PuzzleVQA never draws, as the bench's perturbation often writes, is a misread), not a comparison with the image;
scored against other puzzles' images, the AUC stays. The test guards that the library's rendering, labelling,
training and scoring carry that rule to the real captions end to end. Slow: one training run (2,400 steps) and
two scorings of the 400 colour-based puzzles.
"""

from __future__ import annotations

import pytest

from trl_vlprm.cpu_recipe import CPURecipe
from trl_vlprm.eval.transfer import PUZZLEVQA_COLOUR_TYPES, puzzlevqa_transfer

pytestmark = pytest.mark.slow

# The target is AUC >= 0.75 pooled over the colour-based types, which the tier does not reach (measured
# 0.72-0.74 over 3 seeds, docs/testbed.md): the test holds the lower end of the 99% interval of one seed above
# 0.5 + MARGIN (seed 0: 0.690-0.759; the untrained model: 0.499-0.508).
MARGIN = 0.1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    recipe = CPURecipe.lookalike(seed=0)
    out = tmp_path_factory.mktemp("prm_transfers")
    result = recipe.train(out, report_to="none")
    return recipe, result, out


def colour_interval(scorer) -> tuple[float, tuple[float, float], list[str]]:
    report = puzzlevqa_transfer(scorer, categories=PUZZLEVQA_COLOUR_TYPES)
    assert len(report.categories) == 50 * len(PUZZLEVQA_COLOUR_TYPES)  # every colour-based puzzle was scored
    return report.auc(), report.interval(level=0.99), report.table()


def test_the_lookalike_prm_ranks_real_gold_captions_above_misread_ones(trained):
    from trl_vlprm.guidance.scorer import PRMScorer

    auc, (low, high), table = colour_interval(PRMScorer.from_pretrained(trained[1].path))
    print("\n".join(table))
    print(f"trained: colour-based perception AUC {auc:.3f} (99% bootstrap interval {low:.3f}-{high:.3f})")
    assert low > 0.5 + MARGIN


def test_the_untrained_prm_does_not_clear_the_margin(trained):
    """The same weights before training, read through the same value head and layout: no transfer to show."""
    from trl_vlprm.guidance.scorer import PRMScorer

    recipe, _, out = trained
    base = recipe.build_model(out / "tiny-qwen2-vl")  # reused: the folder the trained PRM started from
    scorer = PRMScorer.from_pretrained(base, head="value", step_separator="")
    auc, (low, high), _ = colour_interval(scorer)
    print(f"untrained: colour-based perception AUC {auc:.3f} (99% bootstrap interval {low:.3f}-{high:.3f})")
    assert not low > 0.5 + MARGIN
