"""Testbed puzzles: reproducibility, gold solutions that derive the answer, questions that hide the image."""

from __future__ import annotations

import collections
import json
import math

import pytest
from datasets import Image, List

from trl_vlprm.data.schema import IMAGE_PLACEHOLDER, RecordError, validate_dataset
from trl_vlprm.testbed import (
    PUZZLE_FAMILIES,
    TIERS,
    format_prompt,
    generate_puzzles,
    gold_steps,
    make_puzzle,
    read_metadata,
)
from trl_vlprm.testbed.families import numeric_options, parse_value
from trl_vlprm.testbed.generator import parse_answer_step, puzzle_features

PER_FAMILY = 40
HARD = TIERS["hard"]  # the default tier; the learnable tier has its own tests (test_learnable_testbed.py)


@pytest.fixture(scope="module")
def puzzles():
    return generate_puzzles(PER_FAMILY * len(HARD), seed=0)


def image_bytes(dataset):
    return [row["images"][0]["bytes"] for row in dataset.cast_column("images", List(Image(decode=False)))]


def question_text(prompt: str) -> str:
    return prompt.split("\nOptions:")[0]


def test_six_families_dealt_round_robin(puzzles):
    assert len(PUZZLE_FAMILIES) >= 6
    assert set(HARD) == {"color_grid", "size_cycle", "counting", "number_grid", "polygon_sides", "clock"}
    assert collections.Counter(puzzles["category"]) == {name: PER_FAMILY for name in HARD}
    assert generate_puzzles(7, seed=0, families=["clock", "counting"])["category"] == ["clock", "counting"] * 3 + [
        "clock"
    ]


def test_same_seed_same_bytes_and_different_seed_differs(puzzles):
    again = generate_puzzles(len(puzzles), seed=0)
    assert image_bytes(again) == image_bytes(puzzles)
    assert again.remove_columns("images").to_list() == puzzles.remove_columns("images").to_list()
    other = generate_puzzles(len(puzzles), seed=1)
    differing = sum(a != b for a, b in zip(image_bytes(other), image_bytes(puzzles)))
    assert differing >= 0.9 * len(puzzles)
    assert sum(a != b for a, b in zip(other["metadata"], puzzles["metadata"])) >= 0.9 * len(puzzles)


def test_puzzle_depends_only_on_seed_and_index(puzzles):
    head = generate_puzzles(12, seed=0)
    assert image_bytes(head) == image_bytes(puzzles.select(range(12)))
    assert head["metadata"] == puzzles["metadata"][:12]


def test_records_follow_schema_with_small_images(puzzles):
    assert validate_dataset(puzzles) == len(puzzles)
    assert puzzles.features == puzzle_features()
    for row in puzzles.select(range(0, len(puzzles), 7)):
        assert row["prompt"].count(IMAGE_PLACEHOLDER) == 1
        assert row["images"][0].size == (168, 168)
        assert row["labels"] == [True, True, True]
        assert row["step_types"] == ["perception", "reasoning", "reasoning"]
        assert all("\n" not in step for step in row["completions"])
        assert len(" ".join(row["completions"]).split()) <= 60  # short enough for tiny models
    assert generate_puzzles(1, seed=0, image_size=112)[0]["images"][0].size == (112, 112)


def test_gold_answer_is_an_option_and_follows_from_the_gold_steps(puzzles):
    for row in puzzles:
        family, state = read_metadata(row)
        perception, reasoning, final = row["completions"]
        assert row["answer"] in row["options"]
        assert parse_answer_step(final) == row["answer"]
        assert parse_value(reasoning) == row["answer"]
        # executing the steps: the perceived values are the truth, and the rule applied to them gives the answer
        observed = family.parse(state, perception)
        assert observed == family.observe(state)
        assert family.solve(state, observed) == row["answer"]
        assert family.explain(state, observed, row["answer"]) == reasoning
        assert row["completions"] == gold_steps(family, state)


