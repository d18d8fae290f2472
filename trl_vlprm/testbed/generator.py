"""Seeded generator of testbed puzzles as stepwise-supervision records with a gold step solution.

Puzzle `i` of seed `s` depends only on `(s, i)` (its own `random.Random`), so the first 100 puzzles of a run of
1,000 are those of a run of 100, and the same call gives the same image bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..data.schema import PERCEPTION, REASONING, RecordError, format_prompt, stepwise_features, to_json_string
from ..registry import UnknownNameError
from ..utils.errors import UsageError
from . import arithmetic, learnable, lookalike, lookalike_compound  # noqa: F401 (their families register themselves)
from .families import PUZZLE_FAMILIES, PuzzleFamily, State

# The tiers (docs/testbed.md): "hard" puzzles a tiny CPU model cannot learn to check in minutes (grids, counting,
# arithmetic, clocks: the default, as before), "learnable" ones it can (one large shape, one-sentence steps), and
# "lookalike" ones drawn and captioned in PuzzleVQA's vocabulary, whose colour check transfers to the real images,
# "image_check": one colour claimed of a multi-part image, which only the image settles (a PRM learns it on a
# warmed-up vision tower, `CPURecipe.vision_warmup_steps`), and "image_carry": the same claim with words after the
# colour, whose verdict must be carried to the step's end (4 layers and `CPURecipe.word_labels` learn it).
TIERS: dict[str, tuple[str, ...]] = {
    "hard": ("color_grid", "size_cycle", "counting", "number_grid", "polygon_sides", "clock"),
    "learnable": ("shape_sides", "shape_colour"),
    "lookalike": (
        "pv_circle_grid",
        "pv_hexagon",
        "pv_polygons",
        "pv_rectangles",
        "pv_tiles",
        "pv_rings",
        "pv_overlap",
    ),
    "image_check": ("pv_circle_claim",),
    "image_carry": ("pv_circle_claim_tail",),
}
DEFAULT_TIER = "hard"
STEP_TYPES = [PERCEPTION, REASONING, REASONING]
ANSWER_PREFIX = "Answer: "


def answer_step(value: str) -> str:
    return f"{ANSWER_PREFIX}{value}"


def parse_answer_step(text: str) -> str | None:
    text = text.strip()
    return text[len(ANSWER_PREFIX) :].strip() if text.startswith(ANSWER_PREFIX) else None


def read_metadata(record: Mapping[str, Any]) -> tuple[PuzzleFamily, State]:
    """The family and hidden state of a generated puzzle record (from its `metadata` JSON column)."""
    row = record.get("id", "?")
    raw = record.get("metadata")
    if not raw:
        raise RecordError(row, "metadata", "missing; only generated testbed puzzles carry their hidden state")
    try:
        meta = json.loads(raw) if isinstance(raw, str) else dict(raw)
        return PUZZLE_FAMILIES.get(meta["family"]), meta["state"]
    except (ValueError, KeyError, TypeError) as err:
        raise RecordError(row, "metadata", f"not a testbed puzzle state ({type(err).__name__}: {err})") from err


def image_tags(record: Mapping[str, Any]) -> frozenset[str]:
    """What a generated puzzle's image shows, as words (its family's `image_tags`: the colour names drawn)."""
    family, state = read_metadata(record)
    return family.image_tags(state)


def claim_holds(record: Mapping[str, Any], image_record: Mapping[str, Any]) -> bool:
    """Whether the colour a `pv_circle_claim` (or `pv_circle_claim_tail`) solution's first step claims is drawn in
    `image_record`'s image: the truth against which `eval.guardrails.image_reading` checks a PRM shown another
    puzzle's image."""
    family, state = read_metadata(record)
    claims = TIERS["image_check"] + TIERS["image_carry"]
    claimed = family.parse(state, record["completions"][0]) if family.name in claims else None
    if claimed is None:
        raise RecordError(record.get("id", "?"), "completions", f"its first step is no claim of {' or '.join(claims)}")
    return claimed[0] in image_tags(image_record)


def require_puzzle_states(dataset, source: str, setting: str) -> None:
    """The scripted policy reads each puzzle's hidden state (the `metadata` column `generate_puzzles` writes): a
    dataset without it is refused, naming what it holds and the fix, before any question is sampled."""
    columns = list(getattr(dataset, "column_names", None) or [])
    if "metadata" not in columns:
        raise UsageError(
            f"{setting}='scripted' solves only testbed puzzles, which carry their hidden state in a 'metadata' "
            f"column; {source} has columns {columns}: write puzzles with `trl-vlprm puzzles --out FILE` (or use "
            "dataset 'puzzles'), or pick a model policy (hf, vllm, server)"
        )


