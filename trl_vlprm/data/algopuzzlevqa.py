"""AlgoPuzzleVQA as a process bench: gold captions written from each puzzle's `solution`, and their misreads.

AlgoPuzzleVQA ships no captions, but for eight of its eighteen types the `solution` object holds what the image
shows: a clock's time, a calendar's month and first weekday, the water in the jugs, the kiwis in the grid, the tiles
of a sliding puzzle, the checkers on their squares, the disks on the rods, the queens on the board.
`algopuzzlevqa_caption` writes that state in PuzzleVQA's phrasing (values in bracketed lists); `perturb_caption`
misreads one value (another value of the same kind, or two unequal values swapped where the state is an arrangement:
tiles, checkers, disks); `build_algopuzzlevqa_supervision` gives the records `build_puzzlevqa_supervision` gives
(a gold trace, a perception and a reasoning negative), with two steps: the caption and "So the answer is X.".
The other ten types (maps, mazes, colour hues, cubes, ...) hold states no short caption states; they are left out.
"""

from __future__ import annotations

import calendar
import datetime
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .puzzlevqa import PERTURBATION_KINDS, load_puzzlevqa
from .schema import PERCEPTION, REASONING, RecordError, stepwise_features

_KIWI = {0: "empty", 1: "fresh", 2: "rotten"}
_CHECKER = {"G": "green", "R": "red", "_": "empty"}


@dataclass(frozen=True)
class ImageState:
    """What an image shows, as flat `values`; `render` states them in a sentence. A misread replaces one value by
    one of `choices(index)`, or, when `choices` is None (an arrangement), swaps two unequal values."""

    values: tuple
    render: Callable[[Sequence], str]
    choices: Callable[[int], Sequence] | None = None


def _rows(values: Sequence, widths: Sequence[int]) -> list[list]:
    rows, start = [], 0
    for width in widths:
        rows.append(list(values[start : start + width]))
        start += width
    return rows


def _clock(s: Mapping) -> ImageState:
    return ImageState(
        (int(s["current_hour"]), int(s["current_minute"])),
        lambda v: f"The clock shows the time {v[0]}:{v[1]:02d}.",
        lambda i: range(1, 13) if i == 0 else range(60),
    )


def _calendar(s: Mapping) -> ImageState:
    month = int(s["image_month"][0])
    first = datetime.date(int(s["image_year"]), month, 1).strftime("%A")
    return ImageState(
        (calendar.month_name[month], first),
        lambda v: f"The calendar shows the month of {v[0]}, whose first day is a {v[1]}.",
        lambda i: calendar.month_name[1:] if i == 0 else calendar.day_name[:],
    )


def _water_jugs(s: Mapping) -> ImageState:
    capacities = [int(c) for c in s["capacities"]]
    return ImageState(
        tuple(int(w) for w in s["start"]),
        lambda v: f"The jugs of capacities {capacities} litres hold {list(v)} litres of water from left to right.",
        lambda i: range(capacities[i] + 1),
    )


def _rotting_kiwi(s: Mapping) -> ImageState:
    grid = s["timestep"]["minute_0"]
    return ImageState(
        tuple(_KIWI[int(c)] for row in grid for c in row),
        lambda v: f"The cells of the grid, row by row, hold {_rows(v, [len(r) for r in grid])}.",
        lambda i: list(_KIWI.values()),
    )


def _number_slide(s: Mapping) -> ImageState:
    grid = s["starting_grid"]
    return ImageState(
        tuple("empty" if int(t) == 0 else int(t) for row in grid for t in row),
        lambda v: f"The tiles of the board, row by row, are {_rows(v, [len(r) for r in grid])}.",
    )


def _checker_move(s: Mapping) -> ImageState:
    return ImageState(
        tuple(_CHECKER[c] for c in s["start_position"]),
        lambda v: f"At the start the squares hold {list(v)} from left to right.",
    )


def _tower_of_hanoi(s: Mapping) -> ImageState:
    rods = s["start_position"]
    return ImageState(
        tuple(int(d) for rod in rods for d in rod),
        lambda v: (
            f"At the start the rods hold the disks {_rows(v, [len(r) for r in rods])} from bottom to top, "
            "disk 1 the smallest."
        ),
    )


def _n_queens(s: Mapping) -> ImageState:
    rows, columns = int(s["rows"]), int(s["columns"])
    placed = s["given_queen_positions"]
    return ImageState(
        tuple(int(c) for _, c in placed),
        lambda v: (
            f"On the {rows} * {columns} board the queens stand at "
            f"{[[int(r), c] for (r, _), c in zip(placed, v)]} as [row, column], counting from 0 at the top left."
        ),
        lambda i: range(columns),
    )


ALGOPUZZLEVQA_IMAGE_STATES: dict[str, Callable[[Mapping], ImageState]] = {
    "calendar": _calendar,
    "checker_move": _checker_move,
    "clock": _clock,
    "n_queens": _n_queens,
    "number_slide": _number_slide,
    "rotting_kiwi": _rotting_kiwi,
    "tower_of_hanoi": _tower_of_hanoi,
    "water_jugs": _water_jugs,
}
ALGOPUZZLEVQA_CAPTIONED_TYPES = tuple(ALGOPUZZLEVQA_IMAGE_STATES)


