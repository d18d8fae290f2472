"""Bring rollouts and judge verdicts in: label solutions sampled (and judged) elsewhere, without sampling them again.

`LabelConfig.rollouts_file` names a JSONL file of rollouts with their Monte-Carlo estimates, in one of two formats:

* `paper`: the paper's rollout files (theogbrand/vlprm `rollout_data_generation/.../rollout_output_data_files`), one
  rollout a line: `uid` (the question), `question` (the policy prompt; the text inside `<question>` tags is kept as
  the question, as the paper's `item2conv_prm` does), `answer`, `image_path` (or `image`, read under
  `LabelConfig.image_root` when relative), `response` (the solution in the paper's sectioned format) and
  `steps_with_score` (per step `step`, `score`, `num_mc_correct`, `num_mc_total`). The steps must be exactly the
  `<step_k>` contents of the response, in order (else an error naming the line). A step is good when its `score`
  is above `mc_threshold` (the paper's `score <= threshold` is bad).
* `ours`: one solution a line as the batch judge saves them (`trl_vlprm.labeling.labeler.solutions_to_json`
  entries): `question_id`, `index`, `rollout` (steps, step_types, answer, correct, ...), `mc` (scores, labels, ...).
  The questions come from `LabelConfig.dataset`.

A rollout's request id (`custom_id`) is its line's `custom_id` (or `rollout_uuid`, `unique_id`) when it has one,
else its solution id `{question_id}#{k}` (`trl_vlprm.data.schema.solution_id`), as the batch judge names them.
`LabelConfig.verdict_files` name judge answers: Batch API output or error files (JSONL, `custom_id` + `response`) or
the paper's `*_verification_results.json` (a list of `custom_id` + `verification_response`); they are read by
`JudgeConfig.judge_prompt`'s parser. A verdict whose id matches no rollout, or two answers for one id, is an error
naming the file and line; a rollout with no verdict has "unknown" verdicts (counted as `missing` errors). Without
verdict files the configured judge (server, batch) judges the imported rollouts. Either way `import_dataset` puts the
solutions through the same rules, shards, resume and checks as `trl-vlprm label` (`trl_vlprm.labeling.builder`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trl_vlprm.data.answers import Grader, grade_question
from trl_vlprm.data.paper_solution import solution_answer, split_solution
from trl_vlprm.data.schema import IMAGE_PLACEHOLDER, RecordError, question_ids, solution_id
from trl_vlprm.labeling.batch_judge import BATCH_DIR, BatchJudge
from trl_vlprm.labeling.combine import RULES
from trl_vlprm.labeling.config import LabelConfig
from trl_vlprm.labeling.judge import JudgeClient, JudgeConfig, JudgeResult
from trl_vlprm.labeling.judge_prompts import JUDGE_PROMPTS, UNKNOWN
from trl_vlprm.labeling.labeler import (
    BatchStats,
    Solution,
    check_judge_failures,
    count_verdicts,
    judge_items,
    label_solutions,
    solutions_from_json,
)
from trl_vlprm.labeling.mc import Cost, MCResult, Rollout
from trl_vlprm.labeling.noise import save_noise_report
from trl_vlprm.labeling.shards import CONFIG_FILE, folder_stats, plan_shards, write_shard
from trl_vlprm.utils.ranks import SINGLE
from trl_vlprm.utils.resume import question_digest, stable_digest

ROLLOUT_FORMATS = ("auto", "paper", "ours")
_QUESTION = re.compile(r"<question>(.*?)</question>", re.S)
_BOXED = re.compile(r"\\boxed\{(.*)\}", re.S)


@dataclass
class ImportedRollouts:
    """Rollouts read from a file: the questions they answer, the solutions, and each solution's request id."""

    questions: list[dict[str, Any]]
    solutions: list[Solution]
    custom_ids: list[str]


def _lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            rows.append((number, json.loads(text)))
        except ValueError as err:
            raise RecordError(f"{path}:{number}", "line", f"not JSON ({err})") from err
    return rows


def detect_format(row: Mapping[str, Any]) -> str:
    return "paper" if "steps_with_score" in row else "ours"


