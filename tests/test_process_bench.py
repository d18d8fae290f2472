import json
import re

import pytest
from PIL import Image

from trl_vlprm.data.schema import RecordError
from trl_vlprm.eval.process_bench import (
    f1_score,
    load_process_bench_spec,
    load_visual_process_bench,
    metrics_to_markdown,
    process_bench_metrics,
    puzzlevqa_process_bench,
    score_process_bench,
    step_metrics,
)
from trl_vlprm.eval.process_bench import (
    testbed_process_bench as make_testbed_bench,
)
from trl_vlprm.testbed import GoldOracleScorer, RandomScorer

P, R = "perception", "reasoning"
RECORDS = [
    {"id": "a", "process_correctness": [1, -1, -1], "step_types": [P, R, R]},
    {"id": "b", "process_correctness": [1, 0], "step_types": [P, R]},
]
SCORES = [[0.9, 0.2, 0.7], [0.6, 0.4]]


def test_metrics_equal_a_hand_computation():
    metrics = process_bench_metrics(SCORES, RECORDS, threshold=0.5)
    # Neutral step skipped. Predicted/gold: (ok, ok) (err, err) (ok, err) | (ok, ok).
    # Correct class: TP 2, FP 1 (the 0.7 error), FN 0 -> 4/5. Error class: TP 1, FP 0, FN 1 -> 2/3.
    assert metrics["all"]["f1_correct"] == pytest.approx(0.8)
    assert metrics["all"]["f1_error"] == pytest.approx(2 / 3)
    assert metrics["all"]["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert metrics["all"]["num_steps"] == 4 and metrics["all"]["num_error_steps"] == 2
    # Perception steps: both correct and predicted correct; no error to find.
    assert metrics[P]["f1_correct"] == 1.0 and metrics[P]["f1_error"] == 0.0 and metrics[P]["num_error_steps"] == 0
    # Reasoning steps (neutral skipped): (err, err) (ok, err): correct class 0, error class 2/3.
    assert metrics[R]["f1_correct"] == 0.0 and metrics[R]["f1_error"] == pytest.approx(2 / 3)
    # A lower threshold lets every step through: no error is ever caught.
    assert process_bench_metrics(SCORES, RECORDS, threshold=0.1)["all"]["f1_error"] == 0.0


def test_f1_and_shape_errors():
    assert f1_score(3, 1, 2) == pytest.approx(6 / 9) and f1_score(0, 0, 0) == 0.0
    assert step_metrics([1.0, 0.0], [1, -1])["macro_f1"] == 1.0
    with pytest.raises(RecordError, match="row b: field 'process_correctness': 1 score"):
        process_bench_metrics([[0.9, 0.2, 0.7], [0.6]], RECORDS)


def write_bench(tmp_path, lines):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "img0.png")
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def vpb_line(**overrides):
    line = {
        "image": ["img0.png"], "question": "How many red squares?", "answer": "1", "data_source": "MathVerse",
        "response": {"steps": ["There is one red square.", "So the answer is 1."], "process_correctness": [1, -1]},
    }  # fmt: skip
    line.update(overrides)
    return line


def test_load_visual_process_bench_layout(tmp_path):
    path = write_bench(tmp_path, [vpb_line(), vpb_line(image=[], question="Text only?")])
    bench = load_visual_process_bench(str(path))
    assert len(bench) == 2
    first = bench[0]
    assert first["prompt"] == "<image>\nHow many red squares?" and first["images"][0].size == (8, 8)
    assert first["process_correctness"] == [1, -1] and first["category"] == "MathVerse"
    assert bench[1]["prompt"] == "Text only?" and bench[1]["images"] == []
    metrics = score_process_bench(GoldOracleScorer(), bench)
    assert metrics["all"]["macro_f1"] == 1.0 and metrics["all"]["num_steps"] == 4


