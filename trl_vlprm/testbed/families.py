"""Puzzle families: how each kind of puzzle is sampled, drawn, read (perception) and solved (reasoning).

A family works on a JSON-able *state* (the puzzle's hidden truth, stored in the record's `metadata` column) and on
an *observation* (what a solver claims to see in the image). The true observation comes from the state; a misread
one is a perturbed copy. Every solution has the same three steps:

1. perception: `describe(state, obs)` lists what the image shows; `parse(state, text)` reads the claim back;
2. reasoning: `explain(state, obs, value)` applies the rule to `obs` and ends with "so the answer is <value>."
   (the learnable tier leaves the full stop out: see learnable.py);
3. reasoning: "Answer: <value>".

The question text never contains the observation: a misread can only be caught by looking at the image.
"""

from __future__ import annotations

import random
import re
from typing import Any

from PIL import Image

from ..registry import Registry
from . import render
from .render import PALETTE

State = dict[str, Any]
SIZES = ("small", "medium", "large")
_REASONING_VALUE = re.compile(r"so the answer is (.+?)\.?$")


def numeric_options(answer: int, rng: random.Random, low: int = 0) -> list[str]:
    """Four consecutive numbers holding `answer` at a uniformly random rank (so the options leak nothing)."""
    start = max(low, answer - rng.randrange(4))
    return [str(v) for v in range(start, start + 4)]


def parse_value(text: str) -> str | None:
    """The value a reasoning step concludes with ("... so the answer is <value>.")."""
    match = _REASONING_VALUE.search(text.strip())
    return match.group(1) if match else None


def split_rows(body: str) -> list[list[str]]:
    return [[cell.strip() for cell in row.split(",")] for row in body.split(";")]


def other_choice(rng: random.Random, choices: list[Any] | tuple[Any, ...], current: Any) -> Any:
    return rng.choice([c for c in choices if c != current])


class PuzzleFamily:
    """Base class; subclasses fill every method. `name` is also the record's `category`."""

    name: str = ""
    question_text: str = ""
    # Words its steps may hold that sampling seldom shows (e.g. every colour name a misread can draw): the
    # testbed corpus repeats them so the tiny tokenizer keeps each one whole.
    vocabulary: tuple[str, ...] = ()

    def question(self, state: State) -> str:
        return self.question_text

    def sample(self, rng: random.Random) -> State:
        raise NotImplementedError

    def render(self, state: State, size: int) -> Image.Image:
        raise NotImplementedError

    def observe(self, state: State) -> Any:
        raise NotImplementedError

    def describe(self, state: State, obs: Any) -> str:
        raise NotImplementedError

    def parse(self, state: State, text: str) -> Any | None:
        raise NotImplementedError

    def misread(self, state: State, obs: Any, rng: random.Random) -> Any:
        """A different observation; mostly of a detail the answer depends on, so the error reaches the answer."""
        raise NotImplementedError

    def solve(self, state: State, obs: Any) -> str:
        raise NotImplementedError

    def explain(self, state: State, obs: Any, value: str) -> str:
        raise NotImplementedError

    def slip(self, state: State, obs: Any, value: str, rng: random.Random) -> str:
        """A wrong conclusion from `obs` (a wrong rule or an arithmetic slip); always differs from `value`."""
        return other_choice(rng, state["options"], value)

    def image_tags(self, state: State) -> frozenset[str]:
        """What the image shows, as words (the colour names drawn): the targets with which
        `trl_vlprm.testing.warm_up_vision_tower` teaches a tiny random vision tower to see the testbed's images."""
        raise NotImplementedError(f"puzzle family {self.name!r} does not list what its images show (image_tags)")


# name -> the family's one instance; `@register_puzzle_family` on a subclass adds it (docs/testbed.md).
PUZZLE_FAMILIES: Registry[PuzzleFamily] = Registry("puzzle family", base=PuzzleFamily)


