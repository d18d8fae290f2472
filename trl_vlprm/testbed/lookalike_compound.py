"""The lookalike tier's families whose captions say more than a colour list: numbered tiles (one colour per number),
rings of one hue in four shades (the shade follows the size), and overlapping squares whose overlaps mix their
colours. The tier, its palette, its misreads and its knobs are in `lookalike.py`; these read the knobs from there at
call time, so setting `lookalike.COLOURS` reaches them too.

`pv_circle_claim` (the "image_check" tier) is the smallest check of a multi-part image that only the image can settle
(one colour claimed of a circle grid drawn in any of the eleven names), with which docs/testbed.md measures whether
a PRM reads the image at all.
"""

from __future__ import annotations

import re
from collections import Counter

from . import lookalike as tier
from . import render
from .families import register_puzzle_family
from .lookalike import (
    ALL_COLOURS,
    PV_PALETTE,
    RING_HUES_ALL,
    RING_SIZES,
    SHADES,
    CircleGrid,
    ColouredParts,
    hue,
    outline_width,
    quoted,
)


@register_puzzle_family
class NumberTiles(ColouredParts):
    """A 3x3 grid of coloured numbered tiles, the same number always the same colour (grid_number_color)."""

    name = "pv_tiles"
    num_parts, num_colours = 9, 3

    def sample_extra(self, rng, parts):
        by_colour = dict(zip(ALL_COLOURS, rng.sample(range(1, 12), len(ALL_COLOURS))))
        return {"numbers": [by_colour[c] if c != "?" else 0 for c in parts], "by_colour": by_colour}

    def render(self, state, size):
        image, draw = render.canvas(size)
        cell = size * 0.9 / 3
        for k, (name, number) in enumerate(zip(state["colours"], state["numbers"])):
            x0, y0 = size * 0.05 + (k % 3) * cell, size * 0.05 + (k // 3) * cell
            draw.rounded_rectangle((x0 + 3, y0 + 3, x0 + cell - 3, y0 + cell - 3), radius=cell * 0.12,
                                   fill=self.fill(state, name))  # fmt: skip
            label = str(number) if name != "?" else "?"
            render.text_centered(draw, (x0 + cell / 2, y0 + cell / 2), label, max(8, size // 10))
        return image

    def describe(self, state, obs):
        numbers = [state["by_colour"][state["answer"]] if x == "?" else n for x, n in zip(obs, state["numbers"])]
        pairs = [f"({n}, {x!r})" for n, x in zip(numbers, obs)]
        rows = ["[" + ", ".join(pairs[i : i + 3]) + "]" for i in (0, 3, 6)]
        return (
            f"There is a 3x3 colored grid of numbers. The first row has number-color pair {rows[0]}, the second row "
            f"is {rows[1]}, and the third and final row is {rows[2]}."
        )

    def parse(self, state, text):
        pairs = re.findall(r"\((\d+), '([^']*)'\)", text)
        obs = [name for _, name in pairs]
        ok = len(obs) == len(state["colours"]) and obs.count("?") == 1 and self.describe(state, obs) == text.strip()
        return obs if ok else None

    def question(self, state):
        number = state["by_colour"][state["answer"]]
        return f"What is the missing color if the part denoted with the question mark has the number {number}?"


@register_puzzle_family
class ShadeRings(ColouredParts):
    """Four concentric circles of one hue, darker as they grow; one is a grey "?" (color_size_circle)."""

    name = "pv_rings"
    question_text = "What is the missing color of the part denoted with a question mark?"

    def sample(self, rng):
        colour = rng.choice([c for c in RING_HUES_ALL if c in tier.COLOURS])
        order = list(RING_SIZES)
        rng.shuffle(order)
        shades = [f"{SHADES[RING_SIZES.index(s)]} {colour}" for s in order]
        missing = rng.randrange(4)
        answer = shades[missing]
        shades[missing] = "?"
        others = [f"{s} {colour}" for s in SHADES if f"{s} {colour}" != answer]
        options = [
            answer,
            rng.choice(others),
            f"{rng.choice(SHADES)} {rng.choice([c for c in tier.COLOURS if c != colour])}",
        ]
        options.append(next(f"{s} {c}" for c in tier.COLOURS for s in SHADES if f"{s} {c}" not in options))
        rng.shuffle(options)
        return {"colours": shades, "sizes": order, "options": options, "answer": answer, "light": False}

    def render(self, state, size):
        image, draw = render.canvas(size)
        c = size / 2
        ordered = sorted(zip(state["sizes"], state["colours"]), key=lambda p: -RING_SIZES.index(p[0]))
        for ring, name in ordered:  # the largest first, so each smaller circle is drawn over it
            r = size * 0.12 * (1 + RING_SIZES.index(ring) * 0.9)
            draw.ellipse((c - r, c - r, c + r, c + r), fill=self.fill(state, name), outline=render.INK,
                         width=outline_width(size))  # fmt: skip
            if name == "?":
                inner = size * 0.12 * (1 + (RING_SIZES.index(ring) - 1) * 0.9) if ring != "small" else 0
                self.label_missing(draw, (c, c - (r + inner) / 2 if inner else c), size)
        return image

    def describe(self, state, obs):
        return (
            "There are circles of various sizes and colors in the image. The circles are "
            f"{quoted(state['sizes'])} size, and their colors are {quoted(obs)}."
        )

    def parse_lists(self, state, lists):
        return lists[-1]

    def solve(self, state, obs):
        seen = [x for x in obs if x != "?"]
        colour = Counter(hue(x) for x in seen).most_common(1)[0][0]
        return f"{SHADES[RING_SIZES.index(state['sizes'][obs.index('?')])]} {colour}"

    def explain(self, state, obs, value):
        return f"The circles become darker as they become larger, so the answer is {value}"


PRIMARY_MIXES = {frozenset(("red", "yellow")): "orange", frozenset(("yellow", "blue")): "green",
                 frozenset(("blue", "red")): "purple"}  # fmt: skip


@register_puzzle_family
class OverlapSquares(ColouredParts):
    """Three squares of the primary colours overlapping in a diagonal chain, each overlap the two colours' mix; one
    square is a grey "?" (color_overlap_squares). The caption goes on after its list, naming the overlaps."""

    name = "pv_overlap"
    num_parts = 3

    def sample(self, rng):
        parts = ["red", "yellow", "blue"]
        rng.shuffle(parts)
        overlaps = [PRIMARY_MIXES[frozenset(parts[:2])], PRIMARY_MIXES[frozenset(parts[1:])]]
        missing = rng.choice((0, 2))
        answer = parts[missing]
        parts[missing] = "?"
        options = [answer] + rng.sample([c for c in PV_PALETTE if c != answer], 3)
        rng.shuffle(options)
        return {"colours": parts, "overlaps": overlaps, "options": options, "answer": answer, "light": False}

    def render(self, state, size):
        image, draw = render.canvas(size)
        boxes = [(0.08 + 0.21 * k, 0.08 + 0.21 * k, 0.5 + 0.21 * k, 0.5 + 0.21 * k) for k in range(3)]
        boxes = [tuple(v * size for v in box) for box in boxes]
        for box, name in zip(boxes, state["colours"]):
            draw.rectangle(box, fill=self.fill(state, name), outline=render.INK, width=outline_width(size))
        for k, mix in enumerate(state["overlaps"]):
            a, b = boxes[k], boxes[k + 1]
            draw.rectangle(
                (b[0], b[1], a[2], a[3]), fill=PV_PALETTE[mix], outline=render.INK, width=outline_width(size)
            )
        k = state["colours"].index("?")
        self.label_missing(draw, (boxes[k][0] + size * 0.12, boxes[k][1] + size * 0.12) if k == 0 else
                           (boxes[k][2] - size * 0.12, boxes[k][3] - size * 0.12), size)  # fmt: skip
        return image

    def describe(self, state, obs):
        first, second = state["overlaps"]
        return (
            f"There are 3 squares which overlap each other in the image. The color of the squares are {quoted(obs)}. "
            f"The part where the first and second squares overlap is {first}. The part where the second and third "
            f"squares overlap is {second}."
        )

    def parse_lists(self, state, lists):
        return lists[0]

    def solve(self, state, obs):
        k = obs.index("?")
        known = obs[1]
        mix = state["overlaps"][0 if k == 0 else 1]
        return next((c for c in ("red", "yellow", "blue") if PRIMARY_MIXES.get(frozenset((c, known))) == mix), known)

    def explain(self, state, obs, value):
        return f"Two overlapping squares mix their colors, so the answer is {value}"


@register_puzzle_family
class CircleClaim(CircleGrid):
    """A 3x3 circle grid in three of all eleven colour names; the perception step claims one colour is among the
    circles ("One of the circles is red"), a misread claims one of the options that is absent from the image. Every
    name is as likely drawn as claimed wrongly and both claims are among the options, so no text rule separates them:
    only the image does. The step ends on the claimed word, where its verdict is read (as in the learnable tier)."""

    name = "pv_circle_claim"
    question_text = "Which of the options is the color of one of the circles?"
    CLAIM = re.compile(r"One of the circles is ([a-z]+)")

    def sample(self, rng):
        colours = rng.sample(ALL_COLOURS, 3)
        parts = [c for c in colours for _ in range(3)]
        rng.shuffle(parts)
        parts[rng.randrange(len(parts))] = "?"
        claimed = rng.choice(sorted({c for c in parts if c != "?"}))
        options = [claimed] + rng.sample([c for c in ALL_COLOURS if c not in colours], 3)
        rng.shuffle(options)
        return {"colours": parts, "claimed": claimed, "options": options, "answer": claimed, "light": False}

    def observe(self, state):
        return [state["claimed"]]

    def describe(self, state, obs):
        return f"One of the circles is {obs[0]}"

    def parse(self, state, text):
        match = self.CLAIM.fullmatch(text.strip())
        return [match.group(1)] if match else None

    def misread(self, state, obs, rng):
        return [rng.choice([c for c in state["options"] if c not in self.image_tags(state)])]

    def solve(self, state, obs):
        return obs[0]

    def explain(self, state, obs, value):
        return f"The circle is {value}, so the answer is {value}"


@register_puzzle_family
class CircleClaimTail(CircleClaim):
    """`pv_circle_claim` with the claim followed by one of eight tails of 0-8 tokens ("One of the circles is red in
    the grid of circles shown"), so the verdict is read after the checked word, as at the end of every PuzzleVQA
    caption. A 2-layer PRM does not learn to carry the image check there; with 4 text layers it does, partly and
    unreliably from labels at the step's end, on every seed tried from labels on every word
    (`CPURecipe.word_labels="first_error"`; docs/testbed.md, fourth round)."""

    name = "pv_circle_claim_tail"
    TAILS = (
        "",
        " here",
        " in the grid",
        " in the image",
        ", as drawn",
        " among the nine circles",
        " in the grid of circles shown",
        ", which I can see in the image",
    )
    CLAIM = re.compile(r"One of the circles is ([a-z]+)(?:" + "|".join(re.escape(t) for t in TAILS if t) + ")?")

    def sample(self, rng):
        return {**super().sample(rng), "tail": rng.choice(self.TAILS)}

    def describe(self, state, obs):
        return f"One of the circles is {obs[0]}{state['tail']}"
