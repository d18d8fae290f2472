"""Test-time-scaling sweep: benchmarks x policies x outcome selections x N, at the cost of one generation.

Per question, `n_max` solutions are sampled once (`policy.sample_solutions`), graded once, and scored once by every
scorer (`scorer.score`). Every N <= n_max and every outcome selection is then derived from those samples by
drawing `num_subsamples` random subsets of size N (as search-and-learn does), so majority vote, best-of-N under each
aggregation and the PRM-weighted vote are compared on the very same solutions.

The outcome selections (majority vote, best-of-N, the PRM-weighted vote, pass@n, first) are in
`trl_vlprm.eval.selection`. `best_of_n:paper` needs one more PRM read per solution (the solution as a single step,
as the paper scores it), done in the sampling pass only when the selection is asked for; its P(+) and input length
are stored per sample under `whole_score`. With an answer judge (`trl_vlprm.eval.answer_judge`), solutions the rules
cannot read are graded from the answer the judge reads; each sample records `graded_by`.

Samples go to `<output_dir>/samples/<benchmark>__<policy>.jsonl`, one line per question, appended as they finish:
a rerun skips the questions already there. What produced them is pinned (`trl_vlprm.utils.resume`): a sidecar
`.meta.json` holds n_max, the answer kind and the pins of the policy and the benchmark (their specs, seeds and model
folder fingerprints), and a rerun with others is refused; each line holds a content digest of its question (a
changed question is refused) and the pin digest of every scorer that scored it: a line scored by another scorer
under the same name (another spec, or a PRM retrained into the same folder) is scored again, never reused.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trl_vlprm.data.answers import extract_answer, grade_with_fallback, question_kind
from trl_vlprm.data.references import question_reference
from trl_vlprm.data.schema import RecordError, question_ids
from trl_vlprm.eval.selection import (
    check_selection,
    derive_accuracies,
    needs_whole_solution,
)
from trl_vlprm.guidance.policy import Candidate, Policy, Question, StepScorer
from trl_vlprm.guidance.strategies import score_candidates
from trl_vlprm.guidance.strategies.base import whole_solutions
from trl_vlprm.types import expect_samples
from trl_vlprm.utils.ranks import SINGLE, Ranks, merge_parts, part_files
from trl_vlprm.utils.resume import (
    atomic_write_text,
    pin_settings,
    question_digest,
    read_results,
    stable_digest,
)

# ---------------------------------------------------------------- sampling (the one expensive pass)


def sample_question(
    question: Question,
    policy: Policy,
    scorers: Mapping[str, StepScorer],
    n_max: int,
    answer_kind: str = "auto",
    whole_solution: bool = False,
    answer_judge: Any | None = None,
) -> dict[str, Any]:
    """Sample, grade and score `n_max` solutions of one question; the JSONL record of that question.

    With `whole_solution`, every scorer also reads each solution as one step (the paper's best-of-N scoring). With
    an `answer_judge` (`trl_vlprm.eval.answer_judge.AnswerJudge`), a solution whose answer the rules cannot read is
    given to the judge, and the answer it reads is graded by the rules; each sample records `graded_by`.
    """
    qid = str(question.get("id", "?"))
    if question.get("answer") is None:
        raise RecordError(qid, "answer", "missing; needed to grade the samples")
    gold, options = str(question["answer"]), list(question.get("options") or []) or None
    kind = question_kind(question, answer_kind)  # as `run_tts` grades (`data.answers.grade_question`)
    continuations = expect_samples(policy.sample_solutions(question, n_max), n_max, question, "sample_solutions")
    candidates = [Candidate(steps=[], gold_correct=[]).extend(c) for c in continuations]
    read: dict[str, str | None] = {}

    def judge_reads(solution: str) -> str | None:  # memoised: grading and voting ask about the same solution
        if solution not in read:
            question_text = str(question.get("prompt", "")).replace("<image>", "").strip()
            read[solution] = answer_judge.extract(question_text, solution, options)
        return read[solution]

    samples = []
    for candidate in candidates:
        stated = candidate.answer if candidate.answer is not None else "\n".join(candidate.steps)
        extractor = judge_reads if answer_judge is not None else None
        correct, graded_by = grade_with_fallback(stated, gold, options, kind, extractor=extractor)
        # Votes count canonical answers, so "(B)", "B. 12" and "12" are one vote.
        vote = extract_answer(stated, options, kind)
        if vote is None and graded_by == "fallback":
            vote = extract_answer(read[stated], options, kind)
        samples.append(
            {
                "steps": candidate.steps,
                "step_types": candidate.step_types,
                "gold_correct": candidate.gold_correct,
                "answer": candidate.answer,
                "vote_answer": vote,
                "correct": correct,
                "graded_by": graded_by,
                "step_scores": {},
            }
        )
    record = {"id": qid, "answer": gold, "category": question.get("category"), "samples": samples}
    record.update(question_reference(question))  # what a reader shows beside the steps; lines before it lack it
    if whole_solution:  # the separator the whole solutions are joined with, so a rescoring reads the same text
        record["whole_separator"] = policy.step_separator
    _score_samples(record, question, scorers, list(scorers), candidates)
    return record


def _score_samples(record: dict[str, Any], question: Question, scorers, names, candidates=None) -> None:
    """Fill the samples' step scores (and input lengths, and whole-solution scores when the record asks for them)
    under the scorers `names`, in place."""
    samples = record["samples"]
    if candidates is None:
        candidates = [
            Candidate(s["steps"], True, s["answer"], list(s["step_types"]), s.get("gold_correct")) for s in samples
        ]
    separator = record.get("whole_separator")
    wholes = whole_solutions(candidates, separator) if separator is not None else []
    for name in names:
        score_candidates(scorers[name], question, candidates)
        for sample, candidate in zip(samples, candidates):
            sample["step_scores"][name] = list(candidate.step_scores)
            if candidate.step_input_lengths:
                sample.setdefault("step_input_lengths", {})[name] = list(candidate.step_input_lengths)
        if separator is None:
            continue
        score_candidates(scorers[name], question, wholes)
        if any(w.steps and not w.step_input_lengths for w in wholes):
            # A scorer without input lengths (oracle, random) has no paper reward: best_of_n:paper leaves it out.
            record.setdefault("no_input_lengths", []).append(name)
            for sample in samples:
                sample.get("whole_score", {}).pop(name, None)
            continue
        if name in record.get("no_input_lengths", []):
            record["no_input_lengths"].remove(name)
        for sample, whole in zip(samples, wholes):
            score = {"p": whole.step_scores[0], "input_length": whole.step_input_lengths[0]} if whole.steps else None
            sample.setdefault("whole_score", {})[name] = score


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def samples_path(output_dir: str | Path, benchmark: str, policy: str) -> Path:
    return Path(output_dir) / "samples" / f"{_safe_name(benchmark)}__{_safe_name(policy)}.jsonl"


def _rescore(record: dict[str, Any], question: Question, scorers: Mapping[str, StepScorer], names) -> None:
    """Score a sampled record again with the scorers `names` (in place)."""
    _score_samples(record, question, scorers, names)


def sample_benchmark(
    questions: Sequence[Question],
    policy: Policy,
    scorers: Mapping[str, StepScorer],
    n_max: int,
    path: str | Path,
    answer_kind: str = "auto",
    description: str = "sampling",
    pins: Mapping[str, Any] | None = None,
    scorer_pins: Mapping[str, Any] | None = None,
    whole_solution: bool = False,
    answer_judge: Any | None = None,
    ranks: Ranks | None = None,
) -> list[dict[str, Any]]:
    """Sample every question not yet in `path` (appending one line each); return the records of `questions`.

    `pins` (e.g. the policy's and the benchmark's spec and fingerprints) must match the ones the file was sampled
    with; `scorer_pins[name]` identifies what scorer `name` is (default: its name), and lines scored under another
    pin are scored again. Raises a `RecordError` for a question whose content changed since it was sampled.
    `whole_solution` and `answer_judge`: see `sample_question` (both are pinned when set). `ranks`: the processes
    of a launch sharing the questions (`trl_vlprm.utils.ranks`); the others than rank 0 return their share only.
    """
    ranks = ranks or SINGLE
    ids = question_ids(questions, "the evaluation sweep")  # a repeated id would reuse another question's samples
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"n_max": n_max, "answer_kind": answer_kind, **dict(pins or {})}
    if whole_solution:  # absent when off, so runs sampled before these options existed still resume
        meta["whole_solution"] = True
    if answer_judge is not None:
        meta["answer_judge"] = answer_judge.config.model
    scorer_digests = {name: stable_digest((scorer_pins or {}).get(name, name)) for name in scorers}
    by_id = dict(zip(ids, questions))
    done: dict[str, dict[str, Any]] = {}

    def plan() -> list[str]:  # rank 0, holding the file's lock
        pin_settings(path.with_suffix(".meta.json"), meta, where=str(path))
        merge_parts(path)  # what the other ranks of an interrupted run had sampled
        done.update(_resumed_records(path, by_id, scorers, scorer_digests))
        return [qid for qid in ids if qid not in done]

    with ranks.locked_plan(path, plan) as todo:
        mine = ranks.share(todo)
        ranks.log(f"{description}: {len(mine)} of the {len(todo)} questions left")
        with ranks.append_records(path) as handle:
            for qid in tqdm(mine, desc=description):
                question = by_id[qid]
                record = sample_question(question, policy, scorers, n_max, answer_kind, whole_solution, answer_judge)
                record["question_digest"] = question_digest(question)
                record["scorer_pins"] = dict(scorer_digests)
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
                done[qid] = record
        ranks.wait_for_all(description)
        if ranks.is_main and ranks.world_size > 1:
            merge_parts(path)
            for record in read_results(path):
                done.setdefault(str(record["id"]), record)
    if not ranks.is_main:  # a follower returns its own share only
        return [done[qid] for qid in mine]
    return [done[qid] for qid in ids]


def _resumed_records(path: Path, by_id, scorers, scorer_digests) -> dict[str, dict[str, Any]]:
    """The records already in `path`, by id; refuses a changed question, rescores lines of a stale scorer pin."""
    done = {}
    records = read_results(path)
    rescored = 0
    for number, record in enumerate(records, start=1):
        question = by_id.get(str(record["id"]))
        if question is not None:
            if record.get("question_digest") != question_digest(question):
                raise RecordError(
                    record["id"],
                    "question_digest",
                    f"{path}:{number} sampled another version of this question "
                    "(its content changed since); restore the old inputs or use another output_dir",
                )
            pinned = record.get("scorer_pins") or {}
            stale = [name for name, digest in scorer_digests.items() if pinned.get(name) != digest]
            if stale:
                _rescore(record, question, scorers, stale)
                record["scorer_pins"] = {**pinned, **{name: scorer_digests[name] for name in stale}}
                rescored += 1
        done[str(record["id"])] = record
    if rescored:  # one atomic rewrite: a crash leaves the old lines, which are simply rescored again
        atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))
    return done


def run_sweep(
    benchmarks: Mapping[str, Sequence[Question]],
    policies: Mapping[str, Policy | Callable[[], Policy]],
    scorers: Mapping[str, StepScorer],
    selections: Sequence[str],
    n_values: Sequence[int],
    output_dir: str | Path,
    num_subsamples: int = 4,
    seed: int = 0,
    answer_kind: str = "auto",
    pins: Mapping[str, Mapping[str, Any]] | None = None,
    answer_judge: Any | None = None,
    ranks: Ranks | None = None,
) -> list[dict[str, Any]]:
    """Sample each (benchmark, policy) once at max(n_values), derive all selections and N; return the result rows.

    `policies` may map to a zero-argument factory, called only when some question still needs sampling (so a
    finished run reloads no model). `pins` = {"benchmarks": {name: pin}, "policies": {...}, "scorers": {...}}
    says what produced each sample and score (see `sample_benchmark`); names stand for themselves when absent.
    Rows: {benchmark, policy, scorer, selection, n, accuracy, std, num_questions}. With `ranks` (the processes of a
    launch) every rank samples its share of each file and rank 0 alone derives and returns the rows (others: none).
    """
    ranks = ranks or SINGLE
    for selection in selections:
        check_selection(selection)
    n_max = max(n_values)
    rows = []
    for policy_name, policy in policies.items():
        for benchmark, questions in benchmarks.items():
            path = samples_path(output_dir, benchmark, policy_name)
            # a peek (the lock is taken to write), counting what the ranks of an interrupted run left in part files
            done = {str(r["id"]) for part in (path, *part_files(path)) for r in read_results(part, repair=False)}
            if callable(policy) and not isinstance(policy, Policy):
                if any(str(q.get("id", "?")) not in done for q in questions):
                    policy = policy()
            file_pins = {
                "benchmark": (pins or {}).get("benchmarks", {}).get(benchmark, benchmark),
                "policy": (pins or {}).get("policies", {}).get(policy_name, policy_name),
            }
            records = sample_benchmark(
                questions,
                policy,
                scorers,
                n_max,
                path,
                answer_kind,
                f"{benchmark} / {policy_name}",
                file_pins,
                (pins or {}).get("scorers"),
                needs_whole_solution(selections),
                answer_judge,
                ranks,
            )
            if not ranks.is_main:
                continue
            for row in derive_accuracies(records, selections, list(scorers), n_values, num_subsamples, seed):
                rows.append({"benchmark": benchmark, "policy": policy_name, **row})
    return rows
