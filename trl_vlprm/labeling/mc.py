"""Rollouts and Monte-Carlo (MC) step labels.

A step's MC score is the share of K completions of the prefix ending with that step that reach the right answer
(Math-Shepherd's "soft" estimate); its hard label is `score > threshold` (0 by default: a step is good when at least
one completion still succeeds, OmegaPRM's convention). Two modes:

* `every_step`: one MC estimate per step prefix (n prefixes for n steps).
* `every_step_until_zero`: the paper's variant (Ong et al. 2025): prefixes are estimated in order and the estimation
  stops at the first one scoring 0; that step and every later one are bad, unestimated.
* `binary_search`: OmegaPRM's first-error search. MC scores fall once a wrong step is taken and stay low, so the first
  bad prefix is found by bisection in about log2(n) estimates; steps before it are good, it and the ones after are bad.
  A rollout whose own final answer is right is all good with no estimate at all (as in OmegaPRM).

The prefix that holds every step is never sampled: its outcome is the rollout's own graded answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trl_vlprm.data.answers import Grader, grade_question
from trl_vlprm.data.schema import RecordError
from trl_vlprm.guidance.policy import Policy, Question
from trl_vlprm.registry import Registry
from trl_vlprm.types import PolicyStats, StatsDelta, expect_samples


@dataclass
class Rollout:
    """One sampled solution, split into steps, with its graded final answer.

    Attributes:
        steps: the step strings.
        step_types: per step "perception"/"reasoning" or None when the policy does not know.
        gold_correct: per step hidden true correctness (testbed policies only), else None.
        answer: the final answer read from the solution (None when none was given).
        correct: the final answer matches the gold answer.
        num_tokens: tokens the policy generated for it.
    """

    steps: list[str]
    step_types: list[str | None]
    gold_correct: list[bool] | None
    answer: str | None
    correct: bool
    num_tokens: int = 0


# Policy work spent: calls (one batched request), sequences sampled, tokens generated. The name labelling's
# statistics use for the one cost counter every policy keeps.
Cost = PolicyStats


def sample_rollouts(
    policy: Policy, question: Question, num_rollouts: int, grader: Grader | None = None
) -> tuple[list[Rollout], Cost]:
    """`num_rollouts` full solutions of `question`, graded against `question["answer"]`; returns them and the cost."""
    if "answer" not in question:
        raise RecordError(question.get("id", "?"), "answer", "missing; rollouts cannot be graded without it")
    with StatsDelta(policy) as delta:
        continuations = expect_samples(
            policy.sample_solutions(question, num_rollouts), num_rollouts, question, "sample_solutions"
        )
    rollouts = []
    for c in continuations:
        rollouts.append(
            Rollout(
                steps=list(c.steps),
                step_types=list(c.step_types) if c.step_types else [None] * len(c.steps),
                gold_correct=list(c.gold_correct) if c.gold_correct is not None else None,
                answer=c.answer,
                correct=grade_question(c.answer, question, grader),
                num_tokens=c.num_tokens,
            )
        )
    return rollouts, delta.spent


@dataclass
class MCConfig:
    """Monte-Carlo labelling settings.

    Args:
        num_completions: K, completions sampled per step prefix.
        threshold: a step is good when its MC score is strictly above this (0: one success is enough).
        mode: "every_step" (estimate every prefix), "every_step_until_zero" (in order, stop at the first score of
            0) or "binary_search" (OmegaPRM first-error search).
    """

    num_completions: int = field(default=8, metadata={"help": "K, the completions sampled per step prefix."})
    threshold: float = field(
        default=0.0,
        metadata={"help": "A step is good when its MC score is strictly above this (0: one success is enough)."},
    )
    mode: str = field(
        default="binary_search",
        metadata={
            "help": "Which prefixes are estimated: every_step, every_step_until_zero (the paper's: stop at the first "
            "score of 0) or binary_search (OmegaPRM first-error search)."
        },
    )

    def __post_init__(self):
        MC_MODES.check(self.mode, "MCConfig.mode")
        if self.num_completions < 1:
            raise ValueError(f"MCConfig.num_completions={self.num_completions}; must be >= 1")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"MCConfig.threshold={self.threshold}; must be in [0, 1)")


@dataclass
class MCResult:
    """MC labels of one rollout.

    Attributes:
        scores: per step the measured MC score, or None where the mode did not estimate that prefix.
        labels: per step the hard label (True = good).
        first_error: index of the first bad step, or None when all are good.
        num_estimates: prefixes estimated (each costs one policy call of K completions).
        cost: policy work spent on this rollout's labels.
        strong_labels: the hard labels of the same estimates by a strong completer (Athena-PRM's agreement filter,
            `LabelConfig.strong_completer`), or None.
    """

    scores: list[float | None]
    labels: list[bool]
    first_error: int | None
    num_estimates: int = 0
    cost: Cost = field(default_factory=Cost)
    strong_labels: list[bool] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores,
            "labels": self.labels,
            "first_error": self.first_error,
            "num_estimates": self.num_estimates,
            "cost": self.cost.as_dict(),
            "strong_labels": self.strong_labels,
        }


def mc_score(
    policy: Policy, question: Question, prefix: Sequence[str], num_completions: int, grader: Grader | None = None
) -> float:
    """Share of `num_completions` completions of `prefix` whose final answer is right."""
    completions = expect_samples(
        policy.complete(question, list(prefix), num_completions), num_completions, question, "complete"
    )
    if not completions:
        return 0.0
    return sum(grade_question(c.answer, question, grader) for c in completions) / len(completions)


class _Estimator:
    """Memoised MC estimates of one rollout's prefixes; the full prefix is the rollout's own outcome."""

    def __init__(self, policy, question, rollout: Rollout, config: MCConfig, grader: Grader):
        self.policy = policy
        self.question = question
        self.rollout = rollout
        self.config = config
        self.grader = grader
        self.scores: list[float | None] = [None] * len(rollout.steps)
        self.num_estimates = 0

    def score(self, index: int) -> float:
        """MC score of the prefix ending with step `index`."""
        if self.scores[index] is None:
            if index == len(self.rollout.steps) - 1:
                self.scores[index] = 1.0 if self.rollout.correct else 0.0
            else:
                prefix = self.rollout.steps[: index + 1]
                self.scores[index] = mc_score(
                    self.policy, self.question, prefix, self.config.num_completions, self.grader
                )
                self.num_estimates += 1
        return self.scores[index]

    def good(self, index: int) -> bool:
        return self.score(index) > self.config.threshold


# mode name -> `labels(estimator, num_steps)`: which prefixes a mode estimates and how it labels the steps from them.
# `@MC_MODES.register(name)` on such a function adds a mode `LabelConfig.mc_mode` accepts.
MCMode = Callable[[_Estimator, int], list[bool]]
MC_MODES: Registry[MCMode] = Registry("Monte-Carlo mode")


@MC_MODES.register("every_step")
def every_step(estimator: _Estimator, n: int) -> list[bool]:
    """One estimate per step prefix."""
    return [estimator.good(i) for i in range(n)]


@MC_MODES.register("every_step_until_zero")
def every_step_until_zero(estimator: _Estimator, n: int) -> list[bool]:
    """Prefixes in order until the first scoring 0; that step and every later one are bad, unestimated."""
    labels: list[bool] = []
    for i in range(n):
        if estimator.score(i) == 0.0:  # no completion succeeds from here: the rest is not estimated
            return labels + [False] * (n - i)
        labels.append(estimator.good(i))
    return labels


@MC_MODES.register("binary_search")
def binary_search(estimator: _Estimator, n: int) -> list[bool]:
    """OmegaPRM's first-error search: a right rollout is all good unestimated, else bisect for the first bad prefix."""
    if estimator.rollout.correct:
        return [True] * n
    # Invariant: every prefix ending before `low` is good, the prefix ending at `high` is bad.
    low, high = 0, n - 1
    estimator.score(high)
    while low < high:
        middle = (low + high) // 2
        if estimator.good(middle):
            low = middle + 1
        else:
            high = middle
    return [i < high for i in range(n)]


def label_rollout(
    policy: Policy, question: Question, rollout: Rollout, config: MCConfig, grader: Grader | None = None
) -> MCResult:
    """MC scores and hard labels for every step of `rollout`, by the mode `config.mode` names in `MC_MODES`."""
    n = len(rollout.steps)
    estimator = _Estimator(policy, question, rollout, config, grader)
    mode = MC_MODES.get(config.mode, "MCConfig.mode")
    with StatsDelta(policy) as delta:
        labels = mode(estimator, n) if n else []
    first_error = next((i for i, good in enumerate(labels) if not good), None)
    return MCResult(estimator.scores, labels, first_error, estimator.num_estimates, delta.spent)
