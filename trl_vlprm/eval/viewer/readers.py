"""Read the files `trl-vlprm view` shows into one shape: questions, their solutions, and the runs that scored them.

A *question* (a JSON-ready dict, what the page embeds):

    {"id", "prompt", "images": [image refs], "gold", "category",
     "solutions": [{"steps", "types", "truth" (1 good / 0 bad / None per step), "answer", "correct",
                    labelled data only: "label", "mc", "judge", "rule", "case"}],
     "runs": [{"name", "method", "n", "solutions": [indices], "scores": [per solution, per step], "pick",
               "answer", "correct", process benches only: "first_error", "predicted_first_error"}]}

A run's "method" is what picked: the search strategy of a tts line, or the outcome selection of a sweep.

Kinds of input, told apart by their content: a tts results file (`trl-vlprm tts`: one line per question and
strategy run), an evaluation samples file (`trl-vlprm eval`: `samples/<benchmark>__<policy>.jsonl`), a process-bench
lines file (`process_bench/<bench>.jsonl`) and a labelled dataset (a folder of `shard-*.parquet`, or one such file).
A line that is not what its file's kind needs raises a `ViewInputError` naming the file and the line.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from trl_vlprm.eval.selection import NO_SCORER, parse_selection, uses_scorer
from trl_vlprm.guidance.policy import Candidate

KINDS = ("tts", "samples", "process_bench", "labelled")


class ViewInputError(ValueError):
    """A file `trl-vlprm view` was given is not one it reads; the message names the file and the line."""


def _truth(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):  # soft labels and verdicts: 1 good, -1 / 0.0 bad, 0 (neutral) none
        return None if value == 0 and not isinstance(value, float) else int(value > 0.5)
    return None


def _round(scores: Sequence[Any] | None) -> list[float | None]:
    return [None if s is None else round(float(s), 4) for s in scores or []]


def _prompt_text(prompt: Any) -> str:
    if prompt is None or isinstance(prompt, str):
        return prompt or ""
    parts = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(p.get("text", "<image>") if p.get("type") == "text" else "<image>" for p in content or [])
    return "\n".join(parts)


def read_jsonl_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each line; a malformed last line (an interrupted write) is left out with a warning,
    any other is a `ViewInputError` naming the file and line."""
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                warnings.warn(f"{path}:{number}: a cut-off last line (an interrupted write) is left out", stacklevel=2)
                return
            raise ViewInputError(f"{path}:{number}: not a JSON line ({err.msg})") from None
        if not isinstance(record, dict) or "id" not in record:
            raise ViewInputError(f"{path}:{number}: not a JSON object with an 'id' field")
        yield number, record


def detect_kind(path: Path, first: Mapping[str, Any] | None) -> str:
    """The kind of a file from its first record (a folder or .parquet file is a labelled dataset)."""
    if path.is_dir() or path.suffix == ".parquet":
        return "labelled"
    if first is None:
        raise ViewInputError(f"{path}: no line to show")
    if "samples" in first:
        return "samples"
    if "candidates" in first and "strategy" in first:
        return "tts"
    if "process_correctness" in first and "step_scores" in first:
        return "process_bench"
    raise ViewInputError(
        f"{path}:1: neither a tts results line (candidates, strategy), an evaluation sample line (samples) nor a "
        f"process-bench line (process_correctness, step_scores); fields {sorted(first)[:8]}"
    )


def _need(record: Mapping[str, Any], fields: Sequence[str], where: str, what: str) -> None:
    missing = [name for name in fields if name not in record]
    if missing:
        raise ViewInputError(f"{where}: field {missing[0]!r} missing ({what} line needs {', '.join(fields)})")


def _question(record: Mapping[str, Any], qid: str) -> dict[str, Any]:
    return {
        "id": qid,
        "prompt": _prompt_text(record.get("prompt")),
        "images": list(record.get("image_refs") or []),
        "gold": None,
        "category": record.get("category"),
        "solutions": [],
        "runs": [],
    }


