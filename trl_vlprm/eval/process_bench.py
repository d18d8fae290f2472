"""Process-error benchmarks: how well a step scorer tells correct steps from erroneous ones.

A *process-bench record* is a question record plus the steps of one solution and their human (or gold) verdicts:
`completions` (list of step strings), `process_correctness` (per step 1 = correct, -1 = erroneous, 0 = neutral,
VisualProcessBench's coding) and optionally `step_types` ("perception"/"reasoning").

Metrics (VisualProcessBench, following ProcessBench's F1 spirit at step level): a step is predicted correct when its
score is >= `threshold`. `f1_correct` is the F1 of the class "correct", `f1_error` the F1 of the class "erroneous",
and `macro_f1` their mean. Neutral steps are left out. The same numbers are reported on perception steps and on
reasoning steps alone (the PerceptionProcessBench view: can the PRM catch misreadings of the image?).

Built-in benches: `load_visual_process_bench` (VisualProcessBench's layout: `image` paths, `question`,
`response.steps`, `response.process_correctness`), `testbed_process_bench` (scripted-policy solutions of the
testbed, labelled by their hidden gold correctness), `puzzlevqa_process_bench` (PuzzleVQA gold traces and
their perception/reasoning perturbations) and `algopuzzlevqa_process_bench` (the same from AlgoPuzzleVQA's
`solution` objects, for its eight captioned types).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trl_vlprm.data.puzzlevqa import read_jsonl
from trl_vlprm.data.references import question_reference
from trl_vlprm.data.schema import (
    IMAGE_PLACEHOLDER,
    PERCEPTION,
    REASONING,
    STEP_TYPES,
    RecordError,
    question_columns,
    solution_id,
)
from trl_vlprm.guidance.policy import Candidate, StepScorer
from trl_vlprm.registry import Registry
from trl_vlprm.trainer.metrics import precision_recall_f1

VERDICTS = (1, -1, 0)
# Spellings of a verdict accepted on load, besides the integers themselves: whole floats as JSON writers emit them,
# and the strings some dumps use. Anything else (0.9, True, "yes") is an error: int() would turn 0.9 into a neutral
# verdict that silently leaves the F1, and True into a correct one.
VERDICT_ALIASES = {1.0: 1, -1.0: -1, 0.0: 0, "1": 1, "-1": -1, "0": 0, "+": 1, "-": -1, "+1": 1}


# Process benches by name, for specs "name[:arg][,key=value...]": builders `(args, kwargs, seed) -> Dataset` of
# process-bench records, registered below each loader with `@PROCESS_BENCHES.register(name)`.
PROCESS_BENCHES: Registry[Callable[[list[str], dict[str, Any], int], Any]] = Registry("bench")


def parse_verdict(value: Any, row: int | str, step: int, field: str = "response.process_correctness") -> int:
    """A VisualProcessBench step verdict as 1 (correct), -1 (wrong) or 0 (neutral), or `RecordError` naming the row
    (file and line), the field and the step. Accepted: the integers 1, -1, 0 and `VERDICT_ALIASES`."""
    if isinstance(value, bool) or value is None:
        raise RecordError(row, field, f"step {step} has verdict {value!r}; expected 1, -1 or 0")
    if isinstance(value, int) and value in VERDICTS:
        return int(value)
    key = value.strip() if isinstance(value, str) else value
    try:
        return VERDICT_ALIASES[key]
    except (KeyError, TypeError):
        raise RecordError(
            row,
            field,
            f"step {step} has verdict {value!r}; expected 1, -1 or 0 (or {sorted(map(str, VERDICT_ALIASES))})",
        ) from None


def process_bench_features():
    """The shared question columns plus steps, per-step verdicts (1 / -1 / 0) and step types."""
    from datasets import Features, List, Value

    return Features(
        {
            **question_columns(),
            "completions": List(Value("string")),
            "process_correctness": List(Value("int8")),
            "step_types": List(Value("string")),
        }
    )


def check_process_record(record: Mapping[str, Any], row: int | str) -> None:
    """Raise `RecordError` naming the row and field when steps, verdicts and step types disagree."""
    steps, verdicts = record.get("completions"), record.get("process_correctness")
    if not steps:
        raise RecordError(row, "completions", "no steps")
    if verdicts is None or len(verdicts) != len(steps):
        raise RecordError(
            row,
            "process_correctness",
            f"{0 if verdicts is None else len(verdicts)} verdict(s) for {len(steps)} step(s)",
        )
    for i, verdict in enumerate(verdicts):
        if verdict not in VERDICTS:
            raise RecordError(row, "process_correctness", f"step {i} has verdict {verdict!r}; expected 1, -1 or 0")
    types = record.get("step_types") or []
    if types and (len(types) != len(steps) or any(t not in STEP_TYPES for t in types)):
        raise RecordError(row, "step_types", f"{types!r}: expected one of {STEP_TYPES} per step")


def _to_dataset(records: list[dict[str, Any]]):
    from datasets import Dataset

    for index, record in enumerate(records):
        check_process_record(record, record.get("id", index))
    return Dataset.from_list(records, features=process_bench_features())


# ---------------------------------------------------------------- loaders


def visual_process_bench_record(raw: Mapping[str, Any], row: str, image_root: Path | None) -> dict[str, Any]:
    """One VisualProcessBench line as a process-bench record (images read relative to `image_root`)."""
    for name in ("question", "response"):
        if name not in raw:
            raise RecordError(row, name, "missing")
    response = raw["response"]
    if not isinstance(response, Mapping) or "steps" not in response or "process_correctness" not in response:
        raise RecordError(row, "response", "needs 'steps' and 'process_correctness'")
    images = raw.get("image") or raw.get("images") or []
    images = [images] if isinstance(images, (str, Mapping)) or hasattr(images, "size") else list(images)
    if image_root is not None:
        images = [str(image_root / image) if isinstance(image, str) else image for image in images]
    for image in images:
        if isinstance(image, str) and not Path(image).is_file():
            raise RecordError(row, "image", f"image file not found: {image}")
    question = str(raw["question"])
    prompt = (
        question
        if question.count(IMAGE_PLACEHOLDER) == len(images)
        else (IMAGE_PLACEHOLDER * len(images) + "\n" + question.replace(IMAGE_PLACEHOLDER, ""))
    )
    return {
        "id": str(raw.get("id", row)),
        "prompt": prompt,
        "images": images,
        "answer": str(raw.get("answer", "")),
        "options": [str(o) for o in raw.get("options") or []],
        "completions": [str(s) for s in response["steps"]],
        "process_correctness": [parse_verdict(v, row, i) for i, v in enumerate(response["process_correctness"])],
        "step_types": list(raw.get("step_types") or response.get("step_types") or []),
        "category": str(raw.get("data_source") or raw.get("category") or ""),
    }


def load_visual_process_bench(source: str, split: str = "test", image_root: str | None = None):
    """VisualProcessBench-style data from a JSONL file (image paths relative to `image_root`, by default the file's
    folder) or from `datasets.load_dataset(source, split=split)` (hub name or local folder)."""
    path = Path(source)
    if path.is_file():
        root = Path(image_root) if image_root else path.parent
        records = [
            visual_process_bench_record(raw, f"{path.name}:{number}", root)
            for number, raw in read_jsonl(path, required=())
        ]
        return _to_dataset(records)
    from datasets import load_dataset

    rows = load_dataset(source, split=split)
    root = Path(image_root) if image_root else None
    return _to_dataset([visual_process_bench_record(r, f"{split}[{i}]", root) for i, r in enumerate(rows)])


@PROCESS_BENCHES.register("visualprocessbench")
def _visual_process_bench(args, kwargs, seed):
    if len(args) != 1:
        raise ValueError(f"visualprocessbench needs one source (JSONL file, folder or hub name), got {args}")
    return load_visual_process_bench(args[0], **kwargs)


def from_stepwise(records) -> list[dict[str, Any]]:
    """Stepwise-supervision records (bool labels) as process-bench records (True -> 1, False -> -1)."""
    return [
        {
            "id": r["id"],
            "prompt": r["prompt"],
            "images": r["images"],
            "answer": r.get("answer") or "",
            "options": r.get("options") or [],
            "completions": r["completions"],
            "process_correctness": [1 if label else -1 for label in r["labels"]],
            "step_types": r.get("step_types") or [],
            "category": r.get("category") or "",
        }
        for r in records
    ]


def puzzlevqa_process_bench(root: str | None = None, limit_per_category: int | None = None, seed: int = 0):
    """PuzzleVQA gold traces (all correct) and their perception / reasoning perturbations (`data.puzzlevqa`)."""
    from trl_vlprm.data.puzzlevqa import build_puzzlevqa_supervision, default_benchmarks_root

    supervision = build_puzzlevqa_supervision(root or default_benchmarks_root(), None, limit_per_category, seed)
    return _to_dataset(from_stepwise(supervision))


@PROCESS_BENCHES.register("puzzlevqa")
def _puzzlevqa_process_bench(args, kwargs, seed):
    return puzzlevqa_process_bench(*args, **{"seed": seed, **kwargs})


def algopuzzlevqa_process_bench(root: str | None = None, limit_per_category: int | None = None, seed: int = 0):
    """AlgoPuzzleVQA's captioned types: captions written from each puzzle's `solution` (all correct), their
    misreads, and wrong final answers (`data.algopuzzlevqa`)."""
    from trl_vlprm.data.algopuzzlevqa import build_algopuzzlevqa_supervision
    from trl_vlprm.data.puzzlevqa import default_benchmarks_root

    supervision = build_algopuzzlevqa_supervision(root or default_benchmarks_root(), None, limit_per_category, seed)
    return _to_dataset(from_stepwise(supervision))


@PROCESS_BENCHES.register("algopuzzlevqa")
def _algopuzzlevqa_process_bench(args, kwargs, seed):
    return algopuzzlevqa_process_bench(*args, **{"seed": seed, **kwargs})


def testbed_process_bench(
    num_questions: int = 60,
    solutions_per_question: int = 4,
    perception_error_rate: float = 0.3,
    reasoning_error_rate: float = 0.3,
    seed: int = 0,
    families: str | None = None,
    image_size: int = 168,
):
    """Scripted-policy solutions of testbed puzzles (`families`: names or a tier, default the hard tier), each step
    labelled by its hidden gold correctness."""
    from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles

    policy = ScriptedPolicy(perception_error_rate, reasoning_error_rate, seed=seed)
    records = []
    for question in generate_puzzles(num_questions, seed=seed, families=families, image_size=image_size):
        for k, solution in enumerate(policy.sample_solutions(question, solutions_per_question)):
            records.append(
                {
                    "id": solution_id(question["id"], k),
                    "prompt": question["prompt"],
                    "images": question["images"],
                    "answer": question["answer"],
                    "options": question["options"],
                    "completions": solution.steps,
                    "process_correctness": [1 if g else -1 for g in solution.gold_correct],
                    "step_types": list(solution.step_types or []),
                    "category": question["category"],
                }
            )
    return _to_dataset(records)


@PROCESS_BENCHES.register("testbed")
def _testbed_process_bench(args, kwargs, seed):
    return testbed_process_bench(**{"seed": seed, **kwargs})


def load_process_bench_spec(spec: str, seed: int = 0):
    """A process bench from a spec "name[:arg][,key=value...]", e.g. "testbed:num_questions=60",
    "puzzlevqa:limit_per_category=5", "visualprocessbench:data/VisualProcessBench/test.jsonl"."""
    from trl_vlprm.guidance.backends import parse_spec

    name, args, kwargs = parse_spec(spec)
    return PROCESS_BENCHES.get(name, f"process bench spec {spec!r}")(args, kwargs, seed)


# ---------------------------------------------------------------- metrics


def f1_score(true_positive: int, false_positive: int, false_negative: int) -> float:
    """F1 = 2TP / (2TP + FP + FN); 0.0 when the class never occurs nor is predicted (`precision_recall_f1`)."""
    return precision_recall_f1(true_positive, false_positive, false_negative)[2]


def step_metrics(scores: Sequence[float], verdicts: Sequence[int], threshold: float = 0.5) -> dict[str, float]:
    """F1 of correct steps, F1 of erroneous steps and their mean over flat lists (neutral verdicts skipped)."""
    pairs = [(score >= threshold, verdict == 1) for score, verdict in zip(scores, verdicts, strict=True) if verdict]
    tp_correct = sum(p and g for p, g in pairs)
    tp_error = sum(not p and not g for p, g in pairs)
    predicted_correct_wrongly = sum(p and not g for p, g in pairs)  # an error the scorer let through
    predicted_error_wrongly = sum(not p and g for p, g in pairs)  # a correct step flagged
    f1_correct = f1_score(tp_correct, predicted_correct_wrongly, predicted_error_wrongly)
    f1_error = f1_score(tp_error, predicted_error_wrongly, predicted_correct_wrongly)
    return {
        "f1_correct": f1_correct,
        "f1_error": f1_error,
        "macro_f1": (f1_correct + f1_error) / 2,
        "num_steps": len(pairs),
        "num_error_steps": sum(not g for _, g in pairs),
    }


def process_bench_metrics(
    step_scores: Sequence[Sequence[float]], records: Sequence[Mapping[str, Any]], threshold: float = 0.5
) -> dict[str, dict[str, float]]:
    """Metrics over all steps and per step type: {"all": ..., "perception": ..., "reasoning": ...}.

    Args:
        step_scores: per record, P(step is correct) per step.
        records: process-bench records (their `process_correctness` and `step_types`).
        threshold: scores >= threshold count as "correct".
    """
    if len(step_scores) != len(records):
        raise ValueError(f"{len(step_scores)} score lists for {len(records)} records")
    flat: dict[str, tuple[list[float], list[int]]] = {"all": ([], []), PERCEPTION: ([], []), REASONING: ([], [])}
    for index, (scores, record) in enumerate(zip(step_scores, records)):
        verdicts = record["process_correctness"]
        if len(scores) != len(verdicts):
            raise RecordError(
                record.get("id", index), "process_correctness", f"{len(scores)} score(s) for {len(verdicts)} step(s)"
            )
        bad = [j for j, score in enumerate(scores) if not math.isfinite(float(score))]
        if bad:  # NaN >= threshold is False: a broken PRM would count as one that judges every step wrong
            raise ValueError(
                f"record {record.get('id', index)}: the scorer returned a non-finite step score ({scores[bad[0]]} at "
                f"step {bad[0]}); a PRM's scores must be finite (check its weights and dtype)"
            )
        types = record.get("step_types") or [None] * len(verdicts)
        for score, verdict, kind in zip(scores, verdicts, types):
            for key in ("all", kind):
                if key in flat:
                    flat[key][0].append(float(score))
                    flat[key][1].append(int(verdict))
    return {key: step_metrics(s, v, threshold) for key, (s, v) in flat.items() if v or key == "all"}


def score_process_bench(scorer: StepScorer, records, threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Score every record's steps with `scorer` (one call per record) and compute `process_bench_metrics`."""
    return process_bench_metrics(process_bench_step_scores(scorer, records), records, threshold)