def image_state(category: str, solution: Mapping[str, Any], where: str = "?") -> ImageState:
    """The image's state of an AlgoPuzzleVQA puzzle of `category`, read from its `solution` (an error names the
    record and the types that have one)."""
    if category not in ALGOPUZZLEVQA_IMAGE_STATES:
        captioned = ", ".join(ALGOPUZZLEVQA_CAPTIONED_TYPES)
        raise ValueError(f"AlgoPuzzleVQA type {category!r} has no caption; captioned types: {captioned}")
    try:
        return ALGOPUZZLEVQA_IMAGE_STATES[category](solution)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise RecordError(
            where, "solution", f"does not hold a {category} state ({type(err).__name__}: {err})"
        ) from err


def algopuzzlevqa_caption(category: str, solution: Mapping[str, Any], where: str = "?") -> str:
    """The gold caption: what the image of an AlgoPuzzleVQA puzzle of `category` shows, from its `solution`."""
    state = image_state(category, solution, where)
    return state.render(state.values)


def perturb_caption(category: str, solution: Mapping[str, Any], rng: random.Random | int = 0, where: str = "?") -> str:
    """The caption with one value misread: replaced by another of its kind, or (arrangements) swapped with an
    unequal one. Raises `RecordError` naming the record when nothing can be misread (e.g. all values equal)."""
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    state = image_state(category, solution, where)
    values = list(state.values)
    if state.choices is None:
        pairs = [(i, j) for i in range(len(values)) for j in range(i + 1, len(values)) if values[i] != values[j]]
        if not pairs:
            raise RecordError(where, "solution", f"a {category} state of equal values cannot be misread")
        i, j = rng.choice(pairs)
        values[i], values[j] = values[j], values[i]
    else:
        index = rng.randrange(len(values))
        values[index] = rng.choice([c for c in state.choices(index) if c != values[index]])
    return state.render(values)


def build_algopuzzlevqa_supervision(
    root: str | Path,
    categories: list[str] | None = None,
    limit_per_category: int | None = None,
    seed: int = 0,
    kinds: Sequence[str] = PERTURBATION_KINDS,
):
    """Stepwise-supervision records from AlgoPuzzleVQA's captioned types (`ALGOPUZZLEVQA_CAPTIONED_TYPES`, the
    default): per puzzle the gold trace [caption, "So the answer is <answer>."] and one negative of each kind, the
    caption misread (labels [False, False]) or the answer changed to another option (labels [True, False]).

    Ids and seeding are `build_puzzlevqa_supervision`'s: `<question id>#gold` / `#perception` / `#reasoning`, each
    negative seeded by `(seed, question id, kind)`.
    """
    from datasets import Dataset, Image, List

    if any(kind not in PERTURBATION_KINDS for kind in kinds):
        raise ValueError(f"perturbation kinds {list(kinds)}; expected some of {PERTURBATION_KINDS}")
    names = list(categories) if categories is not None else list(ALGOPUZZLEVQA_CAPTIONED_TYPES)
    unknown = [c for c in names if c not in ALGOPUZZLEVQA_IMAGE_STATES]
    if unknown:
        raise ValueError(
            f"AlgoPuzzleVQA types without a caption: {unknown}; captioned: {ALGOPUZZLEVQA_CAPTIONED_TYPES}"
        )
    data_dir = Path(root) / "AlgoPuzzleVQA" / "data"
    questions = load_puzzlevqa(root, "AlgoPuzzleVQA", names, limit_per_category, with_solution=True)
    questions = questions.cast_column("images", List(Image(decode=False)))  # keep paths: no decode + re-encode
    records = []
    types = [PERCEPTION, REASONING]
    for question in questions:
        solution = json.loads(question["solution"])
        line = int(question["id"].rsplit("/", 1)[1]) + 1  # ids count records from 0, files lines from 1
        where = f"{data_dir / question['category']}.json line {line}"
        base = {k: question[k] for k in ("prompt", "images", "answer", "options", "category")}
        caption = algopuzzlevqa_caption(question["category"], solution, where)
        gold = [caption, f"So the answer is {question['answer']}."]
        records.append({**base, "id": f"{question['id']}#gold", "completions": gold, "labels": [True, True],
                        "step_types": types})  # fmt: skip
        for kind in kinds:
            rng = random.Random(f"{seed}:{question['id']}:{kind}")
            if kind == PERCEPTION:
                steps = [perturb_caption(question["category"], solution, rng, where), gold[1]]
                labels = [False, False]
            else:
                wrong = rng.choice([o for o in question["options"] if o != question["answer"]])
                steps, labels = [caption, f"So the answer is {wrong}."], [True, False]
            records.append({**base, "id": f"{question['id']}#{kind}", "completions": steps, "labels": labels,
                            "step_types": types})  # fmt: skip
    return Dataset.from_list(records, features=stepwise_features(with_types=True))
