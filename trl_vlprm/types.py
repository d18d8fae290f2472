"""The policy interface shared by every backend (vLLM, transformers, the scripted testbed policy).

Labelling (Monte-Carlo rollouts) and search (best-of-N, beam search, ...) only ever call these three methods, so
they run unchanged on a real vision-language model or on the scripted puzzle policy whose errors are known.

A *question* is a record of the schema in `trl_vlprm.data.schema` (a mapping with at least `id`, `prompt`,
`images`, and for grading `answer`/`options`). A *prefix* is the list of steps already taken.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Question = Mapping[str, Any]

# A "step separator" does one of two jobs, with its own default:
# - in the PRM's input, the text after every step; the step's score is read at its last token (TRL's
#   `PRMConfig.step_separator` default). `VLPRMConfig.step_separator`, the scorers and a checkpoint's
#   `prm_step_separator` mean this one; run configs that drive a policy call it `prm_step_separator`.
# - in a policy's output, the text that ends a step (a stop string while sampling one step; solutions are split at
#   it). `SamplingConfig.step_separator` and the `step_separator` of the run configs (TTS, labelling, evaluation)
#   mean this one. Steps reach the PRM as a list, so the two need not agree.
DEFAULT_STEP_SEPARATOR = "\n"
DEFAULT_POLICY_STEP_SEPARATOR = "\n\n"

# A word with the spaces and punctuation before it, or the punctuation that ends the text. Cuts fall before spaces
# and quotes, where byte-level BPE tokens start anyway, so with no step separator the pieces tokenize as the text.
_WORD_PIECE = re.compile(r"\W*\w+|\W+$")


def word_pieces(text: str) -> list[str]:
    """`text` cut after every word: the pieces a PRM trained with a verdict at every word (`PRMLayout.word_verdicts`,
    `testbed.label_every_word`) reads as steps, in training and when scoring. They join back into `text`; a text
    with no word is one piece."""
    pieces = _WORD_PIECE.findall(text)
    return pieces if pieces and "".join(pieces) == text else [text]


@dataclass
class Continuation:
    """Steps a policy produced after a prefix.

    Attributes:
        steps: the new steps (one for `sample_next_steps`; all remaining ones for `complete`).
        finished: the solution ended (an answer was given or the policy stopped).
        answer: the final answer the solution states, when `finished` and one could be read.
        step_types: per new step, "perception"/"reasoning" where the backend knows it, else None.
        gold_correct: per new step, its hidden true correctness (testbed policies only; None for real models).
        num_tokens: tokens generated for these steps (cost accounting).
    """

    steps: list[str]
    finished: bool
    answer: str | None = None
    step_types: list[str] | None = None
    gold_correct: list[bool] | None = None
    num_tokens: int = 0


@dataclass
class PolicyStats:
    """Running cost counters every backend keeps: calls, sequences sampled, tokens generated."""

    calls: int = 0
    sequences: int = 0
    tokens: int = 0

    def record(self, continuations: Sequence[Continuation]) -> None:
        self.calls += 1
        self.sequences += len(continuations)
        self.tokens += sum(c.num_tokens for c in continuations)

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "sequences": self.sequences, "tokens": self.tokens}

    def add(self, other: PolicyStats) -> None:
        """Adds `other`'s counts (a total over several measured blocks)."""
        self.calls += other.calls
        self.sequences += other.sequences
        self.tokens += other.tokens


class StatsDelta:
    """What a block of code cost on a policy's running `PolicyStats` (context manager), so every backend and every
    caller (search strategies, Monte-Carlo labelling) counts cost the same way.

        with StatsDelta(policy) as cost:
            policy.sample_solutions(question, 8)
        cost.spent  # PolicyStats(calls=1, sequences=8, tokens=...)
    """

    def __init__(self, policy: Policy):
        self.policy = policy
        self.spent = PolicyStats()
        self._before = PolicyStats()

    def __enter__(self) -> StatsDelta:
        self._before = PolicyStats(**self.policy.stats.as_dict())
        return self

    def __exit__(self, *exc: Any) -> None:
        after = self.policy.stats
        self.spent.calls = after.calls - self._before.calls
        self.spent.sequences = after.sequences - self._before.sequences
        self.spent.tokens = after.tokens - self._before.tokens


@dataclass
class Candidate:
    """A full or partial solution under consideration by a search strategy, with its PRM step scores.

    `step_input_lengths` (per scored step, the tokens the PRM read to score it, image tokens included) is filled
    only by scorers that report it (`PRMScorer`); the paper's length-normalised reward needs it.
    """

    steps: list[str]
    finished: bool = False
    answer: str | None = None
    step_types: list[str | None] = field(default_factory=list)
    gold_correct: list[bool] | None = None
    step_scores: list[float] = field(default_factory=list)
    step_input_lengths: list[int] = field(default_factory=list)

    def extend(self, continuation: Continuation) -> Candidate:
        """A new candidate: this one followed by `continuation` (scores of the new steps not yet known)."""
        types = continuation.step_types or [None] * len(continuation.steps)
        gold = None
        if self.gold_correct is not None and continuation.gold_correct is not None:
            gold = self.gold_correct + list(continuation.gold_correct)
        return Candidate(
            steps=self.steps + list(continuation.steps),
            finished=continuation.finished,
            answer=continuation.answer,
            step_types=self.step_types + list(types),
            gold_correct=gold,
            step_scores=list(self.step_scores),
            step_input_lengths=list(self.step_input_lengths),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "finished": self.finished,
            "answer": self.answer,
            "step_types": self.step_types,
            "gold_correct": self.gold_correct,
            "step_scores": self.step_scores,
            "step_input_lengths": self.step_input_lengths,
        }


@runtime_checkable
class Policy(Protocol):
    """What every policy backend offers. `step_separator` ends a step in the generated text."""

    step_separator: str
    stats: PolicyStats

    def sample_solutions(self, question: Question, n: int) -> list[Continuation]:
        """n full solutions from scratch (equivalent to `complete(question, [], n)`)."""
        ...

    def sample_next_steps(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        """n candidates for the next step after `prefix` (generation stops at the step separator)."""
        ...

    def complete(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        """n completions of `prefix` to the end of the solution."""
        ...


@runtime_checkable
class StepScorer(Protocol):
    """Scores every step of many candidate solutions to one question: P(step is correct) in [0, 1].

    Takes `Candidate`s (not bare strings) so a testbed oracle can read `gold_correct`; a PRM reads `steps`.
    """

    def score(self, question: Question, candidates: Sequence[Candidate]) -> list[list[float]]: ...


class ShortSampleError(RuntimeError):
    """A policy returned another number of samples than the call asked for (e.g. a server that ignores `n`)."""


def expect_samples(continuations: Sequence[Continuation], n: int, question: Question, call: str) -> list[Continuation]:
    """`continuations` when the policy returned exactly the `n` asked for, else `ShortSampleError` naming the question.

    Every caller of `sample_solutions` / `complete` / `sample_next_steps` checks through here: fewer samples would
    silently become fewer rollouts, candidates or MC completions (an estimate over 1 completion instead of 8).
    """
    continuations = list(continuations)
    if len(continuations) != n:
        raise ShortSampleError(
            f"question {question.get('id', '?')}: policy.{call} returned {len(continuations)} of {n} samples asked; "
            "a policy must return exactly n (a server that ignores `n`: set max_samples_per_request=1)"
        )
    return continuations