def read_rollouts(
    path: str | Path,
    rollout_format: str = "auto",
    questions: Sequence[Mapping[str, Any]] | None = None,
    mc_threshold: float = 0.0,
    image_root: str | None = None,
    grader: Grader | None = None,
) -> ImportedRollouts:
    """The rollouts of `path` (see the module docstring); `questions` are needed by the `ours` format."""
    path = Path(path)
    rows = _lines(path)
    if not rows:
        raise RecordError(str(path), "rollouts", "the file holds no rollout")
    fmt = detect_format(rows[0][1]) if rollout_format == "auto" else rollout_format
    if fmt not in ROLLOUT_FORMATS[1:]:
        raise ValueError(f"rollout_format={rollout_format!r}; expected one of {ROLLOUT_FORMATS}")
    if fmt == "ours":
        if questions is None:
            raise ValueError(f"{path}: rollouts in our format name their questions by id: give the questions")
        solutions: list[Solution] = []
        for number, row in rows:
            where = f"{path}:{number}"
            (solution,), _ = solutions_from_json({"solutions": [row], "stats": _NO_STATS}, questions, where)
            _check_lengths(solution[2], solution[3], where)
            solutions.append(solution)
        ids = [_custom_id(row, solution_id(str(s[0]["id"]), s[1])) for (_, row), s in zip(rows, solutions)]
        used = {str(s[0]["id"]) for s in solutions}
        imported = ImportedRollouts([dict(q) for q in questions if str(q["id"]) in used], solutions, ids)
    else:
        imported = _read_paper(path, rows, mc_threshold, image_root, grader)
    seen: dict[str, int] = {}
    for (number, _), cid in zip(rows, imported.custom_ids):
        if cid in seen:
            raise RecordError(
                f"{path}:{number}", "custom_id", f"{cid!r} already names the rollout of line {seen[cid]}"
            )
        seen[cid] = number
    return imported


_NO_STATS = {"rollout_cost": {}, "mc_cost": {}, "judge": {}, "cases": {}, "solutions": 0, "records": 0,
             "dropped_solutions": 0, "steps_total": 0, "steps_labelled": 0}  # fmt: skip


def _custom_id(row: Mapping[str, Any], default: str) -> str:
    return str(next((row[k] for k in ("custom_id", "rollout_uuid", "unique_id") if row.get(k)), default))


def _check_lengths(rollout: Rollout, mc: MCResult | None, where: str) -> None:
    n = len(rollout.steps)
    if len(rollout.step_types) != n:
        raise RecordError(where, "rollout.step_types", f"{len(rollout.step_types)} types for {n} steps")
    if mc is not None and len(mc.labels) != n:
        raise RecordError(where, "mc.labels", f"{len(mc.labels)} MC labels for {n} steps")


def _read_paper(path: Path, rows, mc_threshold: float, image_root: str | None, grader) -> ImportedRollouts:
    questions: dict[str, dict[str, Any]] = {}
    solutions: list[Solution] = []
    ids: list[str] = []
    per_question: Counter[str] = Counter()
    for number, row in rows:
        where = f"{path}:{number}"
        for name in ("uid", "question", "answer", "response", "steps_with_score"):
            if row.get(name) is None:
                raise RecordError(where, name, "missing")
        qid = str(row["uid"])
        question = questions.get(qid)
        if question is None:
            text = _QUESTION.search(row["question"])
            image = row.get("image_path") or row.get("image")
            if image is None:
                raise RecordError(where, "image_path", "missing")
            if image_root and not Path(image).is_absolute():
                image = str(Path(image_root) / image)
            question = {
                "id": qid,
                "prompt": IMAGE_PLACEHOLDER + (text.group(1).strip() if text else row["question"].strip()),
                "images": [image],
                "answer": str(row["answer"]),
            }
            questions[qid] = question
        elif str(row["answer"]) != question["answer"]:
            raise RecordError(
                where, "answer", f"{row['answer']!r}, but an earlier line of {qid!r} says {question['answer']!r}"
            )
        steps, types = split_solution(row["response"])
        scored = row["steps_with_score"]
        scored_steps = [str(entry.get("step", "")).strip() for entry in scored]
        if scored_steps != steps:
            first = next(
                (i for i, (a, b) in enumerate(zip(scored_steps, steps)) if a != b), min(len(steps), len(scored_steps))
            )
            raise RecordError(
                where,
                "steps_with_score",
                f"{len(scored_steps)} scored steps but the response has {len(steps)} <step_k> steps; they differ "
                f"from step {first}",
            )
        scores = []
        for i, entry in enumerate(scored):
            score = entry.get("score")
            if score is None and entry.get("num_mc_total"):
                score = entry["num_mc_correct"] / entry["num_mc_total"]
            if not isinstance(score, (int, float)):
                raise RecordError(where, f"steps_with_score[{i}].score", f"{score!r} is not a number")
            scores.append(float(score))
        labels = [score > mc_threshold for score in scores]
        boxed = _BOXED.search(solution_answer(row["response"]) or "")
        answer = boxed.group(1).strip() if boxed else solution_answer(row["response"])
        rollout = Rollout(steps, types, None, answer, grade_question(answer, question, grader))
        cost = Cost(calls=len(scored), sequences=sum(int(e.get("num_mc_total") or 0) for e in scored))
        first_error = next((i for i, good in enumerate(labels) if not good), None)
        mc = MCResult(scores, labels, first_error, len(scored), cost)
        j = per_question[qid]
        per_question[qid] += 1
        solutions.append((question, j, rollout, mc))
        ids.append(_custom_id(row, solution_id(qid, j)))
    return ImportedRollouts(list(questions.values()), solutions, ids)