def _solution(steps, types, truth, answer, correct) -> dict[str, Any]:
    steps = [str(s) for s in steps]
    return {
        "steps": steps,
        "types": list(types or [None] * len(steps)),
        "truth": [_truth(t) for t in truth] if truth else [None] * len(steps),
        "answer": answer,
        "correct": correct,
    }


def read_tts(path: Path, questions: dict[str, dict[str, Any]]) -> None:
    """Adds one run per line of a tts results file (its own candidates) to `questions` (by id, in place)."""
    for number, line in read_jsonl_lines(path):
        where = f"{path}:{number}"
        _need(line, ("id", "strategy", "candidates", "chosen", "correct"), where, "a tts results")
        qid = str(line["id"])
        question = questions.setdefault(qid, _question(line, qid))
        question["gold"] = line.get("gold", question["gold"])
        settings = line.get("settings") or {}
        start = len(question["solutions"])
        scores = []
        for k, candidate in enumerate(line["candidates"]):
            if not isinstance(candidate, Mapping) or "steps" not in candidate:
                raise ViewInputError(f"{where}: candidates[{k}] has no 'steps'")
            question["solutions"].append(
                _solution(
                    candidate["steps"],
                    candidate.get("step_types"),
                    candidate.get("gold_correct"),
                    candidate.get("answer"),
                    None,
                )
            )
            scores.append(_round(candidate.get("step_scores")))
        chosen = line["chosen"]
        scorer = settings.get("scorer")
        name = f"{line['strategy']}" + (f" [{scorer}]" if scorer else "") + f" · {path.stem}"
        question["runs"].append(
            {
                "name": name,
                "method": line["strategy"],
                "n": settings.get("n"),
                "solutions": list(range(start, len(question["solutions"]))),
                "scores": scores,
                "pick": None if chosen is None else start + int(chosen),
                "answer": line.get("answer"),
                "correct": bool(line["correct"]),
            }
        )
        if chosen is not None and 0 <= int(chosen) < len(line["candidates"]):
            question["solutions"][start + int(chosen)]["correct"] = bool(line["correct"])


def read_samples(path: Path, questions: dict[str, dict[str, Any]], selection: str, n: int | None) -> None:
    """Adds the sampled solutions of an evaluation samples file and one run per scorer: the pick of `selection`
    among the first `n` samples (all when None), as the sweep derives it."""
    choice, aggregation = parse_selection(selection)
    for number, line in read_jsonl_lines(path):
        where = f"{path}:{number}"
        _need(line, ("id", "answer", "samples"), where, "an evaluation samples")
        qid = str(line["id"])
        question = questions.setdefault(qid, _question(line, qid))
        question["gold"] = line["answer"]
        samples = line["samples"][:n] if n else line["samples"]
        start = len(question["solutions"])
        for k, sample in enumerate(samples):
            missing = [f for f in ("steps", "correct", "step_scores") if f not in sample]
            if missing:
                raise ViewInputError(f"{where}: samples[{k}]: field {missing[0]!r} missing")
            question["solutions"].append(
                _solution(
                    sample["steps"],
                    sample.get("step_types"),
                    sample.get("gold_correct"),
                    sample.get("answer"),
                    bool(sample["correct"]),
                )
            )
        scorers = list(dict.fromkeys(name for sample in samples for name in sample["step_scores"]))
        for scorer in scorers if uses_scorer(selection) else [NO_SCORER]:
            candidates = [
                Candidate(
                    sample["steps"],
                    True,
                    sample.get("vote_answer"),
                    step_scores=list(sample["step_scores"].get(scorer) or []) if scorer != NO_SCORER else [],
                )
                for sample in samples
            ]
            try:
                chosen = choice.choose(candidates, aggregation, [bool(s["correct"]) for s in samples])
            except (ValueError, KeyError, TypeError) as err:
                raise ViewInputError(f"{where}: scorer {scorer!r}: {selection} cannot pick ({err})") from None
            question["runs"].append(
                {
                    "name": scorer if scorer != NO_SCORER else selection,
                    "method": selection,
                    "n": len(samples),
                    "solutions": list(range(start, start + len(samples))),
                    "scores": [_round(s["step_scores"].get(scorer)) for s in samples] if scorer != NO_SCORER else [],
                    "pick": None if chosen is None else start + chosen,
                    "answer": None if chosen is None else samples[chosen].get("vote_answer"),
                    "correct": chosen is not None and bool(samples[chosen]["correct"]),
                }
            )


