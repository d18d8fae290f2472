"""Label the solutions of a batch of questions: rollouts -> MC labels -> judge verdicts -> a combination rule.

`label_batch` returns ready stepwise-supervision rows (the longest labelled prefix of each solution) with their
provenance, and a cost tally; `step_label_quality` scores labels against testbed gold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from trl_vlprm.data.answers import Grader
from trl_vlprm.data.schema import IMAGE_PLACEHOLDER, RecordError, solution_id, to_json_string
from trl_vlprm.guidance.policy import Policy, Question
from trl_vlprm.labeling.combine import RULES, combine, completer_agreement
from trl_vlprm.labeling.judge import JudgeClient, JudgeResult
from trl_vlprm.labeling.mc import Cost, MCConfig, MCResult, Rollout, label_rollout, sample_rollouts
from trl_vlprm.labeling.noise import count_noise
from trl_vlprm.trainer.metrics import precision_recall_f1


@dataclass
class BatchStats:
    """Costs and counts of labelling: policy work split by stage, judge requests/failures, kept and dropped steps."""

    rollout_cost: Cost = field(default_factory=Cost)
    mc_cost: Cost = field(default_factory=Cost)
    judge: Counter = field(default_factory=Counter)
    solutions: int = 0
    records: int = 0
    dropped_solutions: int = 0
    steps_total: int = 0
    steps_labelled: int = 0
    cases: Counter = field(default_factory=Counter)
    noise: Counter = field(default_factory=Counter)  # `trl_vlprm.labeling.noise` counters

    def add(self, other: BatchStats) -> None:
        self.rollout_cost.add(other.rollout_cost)
        self.mc_cost.add(other.mc_cost)
        self.judge.update(other.judge)
        self.cases.update(other.cases)
        self.noise.update(other.noise)
        for name in ("solutions", "records", "dropped_solutions", "steps_total", "steps_labelled"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        return {
            "rollout_cost": self.rollout_cost.as_dict(),
            "mc_cost": self.mc_cost.as_dict(),
            "judge": dict(self.judge),
            "cases": dict(self.cases),
            "noise": dict(self.noise),
            **{
                n: getattr(self, n)
                for n in ("solutions", "records", "dropped_solutions", "steps_total", "steps_labelled")
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchStats:
        stats = cls(Cost(**data["rollout_cost"]), Cost(**data["mc_cost"]), Counter(data["judge"]))
        stats.cases = Counter(data["cases"])
        stats.noise = Counter(data.get("noise", {}))  # absent from shards written before the noise report
        for name in ("solutions", "records", "dropped_solutions", "steps_total", "steps_labelled"):
            setattr(stats, name, data[name])
        return stats


def prompt_text(question: Question, row: int | str) -> str:
    """The question prompt as one string (chat prompts are flattened; image parts become placeholders)."""
    prompt = question.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list):
        raise RecordError(row, "prompt", "missing or neither a string nor chat messages")
    parts = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        for part in content if isinstance(content, list) else []:
            parts.append(IMAGE_PLACEHOLDER if part.get("type") == "image" else part.get("text", ""))
    return "\n".join(parts)


# One sampled solution on its way to a record: its question, its index among the question's rollouts, the rollout
# and its MC labels (None when the rule reads none).
Solution = tuple[Question, int, Rollout, "MCResult | None"]


def roll_out(
    questions: Sequence[Question],
    policy: Policy,
    num_rollouts: int,
    mc_config: MCConfig | None,
    grader: Grader | None = None,
    strong_completer: Policy | None = None,
) -> tuple[list[Solution], BatchStats]:
    """Sample `num_rollouts` solutions of every question and their MC labels (when `mc_config` is given).

    `strong_completer`, when given, estimates the same prefixes a second time (Athena-PRM's weak/strong agreement):
    its hard labels go into `MCResult.strong_labels`, its cost into the MC cost.
    """
    stats = BatchStats()
    solutions: list[Solution] = []
    for question in questions:
        rollouts, cost = sample_rollouts(policy, question, num_rollouts, grader)
        stats.rollout_cost.add(cost)
        for j, rollout in enumerate(rollouts):
            mc = label_rollout(policy, question, rollout, mc_config, grader) if mc_config is not None else None
            if mc is not None:
                stats.mc_cost.add(mc.cost)
                if strong_completer is not None:
                    strong = label_rollout(strong_completer, question, rollout, mc_config, grader)
                    mc.strong_labels = strong.labels
                    stats.mc_cost.add(strong.cost)
            solutions.append((question, j, rollout, mc))
    return solutions, stats


def solutions_to_json(solutions: Sequence[Solution], stats: BatchStats) -> dict[str, Any]:
    """Solutions (by question id) and the cost of sampling them, as JSON, to be judged later."""
    return {
        "solutions": [
            {"question_id": str(q["id"]), "index": j, "rollout": asdict(r), "mc": mc.to_dict() if mc else None}
            for q, j, r, mc in solutions
        ],
        "stats": stats.as_dict(),
    }


def solutions_from_json(
    data: Mapping[str, Any], questions: Sequence[Question], source: Any
) -> tuple[list[Solution], BatchStats]:
    """`solutions_to_json`'s output back, joined to `questions` by id (a `RecordError` naming `source` when one is
    missing)."""
    by_id = {str(q["id"]): q for q in questions}
    solutions: list[Solution] = []
    for row, entry in enumerate(data["solutions"]):
        if entry["question_id"] not in by_id:
            raise RecordError(row, "question_id", f"{entry['question_id']!r} is not a question of {source}")
        mc = entry["mc"]
        if mc:
            mc = MCResult(
                mc["scores"],
                mc["labels"],
                mc["first_error"],
                mc["num_estimates"],
                Cost(**mc["cost"]),
                mc.get("strong_labels"),
            )
        solutions.append((by_id[entry["question_id"]], entry["index"], Rollout(**entry["rollout"]), mc))
    return solutions, BatchStats.from_dict(data["stats"])


def judge_items(solutions: Sequence[Solution]) -> list[tuple]:
    """What a judge is asked about each solution: `(question, steps, step_types, answer)`."""
    return [(question, rollout.steps, rollout.step_types, rollout.answer) for question, _, rollout, _ in solutions]


def count_verdicts(stats: BatchStats, verdicts: Sequence[JudgeResult]) -> None:
    """Add the judge's requests, failures, errors by kind and verdicts to `stats`."""
    for result in verdicts:
        stats.judge["requests"] += result.attempts
        stats.judge["judged_solutions"] += int(bool(result.verdicts))
        stats.judge["failed_solutions"] += int(result.failed)
        stats.judge.update("error " + e.split(":")[0] for e in result.errors)
        stats.judge.update("steps " + v for v in result.verdicts)
        stats.judge["prompt_tokens"] += result.prompt_tokens
        stats.judge["completion_tokens"] += result.completion_tokens


