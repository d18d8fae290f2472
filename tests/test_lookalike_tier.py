"""The lookalike tier (PuzzleVQA's visual vocabulary) and the per-type PuzzleVQA transfer evaluation.

The tier's promise is that its captions say what its images show, in PuzzleVQA's phrasing, and that its misreads are
drawn as the real bench's perturbation draws them; the evaluation's promise is an AUC that is exactly 1 for a scorer
that knows the gold and exactly what `rank_auc` computes by hand.
"""

from __future__ import annotations

import collections
import random
import re

import pytest

from trl_vlprm.data.puzzlevqa import COLOUR_NAMES, PUZZLEVQA_DRAWN_COLOURS, _swap_detail
from trl_vlprm.eval.transfer import (
    DRAWN_COLOUR,
    NEVER_DRAWN_COLOUR,
    OTHER_DETAIL,
    PUZZLEVQA_COLOUR_TYPES,
    puzzlevqa_transfer,
    rank_auc,
    swap_kind,
)
from trl_vlprm.testbed import TIERS, ScriptedPolicy, generate_puzzles, read_metadata
from trl_vlprm.testbed import testbed_corpus as corpus_text  # aliased: pytest would collect "test*" names
from trl_vlprm.testbed.lookalike import DRAW_PALETTE, PV_PALETTE, RING_HUES_ALL, SWAP_COLOURS, hue, shade_rgb, tint

COLOUR_WORDS = re.compile(r"\b(" + "|".join(COLOUR_NAMES) + r")\b")


@pytest.fixture(scope="module")
def lookalike():
    return list(generate_puzzles(42, seed=0, families="lookalike", image_size=224))


def named_colours(caption: str) -> set[str]:
    return set(COLOUR_WORDS.findall(caption))


def fills(state) -> set[tuple[int, int, int]]:
    """The fills a puzzle's parts are drawn with (its light tint where the puzzle is drawn light), overlaps too."""
    out = {PV_PALETTE[mix] for mix in state.get("overlaps", [])}
    for name in state["colours"]:
        if name != "?":
            rgb = shade_rgb(name)
            out.add(tint(rgb, 1, 0.3) if state.get("light") else rgb)
    return out - {(255, 255, 255)}  # a white part shows only its outline


def test_every_family_is_dealt_and_its_gold_reads_back(lookalike):
    assert collections.Counter(row["category"] for row in lookalike) == {name: 6 for name in TIERS["lookalike"]}
    for row in lookalike:
        family, state = read_metadata(row)
        caption, reasoning, final = row["completions"]
        assert family.parse(state, caption) == family.observe(state), row["id"]
        assert caption.startswith("There ") and caption.endswith(".") and "'?'" in caption, caption
        assert reasoning.endswith(f"so the answer is {row['answer']}") and final == f"Answer: {row['answer']}"
        assert row["answer"] in row["options"] and row["images"][0].size == (224, 224)


def test_the_caption_names_exactly_the_colours_the_image_shows(lookalike):
    """Every part's fill is in the image, and no other part colour of the palette is (the check a PRM learns)."""
    all_fills = {shade_rgb(f"{shade} {c}") for c in RING_HUES_ALL for shade in ("light", "dark", "very dark")}
    all_fills |= {rgb for c in DRAW_PALETTE for rgb in (DRAW_PALETTE[c], tint(DRAW_PALETTE[c], 1, 0.3))}
    all_fills -= {(255, 255, 255)}
    for row in lookalike:
        _, state = read_metadata(row)
        pixels = collections.Counter(row["images"][0].get_flattened_data())
        drawn = {rgb for rgb in all_fills if pixels[rgb] > 100}
        assert drawn == fills(state), row["id"]
        named = {hue(c) for c in state["colours"] if c != "?"} | set(state.get("overlaps", []))
        assert named_colours(row["completions"][0]) == named


def test_misreads_swap_one_colour_word_as_the_real_perturbation_does(lookalike):
    policy = ScriptedPolicy(perception_error_rate=1.0, reasoning_error_rate=0.0, seed=0)
    swapped_in = collections.Counter()
    absent = total = 0
    for row in lookalike:
        _, state = read_metadata(row)
        for solution in policy.sample_solutions(row, 10):
            gold, misread = row["completions"][0].split(), solution.steps[0].split()
            changed = [(a, b) for a, b in zip(gold, misread) if a != b]
            assert len(gold) == len(misread) and len(changed) == 1, (gold, misread)
            old, new = (COLOUR_WORDS.search(word).group(0) for word in changed[0])
            assert old != new and solution.gold_correct == [False, False, False]
            swapped_in[new] += 1
            total += 1
            absent += new not in {hue(c) for c in state["colours"] if c != "?"}
    assert set(swapped_in) == set(SWAP_COLOURS)  # all eleven names, the never-drawn ones too
    # uniform over the ten other names: with 1-3 other colours in the image, most swaps name an absent colour
    assert 0.7 < absent / total < 0.95


def test_the_real_perturbation_finds_a_colour_in_every_rendered_caption(lookalike):
    rng = random.Random(0)
    for row in lookalike:
        caption = row["completions"][0]
        swapped = _swap_detail(caption, rng)
        assert swapped is not None and swapped != caption


def test_the_lookalike_words_are_whole_tokens_and_other_tiers_keep_their_tokenizer():
    from trl_vlprm.testing import build_tiny_tokenizer

    assert corpus_text() == corpus_text(families="learnable")  # the learnable recipe's tokenizer is unchanged
    tokenizer = build_tiny_tokenizer(extra_corpus=corpus_text(families="lookalike"))
    for word in [*SWAP_COLOURS, "light", "dark", "colors", "row", "hexagon", "circles"]:
        assert len(tokenizer.encode(" " + word)) == 1, word
    for word in SWAP_COLOURS:  # inside a caption's list too: the quote is a token of its own
        assert word in tokenizer.tokenize(f"['{word}', '?']") and word in tokenizer.tokenize(f"x, '{word}']")


