"""The lookalike tier: puzzles drawn in PuzzleVQA's visual vocabulary, so a PRM trained on them meets real images.

A PRM trained on the learnable tier (one large shape, one-sentence steps) scores PuzzleVQA's real process bench at
chance: it has never seen a grid of pastel circles or a caption listing nine colours. These families draw what the
colour-based PuzzleVQA types show (circles in a grid, a hexagon split into six parts with or without numbers,
polygons in a triangle, bars of three lengths; numbered tiles, rings of one hue in four shades and overlapping
squares are in `lookalike_compound.py`) in PuzzleVQA's soft palette, with the same grey "?" part, and phrase the
perception step the way PuzzleVQA's captions are phrased: a sentence of layout, then bracketed Python-style lists
(`['red', '?', 'blue']`).

A misread swaps one colour word of the caption for another of the eleven colour names that `data.puzzlevqa`'s
perturbation draws from (`SWAP_COLOURS`), uniformly, as that perturbation does; in an image of two to four colours
the new one is mostly absent from the image. Checking it is a bag-of-colours comparison: the colour words of the
caption against the colours of all image tokens, read at the caption's last token. That needs no alignment of the
k-th word with the k-th object (which the hard tier needs, and a tiny model does not learn), so a 2-layer model can
learn it; a swap to a colour present elsewhere in the image changes only the counts and is harder (docs/testbed.md
has what each transfers). Numbers, lengths and sizes are drawn and stated but never misread.

The reasoning is one rule for every list layout: each colour fills the same number of parts, so the missing part has
the colour seen once fewer ("Each color appears 3 times except red, so the answer is red"); for rings, the shade
follows the size. Real PuzzleVQA rules differ per type; this tier is for the perception check.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from ..data.puzzlevqa import COLOUR_NAMES
from . import render
from .families import PuzzleFamily, other_choice, register_puzzle_family

# PuzzleVQA's pastel palette (read off its images: the fill of each colour name).
PV_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (224, 102, 102),
    "orange": (246, 178, 107),
    "yellow": (255, 217, 102),
    "green": (147, 196, 125),
    "blue": (111, 168, 220),
    "purple": (142, 124, 195),
}
# The names a misread draws from: the same eleven as the real bench's perturbation.
SWAP_COLOURS: tuple[str, ...] = COLOUR_NAMES
# Fills of the five names PuzzleVQA never draws, for the variant that draws all eleven (`ALL_COLOURS`).
EXTRA_COLOURS: dict[str, tuple[int, int, int]] = {
    "pink": (245, 160, 200),
    "brown": (160, 110, 70),
    "gray": (160, 160, 160),
    "white": (255, 255, 255),
    "black": (60, 60, 60),
}
DRAW_PALETTE = {**PV_PALETTE, **EXTRA_COLOURS}
ALL_COLOURS = tuple(name for name in SWAP_COLOURS if name in DRAW_PALETTE)
# The colours parts are drawn in: PuzzleVQA's six (default). Then pink, brown, gray, white and black are only ever
# misread names, as on the real bench, and a PRM learns that text rule rather than looking at the image (measured,
# docs/testbed.md: it transfers to the real bench for that reason). Set to `ALL_COLOURS` to make every name as
# likely drawn as misread, so that only the image tells; a tiny PRM did not learn that check within the recipe.
COLOURS: tuple[str, ...] = tuple(PV_PALETTE)
# Share of misreads that swap in a colour already present elsewhere in the image (only the counts change). None:
# draw uniformly from SWAP_COLOURS, as the real perturbation does.
PRESENT_SWAP_SHARE: float | None = None
MISSING_FILL = (238, 238, 238)  # the grey of the "?" part
LIGHT_SHARE = 0.3  # share of puzzles drawn in the lighter tints (PuzzleVQA's numbered hexagons use them)
ORDINALS = ("first", "second", "third")
LENGTHS = {"short": 0.3, "medium": 0.5, "long": 0.75}
RING_SIZES = ("small", "medium", "large", "extra large")
SHADES = ("light", "medium", "dark", "very dark")
RING_HUES_ALL = (  # the hues drawn in four shades
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
)  # those with four shades  # by size: the larger the ring, the darker its shade
_SHADE_MIX = {"light": (1, 0.35), "medium": (0, 0.0), "dark": (-1, 0.2), "very dark": (-1, 0.35)}
_LIST = re.compile(r"\[([^\]]*)\]")


def tint(rgb: tuple[int, int, int], toward: int, amount: float) -> tuple[int, int, int]:
    """`rgb` mixed with white (toward=1) or black (toward=-1) by `amount`."""
    target = 255 if toward > 0 else 0
    return tuple(round(c + (target - c) * amount) for c in rgb)  # type: ignore[return-value]


def shade_rgb(name: str) -> tuple[int, int, int]:
    """The fill of a colour name, with an optional shade prefix ("dark purple", "very dark red")."""
    for shade in sorted(SHADES, key=len, reverse=True):
        if name.startswith(shade + " "):
            toward, amount = _SHADE_MIX[shade]
            return tint(DRAW_PALETTE[name[len(shade) + 1 :]], toward, amount)
    return DRAW_PALETTE[name]


def quoted(items) -> str:
    """A Python-style list as PuzzleVQA's captions write it: strings quoted, numbers bare."""
    return "[" + ", ".join(repr(x) if isinstance(x, str) else str(x) for x in items) + "]"