class JudgeFailureError(RuntimeError):
    """The judge failed on too many solutions of a shard; the shard was not written (see `LabelConfig`)."""


def check_judge_failures(judge: Any, stats: BatchStats, question_ids: Sequence[str], max_failed_share: float) -> None:
    """Raise `JudgeFailureError` when the judge failed on all, or more than `max_failed_share`, of a shard's
    solutions: such a shard would hold no (or few) labels for reasons that have nothing to do with the data.

    `judge` is the `JudgeClient` or `BatchJudge` that judged them (its URL and first reply of each error kind are
    named); `question_ids` are the shard's questions.
    """
    judged, failed = stats.judge["judged_solutions"], stats.judge["failed_solutions"]
    if not failed or (failed < judged and failed / judged <= max_failed_share):
        return
    errors = {k[len("error ") :]: v for k, v in stats.judge.items() if k.startswith("error ")}
    samples = "; ".join(f"{kind!r}: {text}" for kind, text in judge.error_samples.items())
    raise JudgeFailureError(
        f"the judge at {judge.config.judge_base_url} failed on {failed} of {judged} solutions of questions "
        f"{question_ids[0]}..{question_ids[-1]} (allowed share {max_failed_share}); errors {errors}; "
        f"first reply of each kind: {samples or 'none'}. Nothing of these questions was written: fix the judge "
        "and rerun (finished shards are kept)."
    )


def label_batch(
    questions: Sequence[Question],
    policy: Policy,
    rule: str,
    num_rollouts: int,
    mc_config: MCConfig | None,
    judge: JudgeClient | None = None,
    grader: Grader | None = None,
    disagreement: str = "drop",
    disagreement_weight: float = 0.5,
    judge_unknown: str = "keep_prefix",
    strong_completer: Policy | None = None,
) -> tuple[list[dict[str, Any]], BatchStats]:
    """Rows for every solution of `questions` whose labelled prefix is not empty, and the batch's statistics.

    `judge_unknown` is `combine`'s `unknown`: "drop" leaves out a solution with any "unknown" verdict.

    `judge` is anything with `judge_many(items)` (the online `JudgeClient`, or a batch judge).
    """
    needs = RULES.get(rule)
    if needs.needs_mc and mc_config is None:
        raise ValueError(f"rule {rule!r} needs MC labels: give an MCConfig")
    if needs.needs_judge and judge is None:
        raise ValueError(f"rule {rule!r} needs a judge: give a JudgeClient")
    solutions, stats = roll_out(
        questions, policy, num_rollouts, mc_config if needs.needs_mc else None, grader, strong_completer
    )
    verdicts: list[JudgeResult | None] = [None] * len(solutions)
    if needs.needs_judge:
        verdicts = judge.judge_many(judge_items(solutions))
        count_verdicts(stats, verdicts)
    rows = label_solutions(solutions, verdicts, rule, stats, disagreement, disagreement_weight, judge_unknown)
    return rows, stats


