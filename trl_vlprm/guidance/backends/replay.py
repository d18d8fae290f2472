"""The `replay` policy: solutions sampled elsewhere, read back from a JSONL file.

It lets the evaluation sweep score and re-rank another system's samples (a hosted model, a cluster job, a released
rollout set) with no generation at all, as the paper's best-of-N protocol re-ranks N fixed solutions per question:

    replay:runs/qwen_n16.jsonl

One line per question: `{"id": "<question id>", "solutions": [...]}`, each solution either a list of step texts or
one text that is split into steps at `step_separator` (default a blank line). A solution may instead be an object
`{"steps": [...], "answer": "B"}` when the answer was parsed upstream. The first `n` solutions of a question are
served, in file order, so N=1..16 of a sweep are nested subsets of the same samples.

Finished solutions only: step-level search (beam search, DVTS) and Monte-Carlo labelling need a policy that
generates, and ask for it by name. The file's fingerprint is pinned by the sweep, so a rewritten file is never mixed
with samples read from the old one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trl_vlprm.data.schema import RecordError
from trl_vlprm.guidance.backends import policy_backend
from trl_vlprm.guidance.solutions import split_steps
from trl_vlprm.types import DEFAULT_POLICY_STEP_SEPARATOR, Continuation, PolicyStats, Question


class ReplayPolicy:
    """Serves the solutions a JSONL file holds for each question id (see the module docstring for the format).

    Args:
        path: the JSONL file.
        step_separator: splits a solution given as one text into steps; also the separator strategies join with.
    """

    def __init__(self, path: str | Path, step_separator: str = DEFAULT_POLICY_STEP_SEPARATOR):
        self.path = Path(path)
        self.step_separator = step_separator
        self.stats = PolicyStats()
        if not self.path.is_file():
            raise FileNotFoundError(f"replay policy: no file {self.path}")
        self.solutions: dict[str, list[Continuation]] = {}
        first_line: dict[str, int] = {}
        with self.path.open() as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{self.path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise RecordError(where, "line", f"not a JSON object ({err})") from err
                if not isinstance(record, dict):
                    raise RecordError(where, "id", "the line is not a JSON object")
                if "id" not in record:
                    raise RecordError(where, "id", "missing")
                qid = str(record["id"])
                if qid in first_line:
                    raise RecordError(where, "id", f"{qid!r} repeats line {first_line[qid]}")
                first_line[qid] = number
                solutions = record.get("solutions")
                if not isinstance(solutions, list) or not solutions:
                    raise RecordError(where, "solutions", "missing or empty; expected a list of solutions")
                self.solutions[qid] = [self._continuation(s, where, k) for k, s in enumerate(solutions)]

    def _continuation(self, solution: Any, where: str, index: int) -> Continuation:
        """One stored solution; a blank step, an all-blank solution or an answer that is not text (a list would
        become "['B']" and never grade as right) is a `RecordError` naming the file, line and solution."""
        field = f"solutions[{index}]"
        answer = None
        if isinstance(solution, dict):
            answer, solution = solution.get("answer"), solution.get("steps")
        if isinstance(solution, str):
            solution = split_steps(solution, self.step_separator)
        if not isinstance(solution, list) or not solution or not all(isinstance(s, str) for s in solution):
            raise RecordError(where, field, "expected a non-empty text or list of step texts")
        blank = [k for k, step in enumerate(solution) if not step.strip()]
        if blank:
            raise RecordError(where, field, f"step {blank[0]} is blank; a step must hold text")
        if isinstance(answer, int) and not isinstance(answer, bool):
            answer = str(answer)  # a number written without quotes: its text is unambiguous
        if answer is not None and not isinstance(answer, str):
            raise RecordError(where, f"{field}.answer", f"a {type(answer).__name__}, expected a string (or null)")
        return Continuation(list(solution), finished=True, answer=answer)

    def sample_solutions(self, question: Question, n: int) -> list[Continuation]:
        """The first `n` stored solutions of the question (an error when the file holds fewer: never silently less)."""
        qid = str(question["id"])
        stored = self.solutions.get(qid)
        if stored is None:
            raise RecordError(
                qid, "id", f"replay policy: question {qid!r} has no line in {self.path} ({len(self.solutions)} ids)"
            )
        if len(stored) < n:
            raise RecordError(
                qid,
                "solutions",
                f"replay policy: question {qid!r} has {len(stored)} solutions in {self.path}, {n} asked",
            )
        served = stored[:n]
        self.stats.record(served)
        return served

    def _generates(self, *_: Any) -> list[Continuation]:
        raise NotImplementedError(
            f"replay policy ({self.path}) holds finished solutions only: step-level search and Monte-Carlo "
            "labelling need a policy that generates (hf, vllm, server)"
        )

    def sample_next_steps(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        return self._generates(question, prefix, n)

    def complete(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        if not prefix:
            return self.sample_solutions(question, n)
        return self._generates(question, prefix, n)


@policy_backend("replay")
def replay_policy(args: list[str], kwargs: dict[str, Any], seed: int | None) -> ReplayPolicy:
    """ "replay:<file.jsonl>": `ReplayPolicy` over the file (the run seed is unused: the samples are fixed)."""
    if len(args) != 1:
        raise ValueError(f"a replay policy names one JSONL file (replay:runs/samples.jsonl), got {args}")
    return ReplayPolicy(args[0], **kwargs)