def read_process_bench(path: Path, questions: dict[str, dict[str, Any]]) -> None:
    """One question per solution of a process-bench lines file; one run per scorer with its first flagged step."""
    for number, line in read_jsonl_lines(path):
        where = f"{path}:{number}"
        _need(line, ("id", "steps", "process_correctness", "step_scores"), where, "a process-bench")
        qid = str(line["id"])
        question = questions.setdefault(qid, _question(line, qid))
        verdicts = line["process_correctness"]
        if len(verdicts) != len(line["steps"]):
            raise ViewInputError(f"{where}: {len(verdicts)} verdicts for {len(line['steps'])} steps")
        index = len(question["solutions"])
        question["solutions"].append(_solution(line["steps"], line.get("step_types"), verdicts, None, None))
        first_error = line.get("first_error")
        for scorer, scores in line["step_scores"].items():
            predicted = (line.get("predicted_first_error") or {}).get(scorer)
            question["runs"].append(
                {
                    "name": scorer,
                    "method": "first error",
                    "n": None,
                    "solutions": [index],
                    "scores": [_round(scores)],
                    "pick": None,
                    "first_error": first_error,
                    "predicted_first_error": predicted,
                    "correct": predicted == first_error,
                }
            )


def _json_cell(value: Any, where: str, name: str) -> Any:
    if value is None or not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ViewInputError(f"{where}: column {name!r} is not JSON") from None


def read_labelled(path: Path, questions: dict[str, dict[str, Any]], images: Any) -> None:
    """The solutions of a labelled dataset (a shard folder or one Parquet file), grouped by question; each step
    with its label, MC estimate and judge verdict, each solution with the rule (and its case) that decided."""
    import pyarrow.parquet as pq

    files = sorted(path.glob("shard-*.parquet")) if path.is_dir() else [path]
    if not files:
        raise ViewInputError(f"{path}: no shard-*.parquet (not a labelled dataset folder)")
    for file in files:
        table = pq.read_table(file)
        for number, row in enumerate(table.to_pylist()):
            where = f"{file}: row {number}"
            for name in ("completions", "labels"):
                if name not in row:
                    raise ViewInputError(f"{where}: column {name!r} missing (a labelled dataset needs it)")
            qid = str(row.get("question_id") or row.get("id") or number)
            if qid not in questions:
                question = _question(row, qid)
                question["images"] = [images.add_image(image, where) for image in row.get("images") or []]
                question["gold"] = row.get("answer")
                questions[qid] = question
            mc = _json_cell(row.get("mc"), where, "mc") or {}
            judge = _json_cell(row.get("judge"), where, "judge") or {}
            gold = _json_cell(row.get("gold_step_correct"), where, "gold_step_correct")
            steps = row["completions"]
            solution = _solution(
                steps, row.get("step_types"), gold, row.get("rollout_answer"), row.get("rollout_correct")
            )
            solution.update(
                label=[_truth(label) for label in row["labels"]],
                mc=_round((mc.get("scores") or [])[: len(steps)]),
                mc_label=[_truth(x) for x in (mc.get("labels") or [])[: len(steps)]],
                judge=list((judge.get("verdicts") or [])[: len(steps)]),
                rule=row.get("rule"),
                case=row.get("rule_case"),
            )
            if gold is None:  # without gold, the labels are the best truth there is
                solution["truth"] = list(solution["label"])
            questions[qid]["solutions"].append(solution)