def label_solutions(
    solutions: Sequence[Solution],
    verdicts: Sequence[JudgeResult | None],
    rule: str,
    stats: BatchStats,
    disagreement: str = "drop",
    disagreement_weight: float = 0.5,
    judge_unknown: str = "keep_prefix",
) -> list[dict[str, Any]]:
    """Combine each solution's MC labels and verdicts by `rule` into records (the longest labelled prefix; a
    solution with none is dropped); the counts go into `stats`, with the noise report's (`count_noise`)."""
    rows = []
    settings = {"disagreement": disagreement, "disagreement_weight": disagreement_weight, "unknown": judge_unknown}
    for (question, j, rollout, mc), verdict in zip(solutions, verdicts):
        count_noise(
            stats.noise,
            rollout.step_types,
            mc.labels if mc else None,
            verdict.verdicts if verdict else None,
            rollout.gold_correct,
            settings,
            mc.strong_labels if mc else None,
        )
        combined = combine(
            rule,
            len(rollout.steps),
            mc.labels if mc else None,
            verdict.verdicts if verdict else None,
            disagreement=disagreement,
            disagreement_weight=disagreement_weight,
            unknown=judge_unknown,
        )
        if mc is not None and mc.strong_labels is not None:
            combined = completer_agreement(combined, mc.labels, mc.strong_labels)
        kept = combined.kept_length()
        stats.solutions += 1
        stats.steps_total += len(rollout.steps)
        stats.steps_labelled += kept
        stats.cases[combined.case] += 1
        if kept == 0:
            stats.dropped_solutions += 1
            continue
        stats.records += 1
        qid = str(question["id"])
        costs = {
            "rollout_tokens": rollout.num_tokens,
            "mc": mc.cost.as_dict() if mc else None,
            "judge_requests": verdict.attempts if verdict else 0,
            "judge_tokens": (verdict.prompt_tokens + verdict.completion_tokens) if verdict else 0,
        }
        rows.append(
            {
                "id": solution_id(qid, j),
                "question_id": qid,
                "prompt": prompt_text(question, qid),
                "images": list(question.get("images") or []),
                "completions": rollout.steps[:kept],
                "labels": [bool(x) for x in combined.labels[:kept]],
                "label_weights": combined.weights[:kept],
                "step_types": [t or "reasoning" for t in rollout.step_types[:kept]],
                "answer": str(question["answer"]),
                "options": [str(o) for o in question.get("options") or []],
                "category": str(question.get("category") or ""),
                "rule": rule,
                "rule_case": combined.case,
                "num_steps": len(rollout.steps),
                "rollout_answer": rollout.answer or "",
                "rollout_correct": rollout.correct,
                "mc": to_json_string(mc.to_dict() if mc else None),
                "judge": to_json_string(verdict.to_dict() if verdict else None),
                "gold_step_correct": to_json_string(rollout.gold_correct),
                "costs": to_json_string(costs),
            }
        )
    return rows


@dataclass
class LabelQuality:
    """Step labels against gold. `bad_f1` is the F1 of the bad-step class; `coverage` the share of steps labelled."""

    accuracy: float
    bad_precision: float
    bad_recall: float
    bad_f1: float
    labelled: int
    total: int

    @property
    def coverage(self) -> float:
        return self.labelled / self.total if self.total else 0.0


def step_label_quality(pairs: Sequence[tuple[Sequence[bool | None], Sequence[bool]]]) -> LabelQuality:
    """Quality of (labels, gold) pairs, one per solution; steps labelled None are left out of the scores."""
    hits = 0  # steps labelled as gold has them
    true_bad = 0
    predicted_bad = 0
    gold_bad = 0
    labelled = 0
    total = 0
    for labels, gold in pairs:
        if len(labels) > len(gold):
            raise ValueError(f"{len(labels)} labels for {len(gold)} gold steps")
        total += len(gold)
        for label, truth in zip(labels, gold):
            if label is None:
                continue
            labelled += 1
            hits += label == truth
            predicted_bad += not label
            gold_bad += not truth
            true_bad += (not label) and (not truth)
    precision, recall, f1 = precision_recall_f1(true_bad, predicted_bad - true_bad, gold_bad - true_bad)
    return LabelQuality(hits / labelled if labelled else 0.0, precision, recall, f1, labelled, total)
