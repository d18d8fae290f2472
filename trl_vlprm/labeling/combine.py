"""Rules that turn MC labels and judge verdicts into the step labels a PRM is trained on.

Every rule returns one label per step (True good, False bad, None: no label) plus a training weight per step. The
builder keeps the longest prefix of labelled steps: a step without a label cannot be dropped from the middle of a
solution (the steps after it depend on it), so the solution is cut before it. Rules:

* `mc_only`: the MC hard labels.
* `judge_only`: the judge's verdicts; an "unknown" verdict ends the labels.
* `consensus`: a step keeps its label where MC and the judge agree. Where they disagree (or the judge says "unknown")
  `disagreement="drop"` ends the labels there, `disagreement="weight"` keeps the judge's label with weight
  `disagreement_weight` (the MC label if the judge said "unknown").
* `judge_first_error_confirmed_by_mc`: the judge locates the first error; the solution is kept (good steps before
  it, bad at it, cut after) only if MC also marks that step bad. A solution the judge finds flawless is kept (all
  good) only if MC finds no bad step either. Otherwise no labels.
* `vlprm` (the paper's rule, Ong et al. 2025; see docs/labelling.md for what was found and assumed): the judge
  locates the first error and is trusted whether MC agrees or not (good before, bad at it, cut after); a solution
  the judge finds flawless is kept only when MC agrees (no MC-bad step, i.e. the rollout's answer is right and no
  prefix lost all its successes). The case is recorded (`judge_incorrect_mc_agrees`, ...).

Each rule is a `CombinationRule` in the `RULES` registry, registered at its definition with `@combination_rule(name,
needs_mc=..., needs_judge=...)`; `combine` checks the inputs a rule declares it reads and calls it.

A judge that cannot grade a step answers "unknown". By default (`unknown="keep_prefix"`) the steps it graded before
keep their labels; `unknown="drop"` gives the whole solution no label, as the paper drops such rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trl_vlprm.labeling.judge_prompts import CORRECT, INCORRECT, UNKNOWN
from trl_vlprm.registry import Registry

UNKNOWN_POLICIES = ("keep_prefix", "drop")
DISAGREEMENT_POLICIES = ("drop", "weight")


@dataclass
class Combined:
    """Labels of one solution under a rule.

    Attributes:
        labels: per step True/False, or None where the rule gives no label.
        weights: per step training weight (0 where there is no label).
        case: which branch of the rule applied (provenance).
    """

    labels: list[bool | None]
    weights: list[float]
    case: str

    def kept_length(self) -> int:
        """Steps in the longest labelled prefix (what the builder keeps)."""
        return next((i for i, label in enumerate(self.labels) if label is None), len(self.labels))


# `label(num_steps, mc_labels, verdicts, disagreement, disagreement_weight) -> Combined`; the inputs a rule does not
# read arrive as None.
RuleFunction = Callable[[int, Sequence[bool] | None, Sequence[str] | None, str, float], Combined]


@dataclass(frozen=True)
class CombinationRule:
    """A labelling rule of the registry: its function and the inputs it reads (checked before it is called, and by
    `LabelConfig` and `label_batch`, which refuse a configuration that lacks them)."""

    label: RuleFunction
    needs_mc: bool
    needs_judge: bool


RULES: Registry[CombinationRule] = Registry("combination rule")


def combination_rule(name: str, needs_mc: bool, needs_judge: bool) -> Callable[[RuleFunction], RuleFunction]:
    """Decorator: registers a rule function as `name` in `RULES`, with the inputs it reads."""

    def decorator(label: RuleFunction) -> RuleFunction:
        RULES.register(name)(CombinationRule(label, needs_mc, needs_judge))
        return label

    return decorator


def _first_error_labels(n: int, error: int | None) -> list[bool | None]:
    if error is None:
        return [True] * n
    return [True] * error + [False] + [None] * (n - error - 1)


def _judge_first_error(verdicts: Sequence[str]) -> tuple[int | None, bool]:
    """(index of the first step not judged correct, whether it is an unknown verdict rather than an error)."""
    for i, verdict in enumerate(verdicts):
        if verdict != CORRECT:
            return i, verdict == UNKNOWN
    return None, False


def _check(rule: CombinationRule, name: str, n: int, mc_labels, verdicts) -> None:
    if rule.needs_mc and (mc_labels is None or len(mc_labels) != n):
        raise ValueError(f"rule {name!r} needs one MC label per step ({n}), got {mc_labels!r}")
    if rule.needs_judge and (verdicts is None or len(verdicts) != n):
        raise ValueError(f"rule {name!r} needs one judge verdict per step ({n}), got {verdicts!r}")
    for verdict in verdicts or []:
        if verdict not in (CORRECT, INCORRECT, UNKNOWN):
            raise ValueError(f"judge verdict {verdict!r}; expected one of {(CORRECT, INCORRECT, UNKNOWN)}")


def combine(
    rule: str,
    num_steps: int,
    mc_labels: Sequence[bool] | None = None,
    verdicts: Sequence[str] | None = None,
    disagreement: str = "drop",
    disagreement_weight: float = 0.5,
    unknown: str = "keep_prefix",
) -> Combined:
    """Step labels of one solution under `rule`, a name in `RULES` (see the module docstring)."""
    combination = RULES.get(rule)
    _check(combination, rule, num_steps, mc_labels, verdicts)
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown={unknown!r}; expected one of {UNKNOWN_POLICIES}")
    if unknown == "drop" and verdicts is not None and UNKNOWN in verdicts:
        return _with_weights([None] * num_steps, "judge_unknown_dropped")
    return combination.label(num_steps, mc_labels, verdicts, disagreement, disagreement_weight)


@combination_rule("mc_only", needs_mc=True, needs_judge=False)
def mc_only(n, mc_labels, verdicts, disagreement, disagreement_weight) -> Combined:
    return Combined(list(mc_labels), [1.0] * n, "mc")


@combination_rule("judge_only", needs_mc=False, needs_judge=True)
def judge_only(n, mc_labels, verdicts, disagreement, disagreement_weight) -> Combined:
    labels = [None if v == UNKNOWN else v == CORRECT for v in verdicts]
    return Combined(labels, [0.0 if v is None else 1.0 for v in labels], "judge")


@combination_rule("consensus", needs_mc=True, needs_judge=True)
def consensus(n, mc_labels, verdicts, disagreement, disagreement_weight) -> Combined:
    if disagreement not in DISAGREEMENT_POLICIES:
        raise ValueError(f"consensus disagreement={disagreement!r}; expected 'drop' or 'weight'")
    labels, weights = [], []
    for mc, verdict in zip(mc_labels, verdicts):
        judged = None if verdict == UNKNOWN else verdict == CORRECT
        if judged == mc:
            labels.append(mc)
            weights.append(1.0)
        elif disagreement == "drop":
            labels.append(None)
            weights.append(0.0)
        else:
            labels.append(mc if judged is None else judged)
            weights.append(disagreement_weight)
    first_gap = next((i for i, w in enumerate(weights) if w < 1.0), None)
    if first_gap is None:
        case = "agree"
    else:
        case = "judge_unknown" if verdicts[first_gap] == UNKNOWN else "disagree"
    return Combined(labels, weights, case)


def _judge_unknown(n: int, error: int, mc_labels: Sequence[bool], need_mc_agreement: bool) -> Combined:
    """The judge could not grade step `error`: the steps it did grade before it keep their labels (all of them
    dropped when MC must agree and finds an error before that step)."""
    mc_error = next((i for i, good in enumerate(mc_labels) if not good), None)
    if need_mc_agreement and not (mc_error is None or mc_error >= error):
        return _with_weights([None] * n, "judge_unknown")
    return _with_weights([True] * error + [None] * (n - error), "judge_unknown")


@combination_rule("judge_first_error_confirmed_by_mc", needs_mc=True, needs_judge=True)
def judge_first_error_confirmed_by_mc(n, mc_labels, verdicts, disagreement, disagreement_weight) -> Combined:
    error, unknown = _judge_first_error(verdicts)
    if unknown:
        return _judge_unknown(n, error, mc_labels, need_mc_agreement=True)
    if error is None:
        if all(mc_labels):
            return _with_weights([True] * n, "judge_correct_mc_confirms")
        return _with_weights([None] * n, "judge_correct_mc_rejects")
    if not mc_labels[error]:
        return _with_weights(_first_error_labels(n, error), "judge_incorrect_mc_confirms")
    return _with_weights([None] * n, "judge_incorrect_mc_rejects")


@combination_rule("vlprm", needs_mc=True, needs_judge=True)
def vlprm(n, mc_labels, verdicts, disagreement, disagreement_weight) -> Combined:
    error, unknown = _judge_first_error(verdicts)
    if unknown:
        return _judge_unknown(n, error, mc_labels, need_mc_agreement=False)
    if error is None:
        if all(mc_labels):
            return _with_weights([True] * n, "judge_correct_mc_agrees")
        return _with_weights([None] * n, "judge_correct_mc_disagrees")
    case = "judge_incorrect_mc_agrees" if not mc_labels[error] else "judge_incorrect_mc_disagrees"
    return _with_weights(_first_error_labels(n, error), case)


def completer_agreement(combined: Combined, weak: Sequence[bool], strong: Sequence[bool]) -> Combined:
    """Athena-PRM's filter (Wang et al., 2025, arXiv 2506.09532): a label is reliable only where the MC labels of a
    weak and a strong completer agree. Applied to any rule's output: labels end at the first step where the two
    completers' hard labels differ (a step cannot be dropped from the middle of a solution); the case gets
    "+completers_disagree" when that cut removes a label."""
    if len(weak) != len(strong) or len(weak) != len(combined.labels):
        raise ValueError(f"completer agreement needs one weak and one strong label per step, got {weak!r}, {strong!r}")
    cut = next((i for i, (a, b) in enumerate(zip(weak, strong)) if a != b), None)
    if cut is None or cut >= combined.kept_length():
        return combined
    labels = combined.labels[:cut] + [None] * (len(combined.labels) - cut)
    weights = combined.weights[:cut] + [0.0] * (len(combined.weights) - cut)
    return Combined(labels, weights, combined.case + "+completers_disagree")


def _with_weights(labels: list[bool | None], case: str) -> Combined:
    return Combined(labels, [0.0 if label is None else 1.0 for label in labels], case)