@dataclass
class VerdictLine:
    """One judge answer read from a file: its content (None for an error line), usage, error text, and origin."""

    content: str | None
    usage: dict[str, Any]
    error: str | None
    where: str


def read_verdict_files(paths: Sequence[str | Path]) -> dict[str, VerdictLine]:
    """`custom_id` -> the answer, from Batch API output/error files or the paper's verification results files.

    An answer replaces an error line for the same id (a resubmission that succeeded); two answers for one id are an
    error naming both places.
    """
    found: dict[str, VerdictLine] = {}
    for path in map(Path, paths):
        text = path.read_text()
        if text.lstrip().startswith("["):  # the paper's `*_verification_results.json`
            entries = [(f"{path}[{i}]", e) for i, e in enumerate(json.loads(text))]
            parsed = [
                (where, e.get("custom_id"), VerdictLine(e.get("verification_response"), {}, None, where))
                for where, e in entries
            ]
        else:
            parsed = [
                (f"{path}:{n}", row.get("custom_id"), _batch_line(row, f"{path}:{n}")) for n, row in _lines(path)
            ]
        for where, cid, line in parsed:
            if cid is None:
                raise RecordError(where, "custom_id", "missing")
            previous = found.get(cid)
            if previous is not None and previous.content is not None and line.content is not None:
                raise RecordError(where, "custom_id", f"{cid!r} was already answered at {previous.where}")
            if previous is None or line.content is not None:
                found[cid] = line
    return found


def _batch_line(row: Mapping[str, Any], where: str) -> VerdictLine:
    response, error = row.get("response") or {}, row.get("error")
    if response.get("status_code") == 200 and not error:
        body = response.get("body") or {}
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise RecordError(where, "response.body", f"no choices[0].message.content ({err!r})") from err
        return VerdictLine(content, body.get("usage") or {}, None, where)
    if error:
        return VerdictLine(None, {}, f"batch {error.get('code')}: {error.get('message')}", where)
    return VerdictLine(None, {}, f"http {response.get('status_code')}", where)


def verdicts_from_files(
    imported: ImportedRollouts, verdicts: Mapping[str, VerdictLine], parse, counts: Counter | None = None
) -> list[JudgeResult]:
    """A `JudgeResult` per imported solution from the answers read by `read_verdict_files`, parsed by `parse` (a
    judge prompt's parser). An answer naming no rollout is an error naming its place."""
    known = set(imported.custom_ids)
    for cid, line in verdicts.items():
        if cid not in known:
            raise RecordError(line.where, "custom_id", f"{cid!r} names no rollout of the imported file")
    results = []
    for (_, _, rollout, _), cid in zip(imported.solutions, imported.custom_ids):
        result = JudgeResult(verdicts=[UNKNOWN] * len(rollout.steps))
        line = verdicts.get(cid)
        if line is None:
            result.errors.append(f"missing: no verdict for {cid!r}")
        elif line.content is None:
            result.attempts = 1
            result.errors.append(f"{line.error} ({line.where})")
        else:
            result.attempts = 1
            result.prompt_tokens = int(line.usage.get("prompt_tokens") or 0)
            result.completion_tokens = int(line.usage.get("completion_tokens") or 0)
            try:
                result.verdicts = parse(line.content, rollout.step_types)
            except ValueError as err:
                result.errors.append(f"parse: {err} ({line.where})")
        if counts is not None:
            counts.update("error " + e.split(":")[0] for e in result.errors)
        results.append(result)
    return results