def gold_steps(family: PuzzleFamily, state: State) -> list[str]:
    """The gold three-step solution: true perception, the rule applied to it, the answer."""
    obs = family.observe(state)
    value = family.solve(state, obs)
    return [family.describe(state, obs), family.explain(state, obs, value), answer_step(value)]


def resolve_families(families: str | Sequence[str] | None) -> list[str]:
    """Family names from a tier name ("hard", "learnable"), a comma-separated string or a list; None: the hard tier."""
    if families is None:
        return list(TIERS[DEFAULT_TIER])
    if isinstance(families, str):
        families = TIERS.get(families) or [name.strip() for name in families.split(",") if name.strip()]
    names = list(families)
    for name in names:
        if name not in PUZZLE_FAMILIES:
            raise UnknownNameError(f"{PUZZLE_FAMILIES.unknown(name)} (or a tier: {', '.join(TIERS)})")
    return names


def make_puzzle(family: str, seed: int, index: int, image_size: int = 168) -> dict[str, Any]:
    """One puzzle record of `family`, determined by `(seed, index)` alone."""
    fam = PUZZLE_FAMILIES.get(family)
    rng = random.Random(f"{seed}:{index}:{family}")
    state = fam.sample(rng)
    steps = gold_steps(fam, state)
    puzzle_id = f"{family}-s{seed}-{index:05d}"
    if parse_answer_step(steps[-1]) != state["answer"] or state["answer"] not in state["options"]:
        raise RecordError(puzzle_id, "answer", f"gold steps give {steps[-1]!r} but the state says {state['answer']!r}")
    return {
        "id": puzzle_id,
        "prompt": format_prompt(fam.question(state), state["options"]),
        "images": [fam.render(state, image_size)],
        "completions": steps,
        "labels": [True] * len(steps),
        "step_types": list(STEP_TYPES),
        "answer": state["answer"],
        "options": list(state["options"]),
        "category": family,
        "metadata": to_json_string({"family": family, "state": state}),
    }


def puzzle_features():
    """`stepwise_features()` plus the `metadata` string column (JSON hidden state)."""
    from datasets import Value

    features = stepwise_features(with_types=True)
    features["metadata"] = Value("string")
    return features


def generate_puzzles(n: int, seed: int = 0, families: str | Sequence[str] | None = None, image_size: int = 168):
    """`n` testbed puzzles as a `datasets.Dataset` in the stepwise-supervision schema.

    Args:
        n: number of puzzles; families are dealt round-robin so each gets `n / len(families)`.
        seed: the same seed gives the same records, image bytes included.
        families: names in `PUZZLE_FAMILIES`, or a tier name of `TIERS` ("hard", "learnable"); None: the hard tier.
        image_size: side of the square images in pixels (112-224 suits tiny models).

    Returns:
        A Dataset with columns id, prompt (one "<image>"), images, completions (gold steps), labels (all True),
        step_types, answer, options, category (the family) and metadata (JSON of the hidden state).
    """
    from datasets import Dataset

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    names = resolve_families(families or None)
    records = [make_puzzle(names[i % len(names)], seed, i, image_size) for i in range(n)]
    return Dataset.from_list(records, features=puzzle_features())


def testbed_corpus(per_family: int = 40, seed: int = 0, families: str | Sequence[str] | None = None) -> list[str]:
    """Text of the testbed (questions, options, gold, misread and slipped steps of every family), no images.

    A tokenizer trained on it encodes the testbed's words whole ("hexagon", "purple"), so a tiny PRM checks a
    step by looking at one token per word instead of assembling words from byte pieces.

    Args:
        per_family: puzzles sampled per family.
        seed: seed of the sampling.
        families: the hard and learnable tiers' text is always included (so their tokenizer stays the same);
            these families' (names or a tier, e.g. "lookalike") is added after it.
    """
    texts = []
    extra = resolve_families(families) if families else []
    for name in dict.fromkeys((*TIERS["hard"], *TIERS["learnable"], *extra)):  # tiers first: a stable order
        family = PUZZLE_FAMILIES.get(name)
        rng = random.Random(f"corpus:{seed}:{name}")
        for _ in range(per_family):
            state = family.sample(rng)
            obs = family.observe(state)
            value = family.solve(state, obs)
            misread = family.misread(state, obs, rng)
            slipped = family.slip(state, obs, value, rng)
            texts += [
                format_prompt(family.question(state), state["options"]),
                family.describe(state, obs),
                family.describe(state, misread),
                family.explain(state, obs, value),
                family.explain(state, misread, family.solve(state, misread)),
                family.explain(state, obs, slipped),
                answer_step(value),
            ]
        if family.vocabulary:  # as prose and as a caption's quoted list, where a word follows a quote, not a space
            texts += [" ".join(family.vocabulary), repr(list(family.vocabulary))] * per_family
    return texts
