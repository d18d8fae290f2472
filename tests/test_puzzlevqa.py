"""PuzzleVQA / AlgoPuzzleVQA loaders on the real slice in ../shared/benchmarks, gold solutions and negatives."""

from __future__ import annotations

import collections
import json
import random
import re

import pytest
from datasets import Image, List

from trl_vlprm.data.puzzlevqa import (
    build_puzzlevqa_supervision,
    default_benchmarks_root,
    gold_solution,
    load_puzzlevqa,
    perturb_solution,
    read_jsonl,
)
from trl_vlprm.data.schema import RecordError, load_image, validate_dataset

ROOT = default_benchmarks_root()


@pytest.fixture(scope="module")
def puzzlevqa():
    return load_puzzlevqa(ROOT)


def image_paths(dataset):
    return [row["images"][0]["path"] for row in dataset.cast_column("images", List(Image(decode=False)))]


@pytest.mark.parametrize("benchmark,categories,per_category", [("PuzzleVQA", 20, 50), ("AlgoPuzzleVQA", 18, 10)])
def test_reads_every_record_of_the_slice(benchmark, categories, per_category, puzzlevqa):
    dataset = puzzlevqa if benchmark == "PuzzleVQA" else load_puzzlevqa(ROOT, benchmark)
    counts = collections.Counter(dataset["category"])
    assert len(counts) == categories and set(counts.values()) == {per_category}
    assert len(dataset) == categories * per_category
    assert len(set(dataset["id"])) == len(dataset)
    failures = 0
    for row, path in zip(dataset.remove_columns("images"), image_paths(dataset)):
        failures += row["answer"] not in row["options"] or row["prompt"].count("<image>") != 1
        failures += load_image(path, row["id"]).size[0] < 32
    assert failures == 0
    assert validate_dataset(dataset.select(range(0, len(dataset), 97))) == len(range(0, len(dataset), 97))


def test_record_fields(puzzlevqa):
    row = puzzlevqa[0]
    raw = json.loads((ROOT / "PuzzleVQA/data/circle_size_number.json").read_text().splitlines()[0])
    assert row["id"] == "PuzzleVQA/circle_size_number/0000"
    assert row["options"] == [str(o) for o in raw["options"]] and row["answer"] == str(raw["answer"])
    assert row["prompt"] == f"<image>\n{raw['question']}\nOptions: (A) 6 (B) 3 (C) 4 (D) 2"
    assert row["caption"] == raw["caption"]
    assert "caption" not in load_puzzlevqa(ROOT, "AlgoPuzzleVQA", limit_per_category=1).column_names


def test_categories_and_limit():
    dataset = load_puzzlevqa(ROOT, categories=["venn", "triangle"], limit_per_category=3)
    assert dataset["id"] == [f"PuzzleVQA/{c}/{i:04d}" for c in ("venn", "triangle") for i in range(3)]
    with pytest.raises(FileNotFoundError, match="category 'nope'"):
        load_puzzlevqa(ROOT, categories=["nope"])
    with pytest.raises(FileNotFoundError, match="no benchmark folder"):
        load_puzzlevqa(ROOT, benchmark="Missing")


def write_layout(tmp_path, lines):
    data = tmp_path / "Bench" / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.png").write_bytes(b"")
    path = data / "cat.json"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"image": "images/a.png", "question": "Q?", "options": [1, 2], "answer": "2"})


@pytest.mark.parametrize(
    "bad_line,field",
    [
        ('{"image": "images/a.png", "question": ', "<json>"),
        (json.dumps({"image": "images/a.png", "options": [1], "answer": "1"}), "question"),
        (json.dumps({"image": "images/a.png", "question": "Q", "options": [1], "answer": "5"}), "answer"),
        (json.dumps({"image": "images/b.png", "question": "Q", "options": [1], "answer": "1"}), "image"),
        (json.dumps({"image": "images/a.png", "question": "Q", "options": [], "answer": "1"}), "options"),
    ],
)
def test_malformed_line_is_named_by_file_and_line(tmp_path, bad_line, field):
    path = write_layout(tmp_path, [GOOD, GOOD, bad_line])
    with pytest.raises(RecordError) as info:
        load_puzzlevqa(tmp_path, "Bench")
    assert str(path) in str(info.value) and "line 3" in str(info.value)
    assert info.value.field == field


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = write_layout(tmp_path, [GOOD, "", GOOD])
    assert [n for n, _ in read_jsonl(path)] == [1, 3]
    assert load_puzzlevqa(tmp_path, "Bench")["id"] == ["Bench/cat/0000", "Bench/cat/0002"]


def test_gold_solution_is_caption_explanation_deduction(puzzlevqa):
    row = puzzlevqa[10]
    steps, types = gold_solution(row)
    assert steps == [row["caption"], row["explanation"], row["deduction"]]
    assert types == ["perception", "reasoning", "reasoning"]
    with pytest.raises(RecordError, match="field 'caption'"):
        gold_solution({"id": "x", "explanation": "e", "deduction": "d"})


def test_every_puzzle_gets_both_negatives(puzzlevqa):
    rows = puzzlevqa.remove_columns("images")
    changed_tokens = collections.Counter()
    for row in rows:
        gold, _ = gold_solution(row)
        steps, labels, types = perturb_solution(row, "perception", random.Random(row["id"]))
        assert labels == [False, False, False] and types == ["perception", "reasoning", "reasoning"]
        assert steps[1:] == gold[1:] and steps[0] != gold[0]
        before, after = re.findall(r"\w+", gold[0]), re.findall(r"\w+", steps[0])
        changed_tokens[sum(a != b for a, b in zip(before, after)) if len(before) == len(after) else -1] += 1
        steps, labels, _ = perturb_solution(row, "reasoning", 0)
        assert labels == [True, True, False] and steps[:2] == gold[:2] and steps[2] != gold[2]
        assert any(o in steps[2] for o in row["options"] if o != row["answer"])
    assert changed_tokens == {1: len(rows)}  # exactly one detail of the caption changes
    row = rows[3]
    assert perturb_solution(row, "perception", 5) == perturb_solution(row, "perception", 5)
    with pytest.raises(ValueError, match="perturbation kind 'both'"):
        perturb_solution(row, "both")
    with pytest.raises(RecordError, match="field 'deduction'"):
        perturb_solution({**row, "deduction": "No answer here."}, "reasoning")


def test_supervision_dataset(tmp_path):
    dataset = build_puzzlevqa_supervision(ROOT, categories=["color_grid", "venn"], limit_per_category=4, seed=1)
    assert len(dataset) == 2 * 4 * 3
    assert validate_dataset(dataset) == 24
    labels = collections.Counter((row["id"].split("#")[1], tuple(row["labels"])) for row in dataset)
    assert labels == {("gold", (True,) * 3): 8, ("perception", (False,) * 3): 8, ("reasoning", (True, True, False)): 8}
    again = build_puzzlevqa_supervision(ROOT, categories=["color_grid", "venn"], limit_per_category=4, seed=1)
    assert again["completions"] == dataset["completions"]


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TRL_VLPRM_SHARED", str(tmp_path))
    assert default_benchmarks_root() == tmp_path / "benchmarks"


def test_no_default_root_from_the_package_location(monkeypatch):
    # An installed wheel has no ../shared: the library must ask for the folder instead of guessing from __file__.
    monkeypatch.delenv("TRL_VLPRM_SHARED", raising=False)
    with pytest.raises(FileNotFoundError, match="TRL_VLPRM_SHARED is not set"):
        default_benchmarks_root()