def test_question_text_alone_does_not_reveal_what_the_image_shows(puzzles):
    for name in HARD:
        rows = [r for r in puzzles if r["category"] == name]
        groups = collections.defaultdict(set)
        for row in rows:
            groups[question_text(row["prompt"])].add(row["completions"][0])
            assert row["completions"][0] not in row["prompt"]
        # many different images hide behind one and the same question text
        largest = max(len(truths) for truths in groups.values())
        assert largest >= (PER_FAMILY // 2 if name != "clock" else 2), name
        if name != "clock":
            assert len(groups) == 1, name  # a fixed question; for the clock only the minutes to add vary


def test_answer_position_among_options_is_uniform():
    dataset = generate_puzzles(
        1200, seed=5, families=["color_grid", "counting", "number_grid", "polygon_sides", "clock"]
    )
    positions = collections.Counter(row["options"].index(row["answer"]) for row in dataset.remove_columns("images"))
    n, expected = len(dataset), len(dataset) / 4
    sigma = math.sqrt(n * 0.25 * 0.75)
    assert sorted(positions) == [0, 1, 2, 3]
    assert all(abs(count - expected) <= 4 * sigma for count in positions.values()), positions


def test_numeric_options_window_and_prompt_format():
    import random

    rng = random.Random(0)
    for answer in range(1, 30):
        options = numeric_options(answer, rng, low=1)
        assert str(answer) in options and len(options) == 4
        assert [int(o) for o in options] == list(range(int(options[0]), int(options[0]) + 4))
        assert int(options[0]) >= 1
    assert format_prompt("Q?", ["a", "b"]) == "<image>\nQ?\nOptions: (A) a (B) b"


def test_bad_family_and_metadata_are_named():
    with pytest.raises(ValueError, match="unknown puzzle family 'mazes'"):
        generate_puzzles(2, seed=0, families=["mazes"])
    with pytest.raises(ValueError, match="unknown puzzle family"):
        make_puzzle("mazes", 0, 0)
    with pytest.raises(RecordError, match="row q7: field 'metadata': missing"):
        read_metadata({"id": "q7", "prompt": "x"})
    with pytest.raises(RecordError, match="row q8: field 'metadata'"):
        read_metadata({"id": "q8", "metadata": json.dumps({"family": "mazes", "state": {}})})


def test_a_family_registered_at_its_definition_is_generated_and_listed():
    """`PUZZLE_FAMILIES` is the project's Registry: `@register_puzzle_family` on a subclass makes it a generator
    choice, and an unknown name lists every family (and the tiers)."""
    from trl_vlprm.testbed import PUZZLE_FAMILIES, PuzzleFamily, register_puzzle_family
    from trl_vlprm.testbed.families import ColorGrid

    @register_puzzle_family
    class Recoloured(ColorGrid):
        name = "recoloured_grid"

    try:
        assert isinstance(PUZZLE_FAMILIES.get("recoloured_grid"), Recoloured)
        puzzles = generate_puzzles(4, seed=3, families="color_grid,recoloured_grid")
        assert puzzles["category"] == ["color_grid", "recoloured_grid"] * 2
        # same seed and index, another family name: another random stream, so another puzzle
        assert puzzles[1]["id"] == "recoloured_grid-s3-00001"
        assert read_metadata(puzzles[1])[0] is PUZZLE_FAMILIES.get("recoloured_grid")
        tiers = r"\(or a tier: hard, learnable, lookalike, image_check, image_carry\)"
        with pytest.raises(ValueError, match=r"available: .*recoloured_grid.* " + tiers):
            generate_puzzles(1, families="recolored_grid")
    finally:
        PUZZLE_FAMILIES.unregister("recoloured_grid")
    with pytest.raises(ValueError, match="has no `name`"):
        register_puzzle_family(type("Nameless", (PuzzleFamily,), {}))
