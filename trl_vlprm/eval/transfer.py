"""Transfer to real images: how a scorer ranks PuzzleVQA's gold traces above perturbed ones, per puzzle type.

A PRM trained only on rendered puzzles (the testbed's lookalike tier) is measured here on PuzzleVQA's real images:
`puzzlevqa_transfer` scores every puzzle's gold trace and the two negatives of `puzzlevqa_process_bench`, and its
`PuzzleVQATransfer` report gives the perception and reasoning AUC per type, pooled, with a bootstrap interval.
docs/testbed.md has what transfers and what does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl_vlprm.data.puzzlevqa import COLOUR_NAMES, PUZZLEVQA_DRAWN_COLOURS, swapped_in_word
from trl_vlprm.data.schema import PERCEPTION, REASONING
from trl_vlprm.guidance.policy import Candidate, StepScorer

# PuzzleVQA's types whose images and captions carry colours (a perception negative there is often a colour swap).
PUZZLEVQA_COLOUR_TYPES = (
    "color_grid",
    "color_hexagon",
    "color_number_hexagon",
    "color_overlap_squares",
    "color_size_circle",
    "grid_number_color",
    "polygon_sides_color",
    "rectangle_height_color",
)


# What a perception negative writes in: a colour PuzzleVQA draws (only the image can tell it is wrong), one it never
# draws (the caption's text alone gives it away), or another detail (a number, size, length or shape).
DRAWN_COLOUR, NEVER_DRAWN_COLOUR, OTHER_DETAIL = "drawn colour", "never-drawn colour", "other detail"


def swap_kind(gold_caption: str, perturbed_caption: str) -> str:
    """`DRAWN_COLOUR`, `NEVER_DRAWN_COLOUR` or `OTHER_DETAIL`: the kind of word the perturbed caption writes in."""
    word = swapped_in_word(gold_caption, perturbed_caption)
    if word in PUZZLEVQA_DRAWN_COLOURS:
        return DRAWN_COLOUR
    return NEVER_DRAWN_COLOUR if word in COLOUR_NAMES else OTHER_DETAIL


def rank_auc(higher: Sequence[float], lower: Sequence[float]) -> float:
    """P(a score of `higher` exceeds one of `lower`), ties counting half: the Mann-Whitney AUC (chance is 0.5)."""
    import numpy as np

    a, b = np.asarray(higher, dtype=float), np.asarray(lower, dtype=float)
    if not len(a) or not len(b):
        raise ValueError(f"rank_auc needs scores on both sides, got {len(a)} and {len(b)}")
    return float(np.mean(a[:, None] > b[None, :]) + 0.5 * np.mean(a[:, None] == b[None, :]))


@dataclass
class PuzzleVQATransfer:
    """Per puzzle (of PuzzleVQA, or AlgoPuzzleVQA's captioned types), a scorer's P(correct) of the gold caption and of
    its perturbed copy (step 0), and of the gold deduction and of its wrong-answer copy (the last step);
    `puzzlevqa_transfer` fills it.

    The perception AUC of a set of puzzles is `rank_auc(gold captions, perturbed captions)` over it: how often the
    PRM ranks a true caption above a misread one (0.5: chance). The reasoning AUC compares the last step's scores.
    `swap_kinds` holds what each perception negative writes in (`swap_kind`): over the colour-based types, the AUC on
    swaps to a drawn colour is what reading the image earns, the one on never-drawn colours what the text gives away.
    """

    benchmark: str = "PuzzleVQA"
    categories: list[str] = field(default_factory=list)
    swap_kinds: list[str] = field(default_factory=list)
    gold_caption: list[float] = field(default_factory=list)
    perturbed_caption: list[float] = field(default_factory=list)
    gold_deduction: list[float] = field(default_factory=list)
    wrong_deduction: list[float] = field(default_factory=list)

    def _select(self, categories: Sequence[str] | None, swap_kind: str | None = None):
        import numpy as np

        keep = np.array([categories is None or c in categories for c in self.categories], dtype=bool)
        if swap_kind is not None:
            keep &= np.array([k == swap_kind for k in self.swap_kinds], dtype=bool)
        if not keep.any():
            raise ValueError(f"no scored puzzle of the categories {categories} (swap kind {swap_kind})")
        return keep

    def auc(
        self, kind: str = PERCEPTION, categories: Sequence[str] | None = None, swap_kind: str | None = None
    ) -> float:
        """The perception (or reasoning) AUC over the puzzles of `categories` (all when None) whose perception
        negative writes in a word of `swap_kind` (any when None)."""
        import numpy as np

        keep = self._select(categories, swap_kind)
        gold, bad = (
            (self.gold_caption, self.perturbed_caption)
            if kind == PERCEPTION
            else (self.gold_deduction, self.wrong_deduction)
        )
        return rank_auc(np.asarray(gold)[keep], np.asarray(bad)[keep])

    def interval(
        self,
        kind: str = PERCEPTION,
        categories: Sequence[str] | None = None,
        level: float = 0.99,
        n: int = 400,
        seed: int = 0,
    ) -> tuple[float, float]:
        """Bootstrap interval of `auc` at `level`, resampling puzzles (each keeps its gold and perturbed pair)."""
        import numpy as np

        keep = np.flatnonzero(self._select(categories))
        rng = np.random.default_rng(seed)
        gold, bad = (
            (self.gold_caption, self.perturbed_caption)
            if kind == PERCEPTION
            else (self.gold_deduction, self.wrong_deduction)
        )
        gold, bad = np.asarray(gold), np.asarray(bad)
        draws = [rank_auc(gold[i], bad[i]) for i in (keep[rng.integers(0, len(keep), len(keep))] for _ in range(n))]
        low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
        return float(low), float(high)

    def table(self) -> list[str]:
        """A markdown table: perception and reasoning AUC per type, colour-based types first, then pooled rows."""
        types = list(dict.fromkeys(self.categories))
        ordered = [t for t in PUZZLEVQA_COLOUR_TYPES if t in types] + [
            t for t in types if t not in PUZZLEVQA_COLOUR_TYPES
        ]
        lines = [f"| {self.benchmark} type | puzzles | perception AUC | reasoning AUC |", "|---|---|---|---|"]
        for name in ordered:
            colour = " (colour)" if name in PUZZLEVQA_COLOUR_TYPES else ""
            lines.append(
                f"| {name}{colour} | {self.categories.count(name)} | {self.auc(PERCEPTION, [name]):.3f} | "
                f"{self.auc(REASONING, [name]):.3f} |"
            )
        colour_types = [t for t in ordered if t in PUZZLEVQA_COLOUR_TYPES]
        if colour_types:
            count = sum(self.categories.count(t) for t in colour_types)
            lines.append(
                f"| colour-based types, pooled | {count} | {self.auc(PERCEPTION, colour_types):.3f} | "
                f"{self.auc(REASONING, colour_types):.3f} |"
            )
        lines.append(f"| all types, pooled | {len(self.categories)} | {self.auc():.3f} | {self.auc(REASONING):.3f} |")
        for swap in (DRAWN_COLOUR, NEVER_DRAWN_COLOUR):
            chosen = [c in colour_types and k == swap for c, k in zip(self.categories, self.swap_kinds)]
            if any(chosen):
                lines.append(
                    f"| colour-based types, swaps to a {swap} | {sum(chosen)} | "
                    f"{self.auc(PERCEPTION, colour_types, swap):.3f} | - |"
                )
        return lines


def puzzlevqa_transfer(
    scorer: StepScorer,
    root: str | Path | None = None,
    categories: Sequence[str] | None = None,
    limit_per_category: int | None = None,
    seed: int = 0,
    show_progress: bool = False,
    swap_images: bool = False,
    benchmark: str = "PuzzleVQA",
) -> PuzzleVQATransfer:
    """Score PuzzleVQA's gold traces and their perception / reasoning negatives (`build_puzzlevqa_supervision`'s
    records, read in place from `root`, default `$TRL_VLPRM_SHARED/benchmarks`) with `scorer`, per puzzle type.

    One scorer call per puzzle holds its three traces (gold, perception negative, reasoning negative). The
    perception AUC compares step 0 (the caption: a perception negative is wrong from it on), the reasoning AUC the
    last step (a reasoning negative differs only there). `benchmark="AlgoPuzzleVQA"` scores the same way its
    captioned types (`build_algopuzzlevqa_supervision`: captions written from each puzzle's `solution`).

    With `swap_images`, every puzzle is scored with the image of the next puzzle of its type (the last with the
    first's): a PRM that reads the image loses its AUC there, while one that ranks captions by their text alone
    (e.g. "a colour name PuzzleVQA never draws is a misread") keeps it.
    """
    from tqdm.auto import tqdm

    from trl_vlprm.data.algopuzzlevqa import build_algopuzzlevqa_supervision
    from trl_vlprm.data.puzzlevqa import build_puzzlevqa_supervision, default_benchmarks_root

    builders = {"PuzzleVQA": build_puzzlevqa_supervision, "AlgoPuzzleVQA": build_algopuzzlevqa_supervision}
    if benchmark not in builders:
        raise ValueError(f"benchmark {benchmark!r} has no process bench; available: {', '.join(builders)}")
    records = builders[benchmark](
        root or default_benchmarks_root(), list(categories) if categories else None, limit_per_category, seed
    )
    by_question: dict[str, dict[str, Mapping[str, Any]]] = {}
    for record in records:
        question, variant = record["id"].rsplit("#", 1)
        by_question.setdefault(question, {})[variant] = record
    images = {}
    if swap_images:
        by_type: dict[str, list[str]] = {}
        for question, variants in by_question.items():
            by_type.setdefault(variants["gold"]["category"], []).append(question)
        for questions in by_type.values():
            for k, question in enumerate(questions):
                images[question] = by_question[questions[(k + 1) % len(questions)]]["gold"]["images"]
    report = PuzzleVQATransfer(benchmark=benchmark)
    for question, variants in tqdm(by_question.items(), desc="PuzzleVQA transfer", disable=not show_progress):
        gold, perception, reasoning = variants["gold"], variants[PERCEPTION], variants[REASONING]
        if swap_images:
            gold = {**gold, "images": images[question]}
        candidates = [
            Candidate(steps=list(r["completions"]), step_types=list(r["step_types"]))
            for r in (gold, perception, reasoning)
        ]
        gold_scores, perception_scores, reasoning_scores = scorer.score(gold, candidates)
        report.categories.append(gold["category"])
        report.swap_kinds.append(swap_kind(gold["completions"][0], variants[PERCEPTION]["completions"][0]))
        report.gold_caption.append(float(gold_scores[0]))
        report.perturbed_caption.append(float(perception_scores[0]))
        report.gold_deduction.append(float(gold_scores[-1]))
        report.wrong_deduction.append(float(reasoning_scores[-1]))
    return report
