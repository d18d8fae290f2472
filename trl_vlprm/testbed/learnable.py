"""The learnable tier: puzzles a ~0.3 M-parameter VL-PRM can learn to check on a CPU in minutes.

The hard-tier families (`families.py`, `arithmetic.py`) ask a tiny model to tie the k-th word of a long perception
step to the k-th object of a grid and to check multi-number arithmetic; in a CPU budget it learns neither and ends
up ignoring the image. These families keep only what it can learn:

- one large shape fills the image, so every image token (84 px -> 9 tokens with the tiny processor) sees it and no
  word-to-token alignment is needed;
- the perception step is one short sentence of whole words ending with the detail the answer depends on ("The shape is
  a red hexagon", "The hexagon is red");
- the reasoning step is a small lookup or a copy ("A hexagon has 6 sides, so the answer is 6"), the answer last.

A misread changes the detail the answer depends on (the kind for `shape_sides`, the colour for `shape_colour`), the
perception step's last word, so it always reaches the answer; a slip changes the value.
"""

from __future__ import annotations

import re

from . import render
from .arithmetic import _numeric_slip
from .families import PuzzleFamily, other_choice, register_puzzle_family
from .render import PALETTE, SHAPE_SIDES

# Share of misreads that change the detail the answer depends on (the kind for `shape_sides`, the colour for
# `shape_colour`), the step's last word, where the verdict is read; the rest change the other detail, a check that
# needs a second attention hop. At 0.75, two of three seeds of `CPURecipe` never bound the kind word to the image
# within its budget; at 1.0 all three did (docs/testbed.md). Lower it for a harder variant.
ANSWER_DETAIL_SHARE = 1.0


class _OneShape(PuzzleFamily):
    """One large coloured regular polygon in the middle of the image; subclasses ask about its sides or colour."""

    kinds = tuple(SHAPE_SIDES)
    answer_detail = "kind"  # the detail the answer depends on: misreads change it

    def _sample_shape(self, rng) -> dict:
        return {"kind": rng.choice(self.kinds), "colour": rng.choice(sorted(PALETTE))}

    def render(self, state, size):
        image, draw = render.canvas(size)
        render.shape(draw, state["kind"], (size / 2, size / 2), size * 0.45, state["colour"])
        return image

    def image_tags(self, state):
        return frozenset((state["colour"], state["kind"]))

    def observe(self, state):
        return [state["colour"], state["kind"]]

    def describe(self, state, obs):
        # The detail the answer depends on is the step's last word, with no full stop after it: the PRM's verdict is
        # read at a step's last token (CPURecipe uses no step separator), so at that very token the attention of the
        # word (query) over the image tokens (keys) can compare the two in one layer. Read two tokens later, the same
        # comparison must hop through a second layer, and a tiny model sits at chance for hundreds of steps.
        colour, kind = obs
        return f"The {kind} is {colour}" if self.answer_detail == "colour" else f"The shape is a {colour} {kind}"

    def parse(self, state, text):
        text = text.strip()
        if match := re.fullmatch(r"The shape is an? (\w+) (\w+)", text):
            colour, kind = match.groups()
        elif match := re.fullmatch(r"The (\w+) is (\w+)", text):
            kind, colour = match.groups()
        else:
            return None
        return [colour, kind] if colour in PALETTE and kind in SHAPE_SIDES else None

    def misread(self, state, obs, rng):
        colour, kind = obs
        change_answer_detail = rng.random() < ANSWER_DETAIL_SHARE
        if change_answer_detail == (self.answer_detail == "kind"):
            return [colour, other_choice(rng, self.kinds, kind)]
        # a misread colour stays among the options when they are colours, so it can still be voted for
        colours = [c for c in state.get("options", []) if c in PALETTE] or sorted(PALETTE)
        return [other_choice(rng, colours, colour), kind]


@register_puzzle_family
class ShapeSides(_OneShape):
    """How many sides does the one shape have? Perception names it; reasoning looks its sides up."""

    name = "shape_sides"
    question_text = "How many sides does the shape have?"

    def sample(self, rng):
        state = self._sample_shape(rng)
        options = [str(SHAPE_SIDES[k]) for k in self.kinds]
        rng.shuffle(options)
        return {**state, "options": options, "answer": str(SHAPE_SIDES[state["kind"]])}

    def solve(self, state, obs):
        return str(SHAPE_SIDES[obs[1]])

    def explain(self, state, obs, value):
        article = "An" if obs[1][0] in "aeiou" else "A"
        return f"{article} {obs[1]} has {SHAPE_SIDES[obs[1]]} sides, so the answer is {value}"

    def slip(self, state, obs, value, rng):
        return _numeric_slip(value, rng) if rng.random() < 0.5 else other_choice(rng, state["options"], value)


@register_puzzle_family
class ShapeColour(_OneShape):
    """What colour is the one shape? Perception names it; reasoning copies the colour it stated."""

    name = "shape_colour"
    question_text = "What is the colour of the shape?"
    answer_detail = "colour"

    def sample(self, rng):
        state = self._sample_shape(rng)
        options = [state["colour"]] + rng.sample([c for c in sorted(PALETTE) if c != state["colour"]], 3)
        rng.shuffle(options)
        return {**state, "options": options, "answer": state["colour"]}

    def solve(self, state, obs):
        return obs[0]

    def explain(self, state, obs, value):
        return f"The {obs[1]} is {obs[0]}, so the answer is {value}"

    def slip(self, state, obs, value, rng):
        return other_choice(rng, state["options"], value)
