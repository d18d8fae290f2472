"""AlgoPuzzleVQA as a process bench: captions written from each puzzle's `solution`, read in place.

The promise: a gold caption states exactly the image state its `solution` holds (checked against facts read off
the images by eye, and value by value against the solution), a misread changes exactly one value (two, swapped, in
an arrangement), negatives are seeded per question, and a scorer that knows the gold gets AUC 1 through the same
`puzzlevqa_transfer` report as PuzzleVQA.
"""

from __future__ import annotations

import json
import re

import pytest

from trl_vlprm.data.algopuzzlevqa import (
    ALGOPUZZLEVQA_CAPTIONED_TYPES,
    algopuzzlevqa_caption,
    build_algopuzzlevqa_supervision,
    image_state,
    perturb_caption,
)
from trl_vlprm.data.puzzlevqa import default_benchmarks_root
from trl_vlprm.data.schema import RecordError
from trl_vlprm.eval.process_bench import load_process_bench_spec
from trl_vlprm.eval.transfer import puzzlevqa_transfer


@pytest.fixture(scope="module")
def bench():
    return build_algopuzzlevqa_supervision(default_benchmarks_root())


def solution(category: str, index: int) -> dict:
    path = default_benchmarks_root() / "AlgoPuzzleVQA" / "data" / f"{category}.json"
    return json.loads(path.read_text().splitlines()[index])["solution"]


def test_every_captioned_puzzle_gets_a_gold_trace_and_two_negatives(bench):
    assert len(bench) == 3 * 10 * len(ALGOPUZZLEVQA_CAPTIONED_TYPES) == 240
    by_id = {row["id"]: row for row in bench}
    for question in {i.rsplit("#", 1)[0] for i in by_id}:
        gold, misread, wrong = (by_id[f"{question}#{k}"] for k in ("gold", "perception", "reasoning"))
        assert (
            gold["labels"] == [True, True] and misread["labels"] == [False, False] and wrong["labels"] == [True, False]
        )
        assert (
            gold["step_types"] == ["perception", "reasoning"]
            and gold["completions"][1] == f"So the answer is {gold['answer']}."
        )
        assert (
            misread["completions"][1] == gold["completions"][1] and misread["completions"][0] != gold["completions"][0]
        )
        assert wrong["completions"][0] == gold["completions"][0]
        assert wrong["completions"][1].removeprefix("So the answer is ").removesuffix(".") in set(gold["options"]) - {
            gold["answer"]
        }
        assert gold["images"][0].filename.endswith(question.rsplit("/", 1)[1] + ".jpg")  # decoded from its file


def test_captions_state_what_the_images_show():
    # facts read off the first images by eye (tests/../shared/benchmarks/AlgoPuzzleVQA/data/images/<type>_0000.jpg)
    assert algopuzzlevqa_caption("clock", solution("clock", 0)) == "The clock shows the time 2:43."
    assert algopuzzlevqa_caption("calendar", solution("calendar", 0)) == (
        "The calendar shows the month of January, whose first day is a Friday."
    )
    assert algopuzzlevqa_caption("water_jugs", solution("water_jugs", 0)).endswith(
        "hold [4, 2, 1] litres of water from left to right."
    )
    assert "[['rotten', 'fresh', 'fresh'], ['fresh', 'empty', 'fresh'], ['empty', 'empty', 'fresh']]" in (
        algopuzzlevqa_caption("rotting_kiwi", solution("rotting_kiwi", 0))
    )
    assert "[[1, 8, 7], [6, 4, 5], ['empty', 3, 2]]" in algopuzzlevqa_caption(
        "number_slide", solution("number_slide", 0)
    )
    assert "['green', 'empty', 'red', 'red']" in algopuzzlevqa_caption("checker_move", solution("checker_move", 0))
    queens = algopuzzlevqa_caption("n_queens", solution("n_queens", 0))
    assert "[[0, 6], [1, 2], [3, 5], [4, 7], [5, 4], [7, 3]]" in queens  # row 0's queen in the seventh column


def numbers_and_words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+|\d+", text)


