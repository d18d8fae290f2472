"""What every search strategy shares: its settings, its result record and the scoring helper."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trl_vlprm.guidance.aggregation import AGGREGATIONS, aggregate
from trl_vlprm.guidance.policy import Candidate, Policy, Question, StepScorer
from trl_vlprm.registry import Registry
from trl_vlprm.types import expect_samples


@dataclass
class SearchConfig:
    """Settings of a search strategy (one dataclass for all, so a YAML config can switch strategy by name).

    Args:
        n: the sampling budget. majority / best_of_n / weighted_vote: full solutions sampled. dvts: leaves, split into
            `n // beam_width` independent subtrees. step_selection: next steps sampled at every step. greedy and
            beam_search ignore it.
        aggregation: how step scores become a solution score ("last", "min", "mean", "prod", "paper"); used to pick
            the final answer, to rank partial solutions in beam search, and ("paper" only) to pick each step in
            step_selection.
        beam_width: beam_search: beams kept after each step. dvts: next steps sampled per subtree per step.
        expansions_per_beam: beam_search: next steps sampled from every beam at every step.
        max_steps: step-level strategies stop expanding after this many steps and complete what is still open to the
            end in one call.
        whole_solution: best_of_n and weighted_vote score each sampled solution as one step (its steps joined by the
            policy's step separator), one PRM read per solution, as the paper's best-of-N does; the candidates kept
            are those one-step solutions.
    """

    n: int = field(
        default=8,
        metadata={
            "help": "The sampling budget: full solutions for majority, best_of_n and weighted_vote; leaves (split "
            "into n // beam_width subtrees) for dvts; next steps per step for step_selection. Greedy and "
            "beam_search ignore it."
        },
    )
    aggregation: str = field(
        default="min",
        metadata={
            "help": "How step scores become a solution score (last, min, mean, prod or paper), used to pick the final "
            "answer and to rank partial solutions in beam search."
        },
    )
    beam_width: int = field(
        default=4,
        metadata={"help": "Beams kept after each step (beam_search), or next steps sampled per subtree (dvts)."},
    )
    expansions_per_beam: int = field(
        default=2, metadata={"help": "Next steps sampled from every beam at every step (beam_search)."}
    )
    max_steps: int = field(
        default=10,
        metadata={
            "help": "Step-level strategies stop expanding after this many steps and complete what is open in one call."
        },
    )
    whole_solution: bool = field(
        default=False,
        metadata={
            "help": "Whether best_of_n and weighted_vote score each sampled solution as one step, one PRM read per "
            "solution, as the paper's best-of-N does."
        },
    )

    def __post_init__(self):
        AGGREGATIONS.check(self.aggregation, "SearchConfig.aggregation")
        for name in ("n", "beam_width", "expansions_per_beam", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchConfig.{name}={getattr(self, name)}; must be >= 1")


@dataclass
class SearchResult:
    """The outcome of one strategy on one question: every candidate kept, its step scores, and the choice made.

    Attributes:
        question_id: the question's `id`.
        strategy: registry name of the strategy.
        candidates: the final solutions considered (with `step_scores` when a scorer was used).
        chosen: index into `candidates` of the solution picked, None when nothing could be picked.
        answer: the answer of the chosen solution (for votes: the winning answer).
        candidate_scores: aggregated score of each candidate (empty when no scorer was used).
        details: strategy-specific trace (vote tallies, per-step expansions and which were kept, ...).
        policy_stats: the policy's cost counters spent on this question (calls, sequences, tokens).
    """

    question_id: str
    strategy: str
    candidates: list[Candidate]
    chosen: int | None
    answer: str | None
    candidate_scores: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    policy_stats: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (one JSONL line of a test-time-scaling run)."""
        return {
            "id": self.question_id,
            "strategy": self.strategy,
            "answer": self.answer,
            "chosen": self.chosen,
            "candidate_scores": self.candidate_scores,
            "candidates": [c.to_dict() for c in self.candidates],
            "details": self.details,
            "policy_stats": self.policy_stats,
        }


# A search strategy: `run(question, policy, scorer, config) -> SearchResult`. Each strategy module registers its
# runner at its definition with `@STRATEGIES.register("name")`; the registry imports every module of the package
# before its first lookup, as the backends' registries do.
Strategy = Callable[[Question, Policy, "StepScorer | None", SearchConfig], SearchResult]
STRATEGIES: Registry[Strategy] = Registry("strategy", discover="trl_vlprm.guidance.strategies")


def question_id(question: Question) -> str:
    return str(question.get("id", "?"))


def score_candidates(scorer: StepScorer, question: Question, candidates: Sequence[Candidate]) -> None:
    """Fill `step_scores` of every candidate in place with one scorer call; check the scorer's output shape and that
    every score is finite (a NaN or inf score is a `ValueError` naming the question and candidate, never a pick).

    A scorer that reports input lengths (`score_with_input_lengths`, as `PRMScorer` does) also fills
    `step_input_lengths`, which the "paper" aggregation needs; other scorers leave it empty.
    """
    if not candidates:
        return
    lengths = None
    if hasattr(scorer, "score_with_input_lengths"):
        scores, lengths = scorer.score_with_input_lengths(question, candidates)
    else:
        scores = scorer.score(question, candidates)
    if len(scores) != len(candidates):
        raise ValueError(
            f"question {question_id(question)}: scorer returned {len(scores)} score lists for {len(candidates)} "
            "candidates"
        )
    for index, (candidate, step_scores) in enumerate(zip(candidates, scores)):
        if len(step_scores) != len(candidate.steps):
            raise ValueError(
                f"question {question_id(question)}: candidate {index}: scorer returned {len(step_scores)} scores "
                f"for {len(candidate.steps)} steps"
            )
        candidate.step_scores = [float(s) for s in step_scores]
        bad = [(j, s) for j, s in enumerate(candidate.step_scores) if not math.isfinite(s)]
        if bad:  # max() and sorting treat NaN as neither larger nor smaller: a NaN candidate could be picked
            raise ValueError(
                f"question {question_id(question)}: candidate {index}: {type(scorer).__name__} returned a non-finite "
                f"step score {bad[0][1]} (step {bad[0][0]}); a PRM's scores must be finite (check its weights and "
                "dtype: fp16 overflow gives inf/NaN)"
            )
        candidate.step_input_lengths = [int(n) for n in lengths[index]] if lengths is not None else []


def require_scorer(scorer: StepScorer | None, strategy: str) -> StepScorer:
    if scorer is None:
        raise ValueError(f"strategy {strategy!r} needs a step scorer (PRM); got None")
    return scorer


def aggregated_scores(candidates: Sequence[Candidate], aggregation: str) -> list[float]:
    return [aggregate(c.step_scores, aggregation, c.step_input_lengths) for c in candidates]


def whole_solutions(candidates: Sequence[Candidate], step_separator: str) -> list[Candidate]:
    """Each candidate as a one-step solution (its steps joined by `step_separator`), for scoring it in one PRM call.

    The paper's best-of-N scores a sampled solution whole: the PRM reads it as a single step and answers once.
    """
    whole = []
    for candidate in candidates:
        text = step_separator.join(candidate.steps)
        gold = None if candidate.gold_correct is None else [all(candidate.gold_correct)]
        whole.append(
            Candidate(
                steps=[text] if text else [],
                finished=candidate.finished,
                answer=candidate.answer,
                step_types=[None] if text else [],
                gold_correct=gold if text else ([] if gold is not None else None),
            )
        )
    return whole


def root_candidate() -> Candidate:
    """The empty solution every step-level search starts from (gold tracking on, kept only if the policy knows it)."""
    return Candidate(steps=[], gold_correct=[])


def complete_open(question: Question, policy: Policy, open_candidates: list[Candidate]) -> list[Candidate]:
    """Finish every open partial solution with one sampled completion."""
    completed = []
    for candidate in open_candidates:
        continuations = expect_samples(policy.complete(question, candidate.steps, 1), 1, question, "complete")
        completed.append(candidate.extend(continuations[0]))
    return completed
