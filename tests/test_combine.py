"""Combination rules on hand-made MC labels and judge verdicts."""

from __future__ import annotations

import pytest

from trl_vlprm.labeling.combine import RULES, combine
from trl_vlprm.labeling.labeler import step_label_quality

C, I, U = "correct", "incorrect", "unknown"


def test_mc_only_and_judge_only_copy_their_source():
    mc = [True, False, False, True]
    assert combine("mc_only", 4, mc).labels == mc
    judged = combine("judge_only", 4, verdicts=[C, I, U, C])
    assert judged.labels == [True, False, None, True]
    assert judged.weights == [1.0, 1.0, 0.0, 1.0]
    assert judged.kept_length() == 2


def test_consensus_drops_or_down_weights_disagreements():
    mc, verdicts = [True, True, False, False], [C, I, I, U]
    dropped = combine("consensus", 4, mc, verdicts)
    assert dropped.labels == [True, None, False, None] and dropped.kept_length() == 1
    assert dropped.case == "disagree"
    assert combine("consensus", 2, [True, False], [C, I]).case == "agree"
    assert combine("consensus", 2, [True, False], [C, U]).case == "judge_unknown"
    weighted = combine("consensus", 4, mc, verdicts, disagreement="weight", disagreement_weight=0.3)
    assert weighted.labels == [True, False, False, False]  # the judge wins a disagreement; MC fills an unknown
    assert weighted.weights == [1.0, 0.3, 1.0, 0.3]


def test_judge_first_error_needs_mc_confirmation():
    rule = "judge_first_error_confirmed_by_mc"
    confirmed = combine(rule, 5, [True, True, False, False, False], [C, C, I, C, I])
    assert confirmed.labels == [True, True, False, None, None] and confirmed.case == "judge_incorrect_mc_confirms"
    rejected = combine(rule, 5, [True, True, True, False, False], [C, C, I, C, I])
    assert rejected.labels == [None] * 5 and rejected.case == "judge_incorrect_mc_rejects"
    assert combine(rule, 3, [True] * 3, [C] * 3).labels == [True] * 3
    assert combine(rule, 3, [True, False, False], [C] * 3).labels == [None] * 3


def test_vlprm_rule_trusts_judge_errors_and_filters_judge_passes_with_mc():
    agrees = combine("vlprm", 4, [True, False, False, False], [C, I, C, C])
    assert agrees.labels == [True, False, None, None] and agrees.case == "judge_incorrect_mc_agrees"
    disagrees = combine("vlprm", 4, [True, True, True, True], [C, I, C, C])
    assert disagrees.labels == [True, False, None, None] and disagrees.case == "judge_incorrect_mc_disagrees"
    kept = combine("vlprm", 3, [True] * 3, [C] * 3)
    assert kept.labels == [True] * 3 and kept.case == "judge_correct_mc_agrees"
    dropped = combine("vlprm", 3, [True, True, False], [C] * 3)
    assert dropped.labels == [None] * 3 and dropped.case == "judge_correct_mc_disagrees"


@pytest.mark.parametrize("rule", ["vlprm", "judge_first_error_confirmed_by_mc"])
def test_unknown_verdicts_end_the_labels(rule):
    result = combine(rule, 4, [True] * 4, [C, U, I, C])
    assert result.labels == [True, None, None, None] and result.case == "judge_unknown"
    assert combine(rule, 3, [True] * 3, [U] * 3).kept_length() == 0


def test_rules_check_their_inputs():
    with pytest.raises(ValueError, match="unknown combination rule"):
        combine("majority", 2, [True, True])
    for rule in RULES:
        if rule != "judge_only":
            with pytest.raises(ValueError, match="MC label"):
                combine(rule, 3, [True], [C, C, C])
        if rule != "mc_only":
            with pytest.raises(ValueError, match="verdict"):
                combine(rule, 2, [True, True], [C, "maybe"] if rule != "judge_only" else [C])
    with pytest.raises(ValueError, match="disagreement"):
        combine("consensus", 1, [True], [C], disagreement="vote")


def test_step_label_quality_scores_the_bad_class():
    quality = step_label_quality(
        [
            ([True, False, None], [True, False, False]),  # 2 labelled, both right
            ([False, True, True], [True, True, False]),  # a false alarm and a miss
        ]
    )
    assert quality.labelled == 5 and quality.total == 6 and quality.coverage == pytest.approx(5 / 6)
    assert quality.accuracy == pytest.approx(3 / 5)
    assert quality.bad_precision == pytest.approx(1 / 2) and quality.bad_recall == pytest.approx(1 / 2)
    assert quality.bad_f1 == pytest.approx(0.5)


@pytest.mark.parametrize("rule", ["vlprm", "judge_only", "consensus", "judge_first_error_confirmed_by_mc"])
def test_unknown_drop_leaves_the_whole_solution_out(rule):
    dropped = combine(rule, 4, [True] * 4, [C, C, U, C], unknown="drop")
    assert dropped.labels == [None] * 4 and dropped.kept_length() == 0 and dropped.case == "judge_unknown_dropped"
    # A solution without unknown verdicts is labelled exactly as with the default.
    assert combine(rule, 3, [True, False, False], [C, I, C], unknown="drop") == combine(
        rule, 3, [True, False, False], [C, I, C]
    )
    with pytest.raises(ValueError, match="unknown='skip'"):
        combine(rule, 1, [True], [C], unknown="skip")