def test_rank_auc_is_the_mann_whitney_statistic():
    assert rank_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert rank_auc([0.1], [0.9]) == 0.0
    # pairs: (0.5 vs 0.5 tie: 0.5) (0.5 vs 0.2: 1) (0.7 vs 0.5: 1) (0.7 vs 0.2: 1) -> 3.5 / 4
    assert rank_auc([0.5, 0.7], [0.5, 0.2]) == 0.875
    with pytest.raises(ValueError, match="both sides"):
        rank_auc([], [0.1])


class GoldKnowingScorer:
    """Scores a step 1 when it equals the gold trace's step (the question record passed is the gold one)."""

    def score(self, question, candidates):
        return [[float(s == g) for s, g in zip(c.steps, question["completions"])] for c in candidates]


class ConstantScorer:
    def score(self, question, candidates):
        return [[0.5] * len(c.steps) for c in candidates]


def test_puzzlevqa_transfer_scores_every_type_of_the_real_bench():
    report = puzzlevqa_transfer(GoldKnowingScorer(), limit_per_category=2)
    types = set(report.categories)
    assert set(PUZZLEVQA_COLOUR_TYPES) <= types and len(report.categories) == 2 * len(types) == 40
    assert report.auc() == report.auc("reasoning") == 1.0
    assert report.auc("perception", ["color_grid"]) == 1.0 and report.interval() == (1.0, 1.0)
    table = report.table()
    kinds = {k for c, k in zip(report.categories, report.swap_kinds) if c in PUZZLEVQA_COLOUR_TYPES} - {OTHER_DETAIL}
    assert len(table) == 2 + len(types) + 2 + len(kinds)  # the rows of swaps to a (never-)drawn colour follow
    assert table[2].startswith("| color_grid (colour) | 2 | 1.000 | 1.000 |")
    blind = puzzlevqa_transfer(ConstantScorer(), categories=["color_grid", "venn"], limit_per_category=3)
    assert blind.categories == ["color_grid"] * 3 + ["venn"] * 3
    assert blind.auc() == blind.auc("reasoning") == 0.5
    with pytest.raises(ValueError, match="no scored puzzle"):
        blind.auc("perception", ["triangle"])


class NeverDrawnColourRule:
    """Scores a step 0 when it names a colour PuzzleVQA never draws, else 1: the text rule a tiny PRM learns."""

    def score(self, question, candidates):
        never = set(COLOUR_NAMES) - set(PUZZLEVQA_DRAWN_COLOURS)
        return [[0.0 if never & set(re.findall(r"\w+", s)) else 1.0 for s in c.steps] for c in candidates]


def test_swap_kinds_split_what_the_text_gives_away_from_what_only_the_image_tells():
    assert swap_kind("['red', 'blue']", "['red', 'green']") == DRAWN_COLOUR
    assert swap_kind("['medium purple', '?']", "['medium orange', '?']") == DRAWN_COLOUR
    assert swap_kind("['red', 'blue']", "['red', 'pink']") == NEVER_DRAWN_COLOUR
    assert swap_kind("[3, 1, '?']", "[3, 2, '?']") == OTHER_DETAIL
    assert swap_kind("['small', 'large']", "['small', 'medium']") == OTHER_DETAIL
    assert set(PV_PALETTE) == set(PUZZLEVQA_DRAWN_COLOURS)  # the lookalike tier draws PuzzleVQA's six colours
    report = puzzlevqa_transfer(NeverDrawnColourRule(), categories=PUZZLEVQA_COLOUR_TYPES, limit_per_category=10)
    counts = collections.Counter(report.swap_kinds)
    assert set(counts) == {DRAWN_COLOUR, NEVER_DRAWN_COLOUR, OTHER_DETAIL} and sum(counts.values()) == 80
    # the text rule catches every swap to a never-drawn name and none between drawn colours (all ties)
    assert report.auc(swap_kind=NEVER_DRAWN_COLOUR) == 1.0 and report.auc(swap_kind=DRAWN_COLOUR) == 0.5
    row = f"| colour-based types, swaps to a {DRAWN_COLOUR} | {counts[DRAWN_COLOUR]} | 0.500 | - |"
    assert row in report.table()


class ImageReadingScorer:
    """Scores a caption 1 when the question's image is the gold record's own (its path names the puzzle's index)."""

    def score(self, question, candidates):
        own = question["id"].split("#")[0].rsplit("/", 1)[1]
        reads = question["images"][0].filename.endswith(f"_{own}.png")  # decoded from its file: PIL keeps the path
        return [[float(reads and s == g) for s, g in zip(c.steps, question["completions"])] for c in candidates]


def test_swap_images_gives_each_puzzle_the_next_image_of_its_type():
    own = puzzlevqa_transfer(ImageReadingScorer(), categories=["color_grid", "venn"], limit_per_category=3)
    assert own.auc() == 1.0  # every gold caption is scored with its own image
    swapped = puzzlevqa_transfer(ImageReadingScorer(), categories=["color_grid", "venn"], limit_per_category=3,
                                 swap_images=True)  # fmt: skip
    assert swapped.categories == own.categories and swapped.auc() == 0.5  # never its own image: all ties
    text_only = puzzlevqa_transfer(GoldKnowingScorer(), categories=["color_grid"], limit_per_category=3,
                                   swap_images=True)  # fmt: skip
    assert text_only.auc() == 1.0  # a scorer blind to the image keeps its AUC
