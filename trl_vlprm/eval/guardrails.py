"""Guard-rails for any trained PRM: does it look at the image, and does its best-of-N beat a random pick?

Two failure modes pass every loss curve unnoticed:

- **A VL-PRM that ignores its image.** It can still reach the majority-class accuracy on perception steps, but it
  cannot catch a misreading. `image_swap_sensitivity` scores each row with its own image and with another
  question's image: a PRM that reads the image moves P(correct) of perception steps; one that ignores it shows ~0.
- **An uninformative but deterministic PRM.** Its best-of-N can fall *below* a random pick: correct solutions of a
  question tend to share one text while wrong ones are diverse, so a fixed scoring quirk favours wrong answers more
  often than chance would. `best_of_n_vs_random` compares the PRM's pick with the exact expectation of a uniformly
  random pick on the very same candidates (the share of correct ones), so no sampling noise blurs the comparison.

`trl-vlprm check --prm <folder>` runs both on testbed solutions or on any stepwise dataset with labels.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trl_vlprm.data.schema import question_key
from trl_vlprm.guidance.aggregation import aggregate
from trl_vlprm.guidance.policy import Candidate, StepScorer
from trl_vlprm.guidance.strategies.base import score_candidates
from trl_vlprm.utils.errors import UsageError

# Below this mean |shift| of perception-step P(correct), a VL-PRM is treated as blind to its image.
BLIND_SHIFT = 0.01


def group_by_question(records: Iterable[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        groups[question_key(record)].append(record)
    return list(groups.values())


@dataclass
class ImageSwapReport:
    """Mean |P(correct | own image) - P(correct | another question's image)| per step type and over all steps."""

    mean_abs_shift: dict[str, float] = field(default_factory=dict)
    num_steps: dict[str, int] = field(default_factory=dict)

    @property
    def blind(self) -> bool:
        """True when perception steps (or all steps, for untyped data) barely move: the PRM ignores its image."""
        key = "perception" if self.num_steps.get("perception") else "all"
        return self.mean_abs_shift.get(key, 0.0) < BLIND_SHIFT

    def lines(self) -> list[str]:
        out = [
            f"   {kind:>10}: mean |delta P(correct)| {self.mean_abs_shift[kind]:.4f} over {self.num_steps[kind]} steps"
            for kind in self.mean_abs_shift
        ]
        if self.blind:
            out.append(
                f"   WARNING: swapping images moves P(correct) by < {BLIND_SHIFT}: this PRM ignores its image and "
                "cannot catch misreadings"
            )
        return out


def image_swap_sensitivity(
    scorer: StepScorer, records: Sequence[Mapping[str, Any]], max_questions: int | None = None
) -> ImageSwapReport:
    """Score each question's solutions with its own images and with the next question's images.

    Args:
        scorer: any `StepScorer` (e.g. `PRMScorer`).
        records: stepwise rows (`prompt`, `images`, `completions`, optional `step_types`); rows of one question
            (see `question_key`) are scored together.
        max_questions: use the first this many questions.
    """
    groups = group_by_question(records)[:max_questions]
    if len(groups) < 2:
        raise ValueError(f"image_swap_sensitivity needs rows of at least 2 questions, got {len(groups)}")
    shifts: dict[str, list[float]] = defaultdict(list)
    for index, group in enumerate(groups):
        question = _question_of(group)
        donor = groups[(index + 1) % len(groups)][0]
        if not question.get("images"):
            raise ValueError(f"row {group[0].get('id', index)}: no image to swap")
        own = _scores(scorer, question, group)
        swapped = _scores(scorer, {**question, "images": donor["images"]}, group)
        for row, own_scores, swapped_scores in zip(group, own, swapped):
            types = row.get("step_types") or [None] * len(own_scores)
            for kind, a, b in zip(types, own_scores, swapped_scores):
                shifts["all"].append(abs(a - b))
                if kind:
                    shifts[kind].append(abs(a - b))
    return ImageSwapReport(
        {kind: sum(values) / len(values) for kind, values in shifts.items()},
        {kind: len(values) for kind, values in shifts.items()},
    )


@dataclass
class ImageReading:
    """Whether a PRM checks its first step against the image or the text: AUCs (0.5 = chance) of the first step's
    score over the rows, with each row's own image and with the next question's image."""

    own: float  # against the step's label, own image
    swapped_vs_labels: float  # against the same labels, next question's image: 0.5 for a PRM that reads the image
    swapped_vs_shown: float  # against the step's truth of the image shown: as `own` for a PRM that reads the image
    num_rows: int

    def line(self) -> str:
        return (
            f"AUC {self.own:.3f} with its own image; with another question's image {self.swapped_vs_labels:.3f} "
            f"against its labels, {self.swapped_vs_shown:.3f} against that image ({self.num_rows} steps)"
        )


def image_reading(
    scorer: StepScorer,
    records: Sequence[Mapping[str, Any]],
    true_of_image: Callable[[Mapping[str, Any], Mapping[str, Any]], bool],
) -> ImageReading:
    """Score each row's first step with its own image and with the next question's; `true_of_image(row, donor)`
    says whether the row's first step is true of the donor's image (e.g. `testbed.claim_holds`). A PRM that reads the
    image follows the image it is shown; one that reads the caption keeps its AUC against the original labels."""
    from trl_vlprm.eval.transfer import rank_auc

    groups = group_by_question(records)
    if len(groups) < 2:
        raise ValueError(f"image_reading needs rows of at least 2 questions, got {len(groups)}")
    own, swapped = ([], []), ([], [])
    shown = ([], [])
    for row in records:  # before any scoring: a missing label is named at once
        if not row.get("labels"):
            raise ValueError(f"row {row.get('id', '?')}: no step labels to measure image reading against")
    for index, group in enumerate(groups):
        donor = groups[(index + 1) % len(groups)][0]
        first = [{**row, "completions": row["completions"][:1]} for row in group]
        question = _question_of(group)
        own_scores = [scores[0] for scores in _scores(scorer, question, first)]
        swapped_scores = [scores[0] for scores in _scores(scorer, {**question, "images": donor["images"]}, first)]
        for row, a, b in zip(group, own_scores, swapped_scores):
            good = 0 if row["labels"][0] else 1
            own[good].append(a)
            swapped[good].append(b)
            shown[0 if true_of_image(row, donor) else 1].append(b)
    return ImageReading(rank_auc(*own), rank_auc(*swapped), rank_auc(*shown), len(own[0]) + len(own[1]))


@dataclass
class SelectionReport:
    """Best-of-N with the PRM vs a uniformly random pick vs the oracle, on the same candidates."""

    prm_accuracy: float
    random_accuracy: float
    oracle_accuracy: float
    num_questions: int
    aggregation: str

    @property
    def margin_sigma(self) -> float:
        """(PRM - random) in standard errors of the PRM's accuracy (a binomial over questions)."""
        p = min(max(self.random_accuracy, 1e-6), 1 - 1e-6)
        return (self.prm_accuracy - self.random_accuracy) / math.sqrt(p * (1 - p) / max(self.num_questions, 1))

    @property
    def below_random(self) -> bool:
        return self.prm_accuracy < self.random_accuracy

    def lines(self) -> list[str]:
        out = [
            f"   best-of-N ({self.aggregation}) with the PRM {self.prm_accuracy:.3f} | random pick "
            f"{self.random_accuracy:.3f} | oracle {self.oracle_accuracy:.3f}  ({self.num_questions} questions, "
            f"PRM - random = {self.margin_sigma:+.1f} sigma)"
        ]
        if self.below_random:
            out.append(
                "   WARNING: PRM best-of-N falls below a random scorer on the same samples: the PRM is uninformative "
                "(a deterministic quirk favours the diverse wrong answers) or anti-correlated with correctness"
            )
        return out


def best_of_n_vs_random(
    scorer: StepScorer, records: Sequence[Mapping[str, Any]], aggregation: str = "min"
) -> SelectionReport:
    """Best-of-N accuracy of `scorer` on labelled solutions grouped by question, against a random pick.

    A solution is correct when all its step labels are true (labels >= 0.5 for soft labels). Questions whose
    solutions are all right or all wrong are kept: every selector scores the same on them. The random pick's
    accuracy is its exact expectation, the share of correct solutions of each question.
    """
    groups = [g for g in group_by_question(records) if len(g) >= 2]
    if not groups:
        raise UsageError(
            f"best-of-N vs random needs questions with at least 2 labelled solutions each; the {len(records)} rows "
            "given group into none (rows of one question share their question_id column, else the id before '#')"
        )
    picked = 0.0
    expected = 0.0
    any_right = 0.0
    for group in groups:
        correct = [all(float(label) >= 0.5 for label in row["labels"]) for row in group]
        scores = _scores(scorer, _question_of(group), group)
        aggregated = [aggregate(s, aggregation) for s in scores]
        best = max(range(len(group)), key=aggregated.__getitem__)
        picked += correct[best]
        expected += sum(correct) / len(correct)
        any_right += any(correct)
    n = len(groups)
    return SelectionReport(picked / n, expected / n, any_right / n, n, aggregation)


def _question_of(group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The question a group of solution rows answers, with its question key as `id` (errors name the question)."""
    return {**group[0], "id": question_key(group[0])}


def _scores(scorer: StepScorer, question: Mapping[str, Any], group: Sequence[Mapping[str, Any]]) -> list[list[float]]:
    """Each row's step scores, through the strategies' `score_candidates`: its shape and finiteness checks (a NaN or
    inf score names the question, candidate and step) hold here too."""
    candidates = [
        Candidate(steps=list(row["completions"]), step_types=list(row.get("step_types") or [])) for row in group
    ]
    score_candidates(scorer, dict(question), candidates)
    return [candidate.step_scores for candidate in candidates]


def sweep_below_random(
    rows: Sequence[Mapping[str, Any]], prm: str, random_label: str = "random", selection: str = "best_of_n:min"
) -> list[str]:
    """Warnings for every (benchmark, policy, N > 1) of a sweep where the PRM's best-of-N is below the random
    scorer's on the same samples (`trl_vlprm.eval.tts_sweep.run_sweep` rows)."""
    table = {
        (r["benchmark"], r["policy"], r["scorer"], r["n"]): r["accuracy"] for r in rows if r["selection"] == selection
    }
    warnings = []
    for (benchmark, policy, scorer, n), accuracy in sorted(table.items()):
        baseline = table.get((benchmark, policy, random_label, n))
        if scorer == prm and n > 1 and baseline is not None and accuracy < baseline:
            warnings.append(
                f"WARNING: {benchmark}/{policy} N={n}: {selection} with {prm} ({accuracy:.3f}) is below a random "
                f"scorer on the same samples ({baseline:.3f}); the PRM is not informative here"
            )
    return warnings


def _candidate_correct(candidate: Mapping[str, Any], gold: Any) -> bool:
    """A candidate of a `trl-vlprm tts` result line is right when every gold step is (testbed), else when its final
    answer matches the gold one (after trimming and case-folding)."""
    if candidate.get("gold_correct"):
        return all(candidate["gold_correct"]) and candidate.get("answer") is not None
    answer = candidate.get("answer")
    return answer is not None and str(answer).strip().casefold() == str(gold).strip().casefold()


def tts_guard_rails(
    lines: Sequence[Mapping[str, Any]],
    questions: Sequence[Mapping[str, Any]],
    scorer: StepScorer,
    scorer_name: str,
    n: int,
    max_questions: int = 20,
) -> list[str]:
    """The guard-rails of `trl-vlprm check`, on a test-time-scaling run's own candidates (`trl-vlprm tts` lines):

    - the chosen answers' accuracy against a uniformly random pick among the same candidates (its exact
      expectation), with a WARNING when the PRM is below it;
    - image-swap sensitivity of the PRM on the candidates of the first `max_questions` questions, with a WARNING when
      it ignores its image (perception shift below `BLIND_SHIFT`).
    """
    with_choice = [line for line in lines if len(line.get("candidates") or []) >= 2]
    out = []
    if with_choice:
        accuracy = sum(bool(line.get("correct")) for line in with_choice) / len(with_choice)
        expected = sum(
            sum(_candidate_correct(c, line.get("gold")) for c in line["candidates"]) / len(line["candidates"])
            for line in with_choice
        ) / len(with_choice)
        out.append(
            f"N={n}: {scorer_name} picks right on {accuracy:.3f} of {len(with_choice)} questions with 2+ candidates; "
            f"a random pick among the same candidates {expected:.3f}"
        )
        if accuracy < expected:
            out.append(
                f"WARNING: N={n}: the answers {scorer_name} chose ({accuracy:.3f}) are below a random pick among the "
                f"same candidates ({expected:.3f}); the PRM is not informative here (`trl-vlprm check` tells more)"
            )
    by_id = {str(q["id"]): q for q in questions}
    rows = [
        {
            "id": f"{line['id']}#{k}",
            "question_id": str(line["id"]),
            "prompt": by_id[str(line["id"])]["prompt"],
            "images": by_id[str(line["id"])].get("images"),
            "completions": list(c["steps"]),
            "step_types": c.get("step_types"),
        }
        for line in lines[:max_questions]
        if str(line.get("id")) in by_id and by_id[str(line["id"])].get("images")
        for k, c in enumerate(line.get("candidates") or [])
        if c.get("steps")
    ]
    if len({row["question_id"] for row in rows}) >= 2:
        swap = image_swap_sensitivity(scorer, rows)
        out.extend(f"image swap, {line.strip()}" for line in swap.lines())
    return out


def scored_step_metrics(scorer: StepScorer, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Step verdicts of `scorer` on labelled rows, under the names `VLPRMTrainer.evaluate` reports them
    (`eval_accuracy`, `eval_bad_f1`, `eval_perception_bad_f1`, ...): for a PRM whose scorer reads steps otherwise than
    the trainer's evaluation does (one judging perception steps word by word, `PRMLayout.word_verdicts`)."""
    import numpy as np

    from trl_vlprm.trainer.metrics import bad_step_metrics, metrics_by_step_type
    from trl_vlprm.trainer.tokenization import STEP_TYPE_IDS

    scores, labels, types = [], [], []
    for group in group_by_question(records):
        for row, row_scores in zip(group, _scores(scorer, _question_of(group), group)):
            scores += row_scores
            labels += [float(label) for label in row["labels"]]
            types += [STEP_TYPE_IDS[kind] for kind in row.get("step_types") or [None] * len(row_scores)]
    scores_array, labels_array = np.array(scores), np.array(labels)
    metrics = bad_step_metrics(scores_array, labels_array)
    metrics.update(metrics_by_step_type(scores_array, labels_array, np.array(types)))
    return {f"eval_{key}": value for key, value in metrics.items()}