@pytest.mark.parametrize("category", ALGOPUZZLEVQA_CAPTIONED_TYPES)
def test_a_misread_changes_one_value_or_swaps_two(category):
    for index in range(10):
        state = image_state(category, solution(category, index))
        gold = state.render(state.values)
        for seed in range(5):
            misread = perturb_caption(category, solution(category, index), seed)
            a, b = numbers_and_words(gold), numbers_and_words(misread)
            changed = [k for k, (x, y) in enumerate(zip(a, b)) if x != y]
            assert len(a) == len(b) and len(changed) == (1 if state.choices else 2), (category, index, gold, misread)
            if state.choices is None:  # an arrangement: the same values, two of them swapped
                assert sorted(a) == sorted(b) and a[changed[0]] == b[changed[1]]
            assert misread == perturb_caption(category, solution(category, index), seed)


def test_negatives_are_seeded_per_question_and_bad_input_is_named(bench, tmp_path):
    alone = build_algopuzzlevqa_supervision(default_benchmarks_root(), ["clock"], limit_per_category=3)
    assert list(alone) == [row for row in bench if row["id"].startswith("AlgoPuzzleVQA/clock/000")][:9]
    with pytest.raises(ValueError, match=r"types without a caption: \['maze'\]; captioned: .*clock"):
        build_algopuzzlevqa_supervision(default_benchmarks_root(), ["maze"])
    with pytest.raises(ValueError, match="has no caption; captioned types: calendar, checker_move"):
        algopuzzlevqa_caption("maze", {})
    with pytest.raises(RecordError, match=r"clock.json line 2.*solution.*does not hold a clock state"):
        algopuzzlevqa_caption("clock", {"current_hour": 2}, where="clock.json line 2")
    with pytest.raises(RecordError, match="state of equal values cannot be misread"):
        perturb_caption("checker_move", {"start_position": "RRR"})
    # a broken solution in a copy of the layout names its file and line
    data = tmp_path / "AlgoPuzzleVQA" / "data"
    (data / "images").mkdir(parents=True)
    source = default_benchmarks_root() / "AlgoPuzzleVQA" / "data"
    lines = (source / "clock.json").read_text().splitlines()[:2]
    for line in lines:
        (data / json.loads(line)["image"]).parent.mkdir(parents=True, exist_ok=True)
        (data / json.loads(line)["image"]).write_bytes((source / json.loads(line)["image"]).read_bytes())
    broken = json.loads(lines[1])
    broken["solution"] = {"current_minute": 5}
    (data / "clock.json").write_text(lines[0] + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(RecordError, match=r"clock.json line 2.*solution"):
        build_algopuzzlevqa_supervision(tmp_path, ["clock"])


class GoldKnowingScorer:
    def score(self, question, candidates):
        return [[float(s == g) for s, g in zip(c.steps, question["completions"])] for c in candidates]


def test_the_transfer_report_and_the_process_bench_read_algopuzzlevqa():
    report = puzzlevqa_transfer(GoldKnowingScorer(), benchmark="AlgoPuzzleVQA", limit_per_category=2)
    assert report.categories == [c for c in ALGOPUZZLEVQA_CAPTIONED_TYPES for _ in range(2)]
    assert report.auc() == report.auc("reasoning") == 1.0
    table = report.table()
    assert table[0].startswith("| AlgoPuzzleVQA type |") and table[2] == "| calendar | 2 | 1.000 | 1.000 |"
    assert table[-1] == "| all types, pooled | 16 | 1.000 | 1.000 |"  # no colour-based rows: none is a PuzzleVQA type
    with pytest.raises(
        ValueError, match="benchmark 'MathVista' has no process bench; available: PuzzleVQA, AlgoPuzzleVQA"
    ):
        puzzlevqa_transfer(GoldKnowingScorer(), benchmark="MathVista")
    records = load_process_bench_spec("algopuzzlevqa:limit_per_category=1")
    assert len(records) == 3 * len(ALGOPUZZLEVQA_CAPTIONED_TYPES)
    assert sorted(map(tuple, records["process_correctness"])) == sorted([(1, 1), (-1, -1), (1, -1)] * 8)
