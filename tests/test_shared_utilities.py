"""One copy of each shared utility: step F1, the grader, the cost counter and the question-id check."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from trl_vlprm.data.answers import grade, grade_question
from trl_vlprm.data.schema import RecordError, question_ids
from trl_vlprm.eval.process_bench import f1_score, step_metrics
from trl_vlprm.eval.tts_sweep import sample_benchmark
from trl_vlprm.labeling.labeler import step_label_quality
from trl_vlprm.labeling.mc import Cost
from trl_vlprm.trainer.metrics import bad_step_metrics, precision_recall_f1
from trl_vlprm.types import PolicyStats, StatsDelta


def test_precision_recall_f1_counts():
    assert precision_recall_f1(3, 1, 2) == (0.75, 0.6, pytest.approx(6 / 9))
    assert precision_recall_f1(0, 0, 0) == (0.0, 0.0, 0.0)  # nothing predicted, nothing to find
    assert precision_recall_f1(0, 2, 0) == (0.0, 0.0, 0.0) and precision_recall_f1(0, 0, 2) == (0.0, 0.0, 0.0)
    for tp, fp, fn in itertools.product(range(4), repeat=3):
        precision, recall, f1 = precision_recall_f1(tp, fp, fn)
        harmonic = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert f1 == pytest.approx(harmonic) and f1_score(tp, fp, fn) == f1


def test_trainer_labeller_and_process_bench_report_the_same_bad_step_f1():
    rng = random.Random(0)
    gold = [[rng.random() < 0.7 for _ in range(rng.randint(1, 6))] for _ in range(40)]
    predicted = [[g if rng.random() < 0.8 else not g for g in steps] for steps in gold]
    flat_gold = [g for steps in gold for g in steps]
    flat_predicted = [p for steps in predicted for p in steps]
    counts = {
        "tp": sum(not p and not g for p, g in zip(flat_predicted, flat_gold)),
        "fp": sum(not p and g for p, g in zip(flat_predicted, flat_gold)),
        "fn": sum(p and not g for p, g in zip(flat_predicted, flat_gold)),
    }
    assert min(counts.values()) > 0  # every count is exercised
    expected = precision_recall_f1(counts["tp"], counts["fp"], counts["fn"])

    quality = step_label_quality(list(zip(predicted, gold)))
    trainer = bad_step_metrics(np.array(flat_predicted, dtype=float), np.array(flat_gold, dtype=float))
    bench = step_metrics([float(p) for p in flat_predicted], [1 if g else -1 for g in flat_gold])
    assert (quality.bad_precision, quality.bad_recall, quality.bad_f1) == expected
    assert (trainer["bad_precision"], trainer["bad_recall"], trainer["bad_f1"]) == expected
    assert bench["f1_error"] == expected[2]


def test_grade_question_uses_the_record_and_never_asks_about_no_answer():
    question = {"id": "q", "answer": "green", "options": ["red", "green"]}
    asked = []

    def strict(prediction, gold, options):
        asked.append((prediction, gold, options))
        return prediction == gold

    assert grade_question("B", question) and grade("B", "green", ["red", "green"])  # the default grader is `grade`
    assert not grade_question(None, question, strict) and asked == []
    assert grade_question("green", {"answer": 3}, strict) is False and asked == [("green", "3", None)]


class CountingPolicy:
    def __init__(self):
        self.stats = PolicyStats()

    def call(self, sequences: int, tokens: int) -> None:
        self.stats.calls += 1
        self.stats.sequences += sequences
        self.stats.tokens += tokens


def test_stats_delta_measures_only_its_block_and_costs_add_up():
    policy = CountingPolicy()
    policy.call(3, 30)  # spent before: not counted
    with StatsDelta(policy) as outer:
        policy.call(2, 20)
        with StatsDelta(policy) as inner:
            policy.call(1, 5)
    assert inner.spent == PolicyStats(1, 1, 5) and outer.spent == PolicyStats(2, 3, 25)
    total = Cost()  # labelling's name for the same counter
    total.add(outer.spent)
    total.add(inner.spent)
    assert total == PolicyStats(3, 4, 30) and total.as_dict() == {"calls": 3, "sequences": 4, "tokens": 30}


def test_question_ids_are_checked_the_same_way_everywhere(tmp_path):
    assert question_ids([{"id": 1}, {"id": "b"}], "labelling") == ["1", "b"]
    with pytest.raises(RecordError, match="row 1: field 'id': missing; labelling needs an id per question"):
        question_ids([{"id": "a"}, {"id": ""}], "labelling")
    with pytest.raises(RecordError, match="row 2: field 'id': duplicate id '1'"):
        question_ids([{"id": 1}, {"id": 2}, {"id": "1"}], "guidance")
    # The evaluation sweep resumes by id: two questions under one id would share one question's samples (the second
    # would be graded by the first one's answers), so it refuses them before sampling anything.
    questions = [{"id": "q", "prompt": "1+1?", "answer": "2"}, {"id": "q", "prompt": "2+2?", "answer": "4"}]
    with pytest.raises(RecordError, match="row 1: field 'id': duplicate id 'q'"):
        sample_benchmark(questions, policy=None, scorers={}, n_max=1, path=tmp_path / "samples.jsonl")
    assert not (tmp_path / "samples.jsonl").exists()
