"""Puzzle families whose reasoning step is arithmetic: counting, number grid, polygon sides, clock."""

from __future__ import annotations

import re

from . import render
from .families import PuzzleFamily, numeric_options, other_choice, register_puzzle_family, split_rows
from .render import PALETTE, SHAPE_SIDES

COUNT_KINDS = ("circle", "square", "triangle")
_SLIPS = (-2, -1, 1, 2)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _numeric_slip(value: str, rng) -> str:
    return str(int(value) + rng.choice(_SLIPS))


@register_puzzle_family
class Counting(PuzzleFamily):
    """Circles, squares and triangles (1-4 of each) on a 4x4 grid of slots; count them all."""

    name = "counting"
    question_text = "How many shapes are there in total?"

    def sample(self, rng):
        counts = [rng.randint(1, 4) for _ in COUNT_KINDS]
        kinds = [k for k, n in zip(COUNT_KINDS, counts) for _ in range(n)]
        slots = rng.sample(range(16), len(kinds))
        total = sum(counts)
        return {
            "counts": counts,
            "shapes": [[k, s] for k, s in zip(kinds, slots)],
            "colour": rng.choice(sorted(PALETTE)),
            "options": numeric_options(total, rng, low=1),
            "answer": str(total),
        }

    def render(self, state, size):
        image, draw = render.canvas(size)
        cell = size / 4
        for kind, slot in state["shapes"]:
            center = ((slot % 4 + 0.5) * cell, (slot // 4 + 0.5) * cell)
            # a triangle of the same circumradius looks smaller: enlarge it so all kinds look alike in size
            render.shape(draw, kind, center, cell * (0.42 if kind == "triangle" else 0.34), state["colour"])
        return image

    def observe(self, state):
        return list(state["counts"])

    def describe(self, state, obs):
        a, b, c = (_plural(n, k) for n, k in zip(obs, COUNT_KINDS))
        return f"I count {a}, {b} and {c}."

    def parse(self, state, text):
        match = re.fullmatch(r"I count (\d+) circles?, (\d+) squares? and (\d+) triangles?\.", text.strip())
        return [int(g) for g in match.groups()] if match else None

    def misread(self, state, obs, rng):
        obs = list(obs)
        i = rng.randrange(3)
        obs[i] = obs[i] + 1 if obs[i] == 0 or rng.random() < 0.5 else obs[i] - 1
        return obs

    def solve(self, state, obs):
        return str(sum(obs))

    def explain(self, state, obs, value):
        return f"{' + '.join(map(str, obs))} = {value}, so the answer is {value}."

    def slip(self, state, obs, value, rng):
        return _numeric_slip(value, rng)


@register_puzzle_family
class NumberGrid(PuzzleFamily):
    """3x3 grid of digits whose rows share one sum; one cell is a question mark."""

    name = "number_grid"
    question_text = "Every row adds up to the same total. What is the missing number marked with a question mark?"

    def sample(self, rng):
        total = rng.randint(12, 20)
        rows = []
        while len(rows) < 3:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            if 1 <= total - a - b <= 9:
                rows.append([a, b, total - a - b])
        r, c = rng.randrange(3), rng.randrange(3)
        answer = rows[r][c]
        rows[r][c] = "?"
        return {"grid": rows, "missing": [r, c], "options": numeric_options(answer, rng, low=1), "answer": str(answer)}

    def render(self, state, size):
        image, draw = render.canvas(size)
        cell = size / 3
        for k in range(1, 3):
            draw.line((k * cell, 0, k * cell, size), fill=render.INK, width=1)
            draw.line((0, k * cell, size, k * cell), fill=render.INK, width=1)
        for r, row in enumerate(state["grid"]):
            for c, v in enumerate(row):
                render.text_centered(draw, ((c + 0.5) * cell, (r + 0.5) * cell), str(v), int(cell * 0.55))
        return image

    def observe(self, state):
        return [list(row) for row in state["grid"]]

    def describe(self, state, obs):
        return "The rows are: " + "; ".join(", ".join(map(str, row)) for row in obs) + "."

    def parse(self, state, text):
        match = re.fullmatch(r"The rows are: (.*)\.", text.strip())
        rows = split_rows(match.group(1)) if match else []
        if len(rows) != 3 or any(len(row) != 3 or not all(x == "?" or x.isdigit() for x in row) for row in rows):
            return None
        if sum(row.count("?") for row in rows) != 1:
            return None
        return [[x if x == "?" else int(x) for x in row] for row in rows]

    @staticmethod
    def _rows(obs):
        missing = next(i for i, row in enumerate(obs) if "?" in row)
        reference = next(i for i in range(3) if i != missing)
        return missing, reference

    def misread(self, state, obs, rng):
        obs = [list(row) for row in obs]
        missing, reference = self._rows(obs)
        if rng.random() < 0.8:  # a digit the answer depends on
            cells = [(reference, j) for j in range(3)] + [(missing, j) for j in range(3) if obs[missing][j] != "?"]
        else:
            other = next(i for i in range(3) if i not in (missing, reference))
            cells = [(other, j) for j in range(3)]
        r, c = rng.choice(cells)
        obs[r][c] = other_choice(rng, [d for d in range(1, 10) if abs(d - obs[r][c]) <= 2], obs[r][c])
        return obs

    def solve(self, state, obs):
        missing, reference = self._rows(obs)
        return str(sum(obs[reference]) - sum(x for x in obs[missing] if x != "?"))

    def explain(self, state, obs, value):
        missing, reference = self._rows(obs)
        total = sum(obs[reference])
        known = [str(x) for x in obs[missing] if x != "?"]
        return (
            f"Row {reference + 1} sums to {' + '.join(map(str, obs[reference]))} = {total}, and "
            f"{total} - {' - '.join(known)} = {value}, so the answer is {value}."
        )

    def slip(self, state, obs, value, rng):
        return _numeric_slip(value, rng)


@register_puzzle_family
class PolygonSides(PuzzleFamily):
    """Three regular polygons (triangle to hexagon); add up their sides."""

    name = "polygon_sides"
    question_text = "What is the total number of sides of all the shapes?"
    _kinds = tuple(SHAPE_SIDES)

    def sample(self, rng):
        kinds = [rng.choice(self._kinds) for _ in range(3)]
        total = sum(SHAPE_SIDES[k] for k in kinds)
        return {
            "kinds": kinds,
            "colours": [rng.choice(sorted(PALETTE)) for _ in kinds],
            "options": numeric_options(total, rng, low=9),
            "answer": str(total),
        }

    def render(self, state, size):
        image, draw = render.canvas(size)
        centers = [(size * 0.27, size * 0.28), (size * 0.73, size * 0.28), (size * 0.5, size * 0.73)]
        for kind, colour, center in zip(state["kinds"], state["colours"], centers):
            render.shape(draw, kind, center, size * 0.2, colour)
        return image

    def observe(self, state):
        return list(state["kinds"])

    def describe(self, state, obs):
        return f"The shapes are a {obs[0]}, a {obs[1]} and a {obs[2]}."

    def parse(self, state, text):
        match = re.fullmatch(r"The shapes are an? (\w+), an? (\w+) and an? (\w+)\.", text.strip())
        kinds = list(match.groups()) if match else []
        return kinds if kinds and all(k in SHAPE_SIDES for k in kinds) else None

    def misread(self, state, obs, rng):
        obs = list(obs)
        i = rng.randrange(3)
        sides = SHAPE_SIDES[obs[i]]  # mistake a polygon for one with a side more or less
        neighbours = [k for k, s in SHAPE_SIDES.items() if abs(s - sides) == 1]
        obs[i] = rng.choice(neighbours)
        return obs

    def solve(self, state, obs):
        return str(sum(SHAPE_SIDES[k] for k in obs))

    def explain(self, state, obs, value):
        sides = " + ".join(str(SHAPE_SIDES[k]) for k in obs)
        return f"The sides add up to {sides} = {value}, so the answer is {value}."

    def slip(self, state, obs, value, rng):
        return _numeric_slip(value, rng)


def _clock_text(hour: int, minute: int) -> str:
    return f"{hour}:{minute:02d}"


def _add_minutes(hour: int, minute: int, delta: int) -> tuple[int, int]:
    total = (hour % 12) * 60 + minute + delta
    return (total // 60) % 12 or 12, total % 60


@register_puzzle_family
class Clock(PuzzleFamily):
    """An analogue clock (minutes a multiple of 5); what time will it show some minutes later?"""

    name = "clock"

    def question(self, state):
        return f"What time will the clock show {state['delta']} minutes later?"

    def sample(self, rng):
        hour = rng.randint(1, 12)
        minute = 5 * rng.randrange(12)
        delta = 5 * rng.randint(3, 23)
        answer = _add_minutes(hour, minute, delta)
        distractors = rng.sample([-60, -10, -5, 5, 10, 60], 3)
        options = [_clock_text(*answer)] + [_clock_text(*_add_minutes(*answer, d)) for d in distractors]
        rng.shuffle(options)
        return {"hour": hour, "minute": minute, "delta": delta, "options": options, "answer": _clock_text(*answer)}

    def render(self, state, size):
        return render.clock(size, state["hour"], state["minute"])

    def observe(self, state):
        return [state["hour"], state["minute"]]

    def describe(self, state, obs):
        return f"The clock shows {_clock_text(*obs)}."

    def parse(self, state, text):
        match = re.fullmatch(r"The clock shows (\d{1,2}):(\d{2})\.", text.strip())
        return [int(match.group(1)), int(match.group(2))] if match else None

    def misread(self, state, obs, rng):
        hour, minute = obs
        if rng.random() < 0.5:  # hour hand read one hour off
            return [(hour - 1 + rng.choice((-1, 1))) % 12 + 1, minute]
        return [hour, (minute + rng.choice((-5, 5))) % 60]

    def solve(self, state, obs):
        return _clock_text(*_add_minutes(*obs, state["delta"]))

    def explain(self, state, obs, value):
        return f"{_clock_text(*obs)} plus {state['delta']} minutes is {value}, so the answer is {value}."

    def slip(self, state, obs, value, rng):
        hour, minute = (int(x) for x in value.split(":"))
        return _clock_text(*_add_minutes(hour, minute, rng.choice((-60, -10, 10, 60))))