def register_puzzle_family(cls: type[PuzzleFamily]) -> type[PuzzleFamily]:
    """Class decorator: registers an instance of the `PuzzleFamily` subclass under its `name` in `PUZZLE_FAMILIES`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`; a puzzle family is registered (and generated) by its name")
    PUZZLE_FAMILIES.register(cls.name)(cls())
    return cls


@register_puzzle_family
class ColorGrid(PuzzleFamily):
    """3x3 Latin square of coloured circles (each row holds each colour once); one circle is a question mark."""

    name = "color_grid"
    question_text = "What is the colour of the missing circle marked with a question mark?"

    def sample(self, rng):
        colours = rng.sample(sorted(PALETTE), 3)
        rows = [colours[i:] + colours[:i] for i in range(3)]
        rng.shuffle(rows)
        r, c = rng.randrange(3), rng.randrange(3)
        answer = rows[r][c]
        rows[r][c] = "?"
        options = colours + [rng.choice([p for p in sorted(PALETTE) if p not in colours])]
        rng.shuffle(options)
        return {"grid": rows, "missing": [r, c], "options": options, "answer": answer}

    def render(self, state, size):
        image, draw = render.canvas(size)
        cell = size / 3
        for r, row in enumerate(state["grid"]):
            for c, colour in enumerate(row):
                center = ((c + 0.5) * cell, (r + 0.5) * cell)
                if colour == "?":
                    render.question_mark(draw, center, cell * 0.38)
                else:
                    render.shape(draw, "circle", center, cell * 0.38, colour)
        return image

    def observe(self, state):
        return [list(row) for row in state["grid"]]

    def describe(self, state, obs):
        return "The grid rows are: " + "; ".join(", ".join(row) for row in obs) + "."

    def parse(self, state, text):
        match = re.fullmatch(r"The grid rows are: (.*)\.", text.strip())
        rows = split_rows(match.group(1)) if match else []
        ok = len(rows) == 3 and all(len(row) == 3 and all(x in PALETTE or x == "?" for x in row) for row in rows)
        return rows if ok and sum(row.count("?") for row in rows) == 1 else None

    def misread(self, state, obs, rng):
        obs = [list(row) for row in obs]
        r, c = state["missing"]
        if rng.random() < 0.8:  # see the expected colour in the question mark's row: the answer flips
            cc = rng.choice([j for j in range(3) if j != c])
            obs[r][cc] = state["answer"]
        else:
            rr, cc = rng.choice([i for i in range(3) if i != r]), rng.randrange(3)
            obs[rr][cc] = other_choice(rng, sorted(PALETTE), obs[rr][cc])
        return obs

    def _parts(self, obs):
        r = next(i for i, row in enumerate(obs) if "?" in row)
        known: list[str] = []
        for i, row in enumerate(obs):
            known += [x for x in row if i != r and x not in known]
        present = [x for x in obs[r] if x != "?"]
        return r, known, present

    def solve(self, state, obs):
        _, known, present = self._parts(obs)
        candidates = [x for x in known if x not in present] or [x for x in sorted(PALETTE) if x not in present]
        return candidates[0]

    def explain(self, state, obs, value):
        r, known, present = self._parts(obs)
        return (
            f"Each complete row holds {', '.join(known)} once; row {r + 1} has {' and '.join(present)}, "
            f"so the answer is {value}."
        )


@register_puzzle_family
class SizeCycle(PuzzleFamily):
    """Six shapes in reading order whose sizes repeat a cycle of three; one shape is a question mark."""

    name = "size_cycle"
    question_text = "What is the size of the missing shape marked with a question mark?"

    def sample(self, rng):
        cycle = list(SIZES)
        rng.shuffle(cycle)
        sizes = cycle * 2
        missing = rng.randrange(6)
        answer = sizes[missing]
        sizes[missing] = "?"
        kind = rng.choice(["circle", "square", "hexagon"])
        return {
            "kind": kind,
            "colour": rng.choice(sorted(PALETTE)),
            "sizes": sizes,
            "missing": missing,
            "options": list(SIZES),
            "answer": answer,
        }

    def render(self, state, size):
        image, draw = render.canvas(size)
        cell = size / 3
        for i, s in enumerate(state["sizes"]):
            center = ((i % 3 + 0.5) * cell, (i // 3 + 0.5) * size / 2)
            if s == "?":
                render.question_mark(draw, center, cell * 0.3)
            else:
                render.shape(draw, state["kind"], center, cell * 0.45 * render.SIZE_SCALE[s], state["colour"])
        return image

    def observe(self, state):
        return list(state["sizes"])

    def describe(self, state, obs):
        return f"The {state['kind']} sizes in reading order are: {', '.join(obs)}."

    def parse(self, state, text):
        match = re.fullmatch(r"The \w+ sizes in reading order are: (.*)\.", text.strip())
        cells = [x.strip() for x in match.group(1).split(",")] if match else []
        ok = len(cells) == 6 and cells.count("?") == 1 and all(x in SIZES or x == "?" for x in cells)
        return cells if ok else None

    @staticmethod
    def _partner(missing: int) -> int:
        return missing - 3 if missing >= 3 else missing + 3

    def misread(self, state, obs, rng):
        obs = list(obs)
        m = state["missing"]
        partner = self._partner(m)
        i = partner if rng.random() < 0.8 else rng.choice([j for j in range(6) if j not in (m, partner)])
        obs[i] = other_choice(rng, SIZES, obs[i])
        return obs

    def solve(self, state, obs):
        return obs[self._partner(obs.index("?"))]

    def explain(self, state, obs, value):
        m = obs.index("?")
        return (
            f"The sizes repeat every 3 shapes and shape {m + 1} matches shape {self._partner(m) + 1}, "
            f"so the answer is {value}."
        )