@pytest.mark.parametrize(
    "line, message",
    [
        (vpb_line(response={"steps": ["a", "b"], "process_correctness": [1]}),
         "test.jsonl:1: field 'process_correctness': 1 verdict"),
        (vpb_line(response={"steps": ["a"], "process_correctness": [2]}), "step 0 has verdict 2"),
        (vpb_line(response={"steps": ["a"]}), "test.jsonl:1: field 'response'"),
        (vpb_line(image=["missing.png"]), "image file not found"),
    ],
)  # fmt: skip
def test_load_visual_process_bench_names_the_bad_line(tmp_path, line, message):
    path = write_bench(tmp_path, [line])
    with pytest.raises(RecordError, match=message):
        load_visual_process_bench(str(path))


def test_testbed_bench_labels_follow_gold_and_oracle_is_perfect():
    bench = make_testbed_bench(num_questions=12, solutions_per_question=3, seed=1)
    assert len(bench) == 36
    for record in bench:
        verdicts = record["process_correctness"]
        assert record["step_types"][0] == P
        # First-error convention: once a step is wrong, every later one is.
        assert verdicts == sorted(verdicts, reverse=True)
    oracle = score_process_bench(GoldOracleScorer(), bench)
    assert oracle["all"]["macro_f1"] == 1.0 and oracle[P]["num_steps"] == 36
    random_scores = score_process_bench(RandomScorer(0), bench)
    assert 0.3 < random_scores["all"]["macro_f1"] < 0.7
    table = metrics_to_markdown({"oracle": oracle})
    assert "| oracle | all | 100.0 | 100.0 | 100.0 |" in table


def test_puzzlevqa_bench_gold_and_perturbed_traces():
    bench = puzzlevqa_process_bench(limit_per_category=1)
    assert len(bench) == 20 * 3  # 20 categories x (gold, perception, reasoning)
    by_kind = {record["id"].split("#")[1]: record["process_correctness"] for record in bench.select(range(3))}
    assert by_kind == {"gold": [1, 1, 1], "perception": [-1, -1, -1], "reasoning": [1, 1, -1]}
    oracle = score_process_bench(GoldOracleScorer(), bench)
    assert oracle[P]["num_steps"] == 60 and oracle[P]["num_error_steps"] == 20
    assert oracle["all"]["num_error_steps"] == 20 * 4


def test_process_bench_specs(tmp_path):
    path = write_bench(tmp_path, [vpb_line()])
    assert load_process_bench_spec(f"visualprocessbench:{path}")[0]["process_correctness"] == [1, -1]
    testbed = load_process_bench_spec("testbed:num_questions=6,solutions_per_question=2", seed=2)
    assert len(testbed) == 12 and testbed[0]["id"].startswith("color_grid-s2-")
    with pytest.raises(ValueError, match="unknown bench 'processbench'"):
        load_process_bench_spec("processbench")


@pytest.mark.parametrize(
    "verdicts, expected",
    [([1, -1, 0], [1, -1, 0]), ([1.0, -1.0, 0.0], [1, -1, 0]), (["+", "-", "0"], [1, -1, 0]),
     (["1", "-1", "+1"], [1, -1, 1])],
)  # fmt: skip
def test_verdicts_accept_only_the_three_values_and_their_aliases(tmp_path, verdicts, expected):
    path = write_bench(tmp_path, [vpb_line(response={"steps": ["a", "b", "c"], "process_correctness": verdicts})])
    assert load_visual_process_bench(str(path))[0]["process_correctness"] == expected


@pytest.mark.parametrize("bad", [0.9, -0.9, True, False, None, "yes", 2.5])
def test_verdict_outside_the_three_values_names_line_and_field(tmp_path, bad):
    # Before: int() made 0.9/-0.9 neutral (silently out of the F1) and True a correct verdict.
    good = vpb_line()
    wrong = vpb_line(response={"steps": ["a", "b"], "process_correctness": [1, bad]})
    path = write_bench(tmp_path, [good, wrong])
    with pytest.raises(RecordError, match=re.escape(f"row test.jsonl:2: field 'response.process_correctness': step 1 "
                                                    f"has verdict {bad!r}; expected 1, -1 or 0")):  # fmt: skip
        load_visual_process_bench(str(path))