def parse_list(text: str) -> list:
    """The entries of a caption list: quoted strings, "?" and bare integers."""
    items = []
    for raw in (x.strip() for x in text.split(",")):
        if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
            items.append(raw[1:-1])
        elif raw.lstrip("-").isdigit():
            items.append(int(raw))
        else:
            return []
    return items


def hue(name: str) -> str:
    return name.split()[-1]


class ColouredParts(PuzzleFamily):
    """Parts whose colours follow "each colour fills the same number of parts"; one part is a grey "?"."""

    num_parts = 6
    num_colours = 3
    vocabulary = (*SWAP_COLOURS, *SHADES)
    question_text = "What is the missing color of the part denoted with a question mark?"

    def sample(self, rng):
        colours = rng.sample(COLOURS, self.num_colours)
        parts = [c for c in colours for _ in range(self.num_parts // self.num_colours)]
        rng.shuffle(parts)
        missing = rng.randrange(len(parts))
        answer = parts[missing]
        parts[missing] = "?"
        options = [answer] + rng.sample([c for c in COLOURS if c != answer], 3)
        rng.shuffle(options)
        state = {"colours": parts, "options": options, "answer": answer, "light": rng.random() < LIGHT_SHARE}
        return {**state, **self.sample_extra(rng, parts)}

    def sample_extra(self, rng, parts) -> dict:
        return {}

    def fill(self, state, name: str) -> tuple[int, int, int]:
        if name == "?":
            return MISSING_FILL
        rgb = shade_rgb(name)
        return tint(rgb, 1, 0.3) if state.get("light") else rgb

    def observe(self, state):
        return list(state["colours"])

    def image_tags(self, state):
        # The hue of every part drawn (a shade or a light tint is still its hue), overlaps included; not the "?".
        drawn = [*state["colours"], *state.get("overlaps", ())]
        return frozenset(hue(name) for name in drawn if name != "?")

    def parse(self, state, text):
        lists = [parse_list(body) for body in _LIST.findall(text)]
        if not lists or any(not items for items in lists):
            return None
        obs = self.parse_lists(state, lists)
        if obs is None or len(obs) != len(state["colours"]) or obs.count("?") != 1:
            return None
        if self.describe(state, obs) != text.strip():
            return None
        return obs

    def parse_lists(self, state, lists):
        return [x for items in lists for x in items]

    def misread(self, state, obs, rng):
        obs = list(obs)
        i = rng.choice([k for k, x in enumerate(obs) if x != "?"])
        old = obs[i]
        present = sorted({hue(x) for j, x in enumerate(obs) if x != "?" and j != i and hue(x) != hue(old)})
        if PRESENT_SWAP_SHARE is None:
            new = other_choice(rng, SWAP_COLOURS, hue(old))
        elif present and rng.random() < PRESENT_SWAP_SHARE:
            new = rng.choice(present)
        else:
            new = rng.choice([c for c in SWAP_COLOURS if c not in present and c != hue(old)])
        obs[i] = old[: len(old) - len(hue(old))] + new
        return obs

    def solve(self, state, obs):
        counts = Counter(x for x in obs if x != "?")
        most = max(counts.values())
        short = [c for c in counts if counts[c] < most]
        return short[0] if short else next(x for x in obs if x != "?")

    def explain(self, state, obs, value):
        most = max(Counter(x for x in obs if x != "?").values())
        return f"Each color appears {most} times except {value}, so the answer is {value}"

    def label_missing(self, draw, center, size, px=None):
        render.text_centered(draw, center, "?", px or max(8, size // 12))


def outline_width(size: int) -> int:
    return max(1, size // 170)


@register_puzzle_family
class CircleGrid(ColouredParts):
    """Nine circles in a 3x3 grid (PuzzleVQA's color_grid)."""

    name = "pv_circle_grid"
    num_parts, num_colours = 9, 3

    def rows(self, obs):
        return [obs[0:3], obs[3:6], obs[6:9]]

    def render(self, state, size):
        image, draw = render.canvas(size)
        cell = size * 0.8 / 3
        for k, name in enumerate(state["colours"]):
            cx, cy = size * 0.1 + (k % 3 + 0.5) * cell, size * 0.1 + (k // 3 + 0.5) * cell
            r = cell * 0.4
            if name == "?":
                self.label_missing(draw, (cx, cy), size)
            else:
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=self.fill(state, name), outline=render.INK,
                             width=outline_width(size))  # fmt: skip
        return image

    def describe(self, state, obs):
        rows = self.rows(obs)
        return (
            "There are circles with different colors arranged with a grid formation in the image. "
            f"The colors in the first row are {quoted(rows[0])}, the colors in the second row are {quoted(rows[1])}, "
            f"and the colors in the third row are {quoted(rows[2])}."
        )


@register_puzzle_family
class Hexagon(ColouredParts):
    """A hexagon split into six triangular parts, half of them numbered (color_hexagon, color_number_hexagon)."""

    name = "pv_hexagon"

    def sample_extra(self, rng, parts):
        return {"numbers": [rng.randint(1, 9) for _ in parts] if rng.random() < 0.5 else None}

    def render(self, state, size):
        image, draw = render.canvas(size)
        c, radius = size / 2, size * 0.4
        corners = [(c + radius * math.cos(math.pi * k / 3), c - radius * math.sin(math.pi * k / 3)) for k in range(7)]
        for k, name in enumerate(state["colours"]):  # anti-clockwise from the right-hand corner
            draw.polygon([(c, c), corners[k], corners[k + 1]], fill=self.fill(state, name), outline=render.INK,
                         width=outline_width(size))  # fmt: skip
            centroid = ((c + corners[k][0] + corners[k + 1][0]) / 3, (c + corners[k][1] + corners[k + 1][1]) / 3)
            numbers = state.get("numbers")
            label = "?" if name == "?" else (str(numbers[k]) if numbers else None)
            if label:
                render.text_centered(draw, centroid, label, max(8, size // 12))
        return image

    def describe(self, state, obs):
        text = f"There is a hexagon split into six parts with the colors {quoted(obs)} in an anti-clockwise order."
        if state.get("numbers"):
            numbers = ["?" if x == "?" else n for x, n in zip(obs, state["numbers"])]
            text += f" The parts are denoted with the numbers {quoted(numbers)} respectively."
        return text

    def parse_lists(self, state, lists):
        return lists[0]


@register_puzzle_family
class PolygonTriangle(ColouredParts):
    """Six regular polygons (5-9 sides) in rows of 1, 2 and 3 (polygon_sides_color)."""

    name = "pv_polygons"

    def sample_extra(self, rng, parts):
        return {"sides": [rng.randint(5, 9) for _ in parts]}

    def render(self, state, size):
        image, draw = render.canvas(size)
        positions = [(0.5, 0.2), (0.35, 0.47), (0.65, 0.47), (0.2, 0.74), (0.5, 0.74), (0.8, 0.74)]
        for (x, y), name, sides in zip(positions, state["colours"], state["sides"]):
            center = (x * size, y * size)
            points = render.regular_polygon_points(center, size * 0.11, sides)
            draw.polygon(points, fill=self.fill(state, name), outline=render.INK, width=outline_width(size))
            if name == "?":
                self.label_missing(draw, center, size)
        return image

    def describe(self, state, obs):
        return (
            f"There are {len(obs)} colored polygons arranged in a triangle with color {quoted(obs[:1])} in the top "
            f"row, {quoted(obs[1:3])} in the middle row, and {quoted(obs[3:])} in the bottom row."
        )


@register_puzzle_family
class Rectangles(ColouredParts):
    """Six vertical bars of three lengths side by side (rectangle_height_color)."""

    name = "pv_rectangles"

    def sample_extra(self, rng, parts):
        return {"lengths": [rng.choice(tuple(LENGTHS)) for _ in parts]}

    def render(self, state, size):
        image, draw = render.canvas(size)
        n = len(state["colours"])
        width = size * 0.8 / n
        for k, (name, length) in enumerate(zip(state["colours"], state["lengths"])):
            x0, height = size * 0.1 + k * width + width * 0.1, size * LENGTHS[length]
            box = (x0, size / 2 - height / 2, x0 + width * 0.8, size / 2 + height / 2)
            draw.rounded_rectangle(box, radius=width * 0.3, fill=self.fill(state, name), outline=render.INK,
                                   width=outline_width(size))  # fmt: skip
            if name == "?":
                self.label_missing(draw, (x0 + width * 0.4, size / 2), size)
        return image

    def describe(self, state, obs):
        return (
            f"There are {len(obs)} rectangles in the image with varying colors and lengths. The lengths from left to "
            f"right are {quoted(state['lengths'])}. The colors from left to right are {quoted(obs)}."
        )

    def parse_lists(self, state, lists):
        return lists[-1]
