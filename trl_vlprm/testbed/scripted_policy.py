"""A scripted solver of the testbed puzzles with controllable perception and reasoning error rates.

It implements `trl_vlprm.types.Policy`, so labelling and search run on it unchanged, and every step it
writes carries its hidden gold correctness. It is stateless: everything comes from the question record (its
`metadata` hidden state) and the prefix, whose claims are read back from the step strings, so a prefix with a
misread keeps propagating that misread, whoever wrote it.

Gold correctness follows the PRM800K *first-error* convention: a step is correct iff it is true of the puzzle and
every earlier step is correct. A step that reasons soundly from a misread is therefore incorrect, and so is the
final answer after any error, even when it happens to be right. Because the gold solution of a puzzle is unique,
this is "the step and every step before it equal the gold steps".

Systematic errors: real VLMs misread the same image the same way in most samples, so their wrong answers agree
and majority vote converges on them. With `systematic_share > 0`, that share of questions (chosen by a hash of the
question id and `systematic_seed`, the same in every run) carries one fixed misreading; each sample of such a
question uses it with probability `systematic_rate` (else it errs at the ordinary rates). This is the regime where a
PRM that checks the perception step against the image earns its keep and majority vote fails.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..data.schema import PERCEPTION, REASONING
from ..types import Continuation, PolicyStats, Question
from .families import parse_value
from .generator import STEP_TYPES, answer_step, gold_steps, parse_answer_step, read_metadata


class ScriptedPolicy:
    """Solves testbed puzzles in three steps (perception, rule, answer), erring at the configured rates.

    Args:
        perception_error_rate: probability that a perception step misreads the image (a colour, count, size,
            shape or clock hand). Misreads mostly touch a detail the answer depends on, so most reach the answer.
        reasoning_error_rate: probability that the rule step draws a wrong conclusion from its observation (an
            arithmetic slip or a wrong rule); the answer step then states that wrong value.
        seed: seed of the policy's random generator (sampling order matters, as for any sampler).
        step_separator: text that ends a step; steps never contain it.
        systematic_share: share of questions misread the same way in most samples (a per-question bias).
        systematic_rate: probability that a sample of a biased question uses its fixed misreading.
        systematic_seed: picks the biased questions and their misreadings (independent of `seed`, so every policy
            built with the same value sees the same biases).
    """

    def __init__(
        self,
        perception_error_rate: float = 0.2,
        reasoning_error_rate: float = 0.2,
        seed: int = 0,
        step_separator: str = "\n",
        systematic_share: float = 0.0,
        systematic_rate: float = 0.8,
        systematic_seed: int = 0,
    ):
        for name, rate in (
            ("perception_error_rate", perception_error_rate),
            ("reasoning_error_rate", reasoning_error_rate),
            ("systematic_share", systematic_share),
            ("systematic_rate", systematic_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"ScriptedPolicy.{name}={rate}; expected a probability in [0, 1]")
        self.perception_error_rate = perception_error_rate
        self.reasoning_error_rate = reasoning_error_rate
        self.step_separator = step_separator
        self.systematic_share = systematic_share
        self.systematic_rate = systematic_rate
        self.systematic_seed = systematic_seed
        self.stats = PolicyStats()
        self._rng = random.Random(seed)

    def sample_solutions(self, question: Question, n: int) -> list[Continuation]:
        return self.complete(question, [], n)

    def sample_next_steps(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        return self._sample(question, prefix, n, max_steps=1)

    def complete(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        return self._sample(question, prefix, n, max_steps=len(STEP_TYPES))

    def _sample(self, question: Question, prefix: Sequence[str], n: int, max_steps: int) -> list[Continuation]:
        continuations = [self._continue(question, [s.strip() for s in prefix], max_steps) for _ in range(n)]
        self.stats.record(continuations)
        return continuations

    def _continue(self, question: Question, prefix: list[str], max_steps: int) -> Continuation:
        family, state = read_metadata(question)
        gold = gold_steps(family, state)
        given_answers = [a for a in (parse_answer_step(s) for s in prefix) if a is not None]
        if given_answers:  # the prefix already ended
            return Continuation(steps=[], finished=True, answer=given_answers[-1], step_types=[], gold_correct=[])

        # Read the prefix's claims back; a step that cannot be read is replaced by a fresh, correct reading.
        obs = family.parse(state, prefix[0]) if prefix else None
        if prefix and obs is None:
            obs = family.observe(state)
        value = parse_value(prefix[1]) if len(prefix) > 1 else None
        if len(prefix) > 1 and value is None:
            value = family.solve(state, obs)
        correct_so_far = len(prefix) <= len(gold) and all(s == g for s, g in zip(prefix, gold))

        steps: list[str] = []
        types: list[str] = []
        position = len(prefix)
        while len(steps) < max_steps:
            if position == 0:
                obs = family.observe(state)
                bias = self.systematic_misreading(question)
                if bias is not None and self._rng.random() < self.systematic_rate:
                    obs = bias
                elif self._rng.random() < self.perception_error_rate:
                    obs = family.misread(state, obs, self._rng)
                step, kind = family.describe(state, obs), PERCEPTION
            elif position == 1:
                value = family.solve(state, obs)
                if self._rng.random() < self.reasoning_error_rate:
                    value = family.slip(state, obs, value, self._rng)
                step, kind = family.explain(state, obs, value), REASONING
            else:
                step, kind = answer_step(value), REASONING
            steps.append(step)
            types.append(kind)
            position += 1
            if position >= len(gold):
                break
        gold_correct = []
        for offset, step in enumerate(steps):
            index = len(prefix) + offset
            correct_so_far = correct_so_far and index < len(gold) and step == gold[index]
            gold_correct.append(correct_so_far)
        finished = parse_answer_step(steps[-1]) is not None
        return Continuation(
            steps=steps,
            finished=finished,
            answer=parse_answer_step(steps[-1]) if finished else None,
            step_types=types,
            gold_correct=gold_correct,
            num_tokens=sum(len(s.split()) for s in steps),
        )

    def systematic_misreading(self, question: Question):
        """The fixed misreading of a biased question (an observation), or None when the question is unbiased."""
        if self.systematic_share <= 0.0:
            return None
        family, state = read_metadata(question)
        rng = random.Random(f"systematic:{self.systematic_seed}:{question.get('id', '?')}")
        if rng.random() >= self.systematic_share:
            return None
        return family.misread(state, family.observe(state), rng)