def import_dataset(
    config: LabelConfig,
    judge_config: JudgeConfig | None = None,
    questions=None,
    grader: Grader | None = None,
) -> BatchStats:
    """Label the rollouts of `config.rollouts_file` (with the verdicts of `config.verdict_files`, or else the
    configured judge) into the shards of `config.output_dir`; the stats of all shards there.

    Same shards, pins, resume and checks as `trl_vlprm.labeling.builder.build_dataset` (the module docstring for the
    formats). `questions` are the question records of rollouts in our format (default: those `config.dataset` names).
    """
    judge_config = judge_config or JudgeConfig()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if questions is None and config.rollouts_format != "paper":
        questions = config.questions()
    imported = read_rollouts(
        config.rollouts_file, config.rollouts_format, questions, config.mc_threshold, config.image_root, grader
    )
    ids = question_ids(imported.questions, "imported rollouts")
    digests = [question_digest(question) for question in imported.questions]
    needs = RULES.get(config.rule)
    from_files = None
    if needs.needs_judge and config.verdict_files:
        prompt = JUDGE_PROMPTS.get(judge_config.judge_prompt, "JudgeConfig.judge_prompt")
        lines = read_verdict_files(config.verdict_files)
        from_files = dict(zip(imported.custom_ids, verdicts_from_files(imported, lines, prompt.parse)))
    pins = config.pinned(judge_config)
    planned = SINGLE.claimed_plan(
        output_dir / CONFIG_FILE, lambda: plan_shards(output_dir, pins, ids, digests, config.shard_size)
    )
    with planned as (plan, claim):
        judge = None
        if needs.needs_judge and from_files is None:
            judge = (
                BatchJudge(judge_config, output_dir / BATCH_DIR, config.show_progress)
                if config.judge == "batch"
                else JudgeClient(judge_config, seed=config.seed)
            )
        by_question: dict[str, list[int]] = {}
        for k, (question, _, _, _) in enumerate(imported.solutions):
            by_question.setdefault(str(question["id"]), []).append(k)
        for index, chunk in tqdm(plan, desc="import", unit="shard", disable=not config.show_progress):
            chunk_ids = [ids[j] for j in chunk]
            picked = [k for qid in chunk_ids for k in by_question.get(qid, [])]
            solutions = [imported.solutions[k] for k in picked]
            custom_ids = [imported.custom_ids[k] for k in picked]
            stats = BatchStats()
            for _, _, _, mc in solutions:
                if mc is not None:
                    stats.mc_cost.add(mc.cost)
            verdicts = [None] * len(solutions)
            if from_files is not None:
                verdicts = [from_files[cid] for cid in custom_ids]
            elif judge is not None and isinstance(judge, BatchJudge):
                key = "import-" + stable_digest([chunk_ids, [digests[j] for j in chunk]])[:16]
                verdicts = judge.judge_many(judge_items(solutions), custom_ids, key)
            elif judge is not None:
                verdicts = judge.judge_many(judge_items(solutions))
            if needs.needs_judge:
                count_verdicts(stats, verdicts)
                if judge is not None:
                    check_judge_failures(judge, stats, chunk_ids, config.judge_max_failed_share)
            rows = label_solutions(solutions, verdicts, config.rule, stats, **config.combination_settings())
            with claim.writing(f"shard {index}"):
                write_shard(output_dir, index, rows, stats, chunk_ids, [digests[j] for j in chunk])
        total = folder_stats(output_dir)
        save_noise_report(output_dir, total.noise)
    return total
