"""What the scorer tests share: candidate solutions, random images and random candidate groups.

`SOLUTIONS` are whole solutions of one to four steps and of very different lengths (a batch of them is padded), the
last one long single step. `STEP_TEXTS` are the steps the engine tests draw random candidates from
(`random_candidates`): short, of varied wording and numbers, so that the scores of a group differ.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from trl_vlprm.guidance.policy import Candidate

SOLUTIONS = [
    ["There are 3 circles.", "So 3 + 4 = 7.", "Answer: 7"],
    ["Count."],
    ["The clock shows 3 o'clock; add 4 hours to get 7 o'clock", "Therefore the answer is B"],
    ["The polygon has 6 sides.", "A hexagon.", "6 - 1 = 5", "Answer: (C)"],
    ["Let us think step by step. The pattern repeats in every row and column, so the missing part is blue."],
]

STEP_TEXTS = [
    "The image shows a grid of coloured squares.",
    "There are 3 circles, 4 triangles and 5 squares.",
    "Count the objects in every row.",
    "So 2 * 3 = 6 and 9 - 4 = 5.",
    "Therefore the answer is B.",
]


def random_image(height: int, width: int, seed: int) -> Image.Image:
    """An RGB image of uniform random pixels (no two seeds alike, so images cannot be mixed up unnoticed)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def random_candidates(seed: int, n: int) -> list[Candidate]:
    """`n` candidates of 1 to 4 steps drawn from `STEP_TEXTS` (repeats allowed: candidates share prefixes)."""
    rng = np.random.default_rng(seed)
    return [
        Candidate(steps=[STEP_TEXTS[j] for j in rng.integers(0, len(STEP_TEXTS), rng.integers(1, 5))])
        for _ in range(n)
    ]
