"""A tiny PRM reads a multi-part image once its vision tower is warmed up: the guard that image reading holds.

`pv_circle_claim` draws a 3x3 grid of circles in three of eleven colour names and claims one colour is among them
("One of the circles is red"); a misread claims one of the options that is not drawn. Nothing in the text tells the
two apart. `CPURecipe(vision_warmup_steps=...)` first teaches the random tower which colours an image holds
(`warm_up_vision_tower`, from the recipe's own rendered puzzles), then trains the PRM with the tower frozen.

The test holds what docs/testbed.md ("Third round") measured: on held-out puzzles the PRM separates true claims from
misreads, and scored with another puzzle's image it follows *that* image (the claim's truth of the image shown) and
no longer the original labels, so it reads the picture rather than the caption. Without the warm-up the same recipe
barely leaves chance (held-out AUC 0.58 at 2,400 steps; measured, not tested here: it would double the test's
time). Slow: one warm-up and one training.
"""

from __future__ import annotations

import pytest

from trl_vlprm.cpu_recipe import CPURecipe
from trl_vlprm.eval.guardrails import image_reading
from trl_vlprm.testbed import claim_holds

pytestmark = pytest.mark.slow

STEPS = 1200


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    recipe = CPURecipe(families="pv_circle_claim", image_size=224, vision_warmup_steps=800, max_steps=STEPS)
    held = recipe.supervision(100, seed=7, perception_error_rate=0.5, reasoning_error_rate=0.0)
    out = tmp_path_factory.mktemp("prm_reads_images")
    result = recipe.train(out, report_to="none")
    return recipe, result, list(held)


def test_the_warm_up_teaches_the_tower_the_colours(trained):
    warmup = trained[1].vision_warmup
    # Measured: 0.9996 / 1.000 / 1.000 held-out tag accuracy (seeds 0 / 1 / 2) against 0.727 for the majority class.
    assert warmup.held_out_accuracy >= 0.97 and warmup.majority_accuracy < 0.75, warmup


def test_the_prm_reads_the_claim_off_the_image(trained):
    from trl_vlprm.guidance.scorer import PRMScorer

    _, result, rows = trained
    reading = image_reading(PRMScorer.from_pretrained(result.path), rows, claim_holds)
    print(reading.line())
    assert reading.num_rows == 400
    # Measured (seed 0, one thread, so reproducible): 1.000 / 0.441 / 0.999.
    assert reading.own >= 0.95
    assert abs(reading.swapped_vs_labels - 0.5) <= 0.15  # the caption alone no longer tells
    assert reading.swapped_vs_shown >= 0.95  # it follows the image it is shown


def test_the_untrained_prm_reads_nothing(trained):
    """The warmed model before PRM training, through the same value head and layout: at chance."""
    from trl_vlprm.guidance.scorer import PRMScorer

    _, result, rows = trained
    scorer = PRMScorer.from_pretrained(result.vision_warmup.path, head="value", step_separator="")
    assert abs(image_reading(scorer, rows, claim_holds).own - 0.5) <= 0.1