def process_bench_step_scores(scorer: StepScorer, records) -> list[list[float]]:
    """Per record, `scorer`'s P(step is correct) of each of its steps (one scorer call per record)."""
    all_scores = []
    for record in records:
        candidate = Candidate(
            steps=list(record["completions"]),
            finished=True,
            step_types=list(record.get("step_types") or [None] * len(record["completions"])),
            gold_correct=[v == 1 for v in record["process_correctness"]],  # read by testbed oracles only
        )
        (scores,) = scorer.score(record, [candidate])
        all_scores.append([float(score) for score in scores])
    return all_scores


def process_bench_path(output_dir: str | Path, bench_spec: str) -> Path:
    """Where the evaluation writes the per-solution lines of a process bench (`process_bench_lines`)."""
    return Path(output_dir) / "process_bench" / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", bench_spec).strip("_") + ".jsonl")


def process_bench_lines(
    records, step_scores: Mapping[str, Sequence[Sequence[float]]], threshold: float = 0.5
) -> list[dict[str, Any]]:
    """One JSON-ready line per solution: its steps, gold verdicts and step types, the prompt and image references,
    and each scorer's step scores with the first step it flags (score < `threshold`; None when it flags none) beside
    the gold first error (the first -1 verdict; None for a solution without one); `trl-vlprm view` reads them."""
    lines = []
    for index, record in enumerate(records):
        verdicts = [int(v) for v in record["process_correctness"]]
        scores = {name: [float(s) for s in by_record[index]] for name, by_record in step_scores.items()}
        lines.append(
            {
                "id": str(record.get("id", index)),
                **question_reference(record),
                "steps": list(record["completions"]),
                "step_types": list(record.get("step_types") or [None] * len(verdicts)),
                "process_correctness": verdicts,
                "first_error": next((i for i, v in enumerate(verdicts) if v == -1), None),
                "step_scores": scores,
                "predicted_first_error": {
                    name: next((i for i, s in enumerate(values) if s < threshold), None)
                    for name, values in scores.items()
                },
                "threshold": threshold,
            }
        )
    return lines


def metrics_to_markdown(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Table of {scorer: process_bench_metrics(...)}: one line per scorer and step type, F1 in percent."""
    lines = [
        "| scorer | steps | F1 correct | F1 error | macro F1 | # steps | # errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for scorer, by_type in results.items():
        for kind, m in by_type.items():
            lines.append(
                f"| {scorer} | {kind} | {100 * m['f1_correct']:.1f} | {100 * m['f1_error']:.1f} | "
                f"{100 * m['macro_f1']:.1f} | {m['num_steps']} | {m['num_error_steps']} |"
            )
    return "\n".join(lines) + "\n"
