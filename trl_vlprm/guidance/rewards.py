"""A trained VL-PRM as a reward for online RL: `VLPRMReward` plugs into TRL's `GRPOTrainer(reward_funcs=...)`.

TRL calls a custom reward with `prompts`, `completions`, `completion_ids`, every other dataset column (`images`,
`answer`, ...) as a list with one entry per completion, and `trainer_state`, `log_extra`, `log_metric`; it expects
one float (or None, "not applicable") per completion. The `num_generations` completions of one prompt sit in the
same call, so `VLPRMReward` groups the rows by prompt and images and scores each group with ONE `StepScorer.score`
call: a `PRMScorer` then runs the image and the question once per group, not once per completion.

Per completion: split the text into steps (by default at the PRM's own trained separator), score every step, reduce
the step scores with `trl_vlprm.guidance.aggregation.aggregate` (last/min/mean/prod). Inputs the PRM cannot score
get a fixed, documented reward and are counted in the logs (`log_metric`), never an exception mid-training:

| case                                                       | reward (default)              | log metric             |
|------------------------------------------------------------|-------------------------------|------------------------|
| no step (empty or blank completion)                        | `no_steps_reward` (0.0)       | `<name>/no_steps`      |
| over `max_steps` steps, or over `max_length` PRM tokens    | `overlong_reward` (0.0)       | `<name>/overlong`      |
| unreadable image or images not matching the prompt's slots | `invalid_input_reward` (None) | `<name>/invalid_input` |
| text that is not valid Unicode (a lone surrogate)          | `invalid_input_reward` (None) | `<name>/invalid_input` |
| a step score that is NaN or infinite (a broken PRM)        | `invalid_score_reward` (None) | `<name>/invalid_score` |

None is TRL's "not applicable": the completion is left out of that reward's mean and of the group baseline, and gets
no advantage when no other reward scores it.

`outcome_reward` grades the final answer against the dataset's `answer` column (`trl_vlprm.data.answers.grade`);
pass both to the trainer and weight them with `GRPOConfig.reward_weights`, each logged under its own name
(`rewards/<name>/mean`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trl_vlprm.data.answers import grade
from trl_vlprm.data.schema import RecordError, load_image
from trl_vlprm.guidance.aggregation import AGGREGATIONS, aggregate, reads_input_lengths
from trl_vlprm.guidance.policy import Candidate, StepScorer
from trl_vlprm.guidance.reward_inputs import completion_text, group_key, is_unicode, row_questions
from trl_vlprm.guidance.solutions import question_messages, split_steps
from trl_vlprm.modeling.encoding import EncodedPrompt, PRMEncoder, PRMLayout
from trl_vlprm.types import DEFAULT_STEP_SEPARATOR

logger = logging.getLogger(__name__)


@dataclass
class RewardStats:
    """Running totals over every call of one `VLPRMReward` (the logs show them per call)."""

    calls: int = 0
    completions: int = 0
    groups: int = 0
    scorer_calls: int = 0
    scored: int = 0
    no_steps: int = 0
    overlong: int = 0
    invalid_input: int = 0
    invalid_score: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _check_settings(scorer: StepScorer, aggregation: str, max_length: int | None, max_steps: int | None) -> None:
    """Refuse settings a reward call cannot honour, naming the setting."""
    # The paper's reward ("paper") ranks candidates by a length-scaled score with -1 for "judged wrong"; it is a
    # selection rule, not a dense reward, and needs input lengths a reward call does not carry.
    if reads_input_lengths(aggregation):  # an unknown name fails here, listing the registered ones
        step_only = [how for how in AGGREGATIONS if not reads_input_lengths(how)]
        raise ValueError(
            f"aggregation {aggregation!r} needs the PRM input lengths, which a reward call does not carry; "
            f"expected one of {step_only}"
        )
    if max_length is not None and getattr(scorer, "processing_class", None) is None:
        raise ValueError(
            f"max_length={max_length} needs a scorer with a `processing_class` to count PRM tokens; "
            f"{type(scorer).__name__} has none (use max_steps to bound completions instead)"
        )
    for field_name, value in (("max_length", max_length), ("max_steps", max_steps)):
        if value is not None and value < 1:
            raise ValueError(f"{field_name} must be >= 1 or None, got {value}")


class VLPRMReward:
    """A process reward model as a GRPO reward: the aggregated step scores of each completion.

    Args:
        scorer: any `StepScorer` (`PRMScorer`, a vLLM-served scorer, a testbed oracle).
        aggregation: how step scores become one reward, a name in `AGGREGATIONS` that reads step scores alone:
            "min" (every step must be right; the default, least open to padding a solution with easy steps), "prod",
            "mean" or "last".
        step_separator: text the policy's steps are split at; default: the scorer's `step_separator` (a
            `PRMScorer` reads the separator the PRM was trained with), else "\\n". Ignored with `split_steps`.
        split_steps: a custom `text -> list[str]` splitter (e.g. for "Step 1: ..." layouts).
        max_length: PRM token budget for the question (image tokens included) plus all steps and separators; a
            completion over it gets `overlong_reward`. Needs a scorer with a `processing_class` (as `PRMScorer`
            has) to count tokens. None: no limit.
        max_steps: a completion split into more steps gets `overlong_reward` (a guard against step padding).
        no_steps_reward: reward of a completion with no step (blank text).
        overlong_reward: reward of a completion over `max_steps` or `max_length`.
        invalid_input_reward: reward of every completion of a prompt whose images cannot be read, and of a
            completion that is not valid Unicode text (None: TRL's "not applicable").
        invalid_score_reward: reward of a completion the PRM gave a NaN or infinite step score (None: "not
            applicable"); a NaN reward would poison the group's advantages.
        prompt_column: dataset column holding the question as the PRM was trained to read it (e.g. the record's
            "<image>Which number ...?"); default: the policy's prompt as TRL passes it.
        name: the name TRL logs the reward under (`rewards/<name>/mean`); default `vlprm_<aggregation>`.
    """

    def __init__(
        self,
        scorer: StepScorer,
        aggregation: str = "min",
        step_separator: str | None = None,
        split_steps: Callable[[str], list[str]] | None = None,
        max_length: int | None = None,
        max_steps: int | None = None,
        no_steps_reward: float | None = 0.0,
        overlong_reward: float | None = 0.0,
        invalid_input_reward: float | None = None,
        invalid_score_reward: float | None = None,
        prompt_column: str | None = None,
        name: str | None = None,
    ):
        _check_settings(scorer, aggregation, max_length, max_steps)
        self.scorer = scorer
        self.aggregation = aggregation
        self.step_separator = (
            step_separator if step_separator is not None else getattr(scorer, "step_separator", DEFAULT_STEP_SEPARATOR)
        )
        self._split = split_steps
        self.max_length = max_length
        self.max_steps = max_steps
        self.no_steps_reward = no_steps_reward
        self.overlong_reward = overlong_reward
        self.invalid_input_reward = invalid_input_reward
        self.invalid_score_reward = invalid_score_reward
        self.prompt_column = prompt_column
        self.__name__ = name or f"vlprm_{aggregation}"
        self.stats = RewardStats()
        self.last_step_scores: list[list[float] | None] = []  # every step's score, per completion of the last call

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        aggregation: str = "min",
        batch_size: int = 16,
        head: str | None = None,
        dtype: Any = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        device: Any = "auto",
        **kwargs: Any,
    ) -> VLPRMReward:
        """A reward around `PRMScorer.from_pretrained(path)` (its trained separator and head); `kwargs` go to
        `VLPRMReward`. `device`: where the PRM runs; "auto" is this process's accelerator (`cuda:$LOCAL_RANK` under
        `accelerate launch`, the trainer's device); pass the trainer's `args.device` to be sure of it."""
        from trl_vlprm.guidance.scorer import PRMScorer  # torch-heavy: only when a PRM folder is loaded

        scorer = PRMScorer.from_pretrained(
            path,
            head=head,
            dtype=dtype,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            batch_size=batch_size,
            device=device,
        )
        return cls(scorer, aggregation=aggregation, **kwargs)

    def split_steps(self, text: str) -> list[str]:
        """The steps of a completion (non-blank, stripped)."""
        if self._split is None:
            return split_steps(text, self.step_separator)
        return [step.strip() for step in self._split(text) if step.strip()]

    # ---- one group (the completions of one prompt) ---------------------------------------------------------

    def _encoder(self) -> PRMEncoder:
        """The PRM's input layout: the scorer's own encoder (`PRMScorer.encoder`), else the "steps" layout with the
        PRM's separator (it may differ from the one the policy's text is split at)."""
        encoder = getattr(self.scorer, "encoder", None)
        if encoder is None:
            separator = getattr(self.scorer, "step_separator", self.step_separator)
            encoder = PRMEncoder(self.scorer.processing_class, PRMLayout(step_separator=separator))
        return encoder

    def _prompt_tokens(self, question: Mapping[str, Any], row: Any) -> EncodedPrompt | None:
        """The question encoded in the PRM's layout (None without a processing class); raises RecordError for
        unreadable images or images that do not match the prompt's slots."""
        processing_class = getattr(self.scorer, "processing_class", None)
        if processing_class is None:
            for i, image in enumerate(question["images"]):
                load_image(image, row, f"images[{i}]")
            return None
        return self._encoder().encode_prompt(question["prompt"], question["images"], row)

    def _too_long(self, prompt: EncodedPrompt | None, question: Mapping[str, Any], steps: Sequence[str]) -> bool:
        if self.max_steps is not None and len(steps) > self.max_steps:
            return True
        if self.max_length is None or prompt is None:
            return False
        encoded = self._encoder().encode_candidate(question["prompt"], prompt, steps)
        total = len(encoded.input_ids) + (len(prompt.input_ids) if encoded.shares_prefix else 0)
        return total > self.max_length

    def score_group(
        self, question: Mapping[str, Any], texts: Sequence[str], counts: dict[str, int]
    ) -> tuple[list[float | None], list[list[float] | None]]:
        """Rewards and step scores of the completions of one question, in one scorer call."""
        row = question.get("id", "?")
        try:
            prompt_tokens = self._prompt_tokens(question, row)
        except RecordError as err:
            reward = self.invalid_input_reward
            logger.warning("%s: %s; its %d completion(s) get reward %r", self.__name__, err, len(texts), reward)
            counts["invalid_input"] += len(texts)
            return [self.invalid_input_reward] * len(texts), [None] * len(texts)

        rewards: list[float | None] = [None] * len(texts)
        step_scores: list[list[float] | None] = [None] * len(texts)
        to_score: list[int] = []
        candidates: list[Candidate] = []
        for i, text in enumerate(texts):
            steps = self.split_steps(text)
            reason = self._unscorable(question, prompt_tokens, i, text, steps)
            if reason is None:
                to_score.append(i)
                candidates.append(Candidate(steps=steps))
            else:  # "invalid_input", "no_steps" or "overlong": its fixed reward, counted
                counts[reason] += 1
                rewards[i] = getattr(self, f"{reason}_reward")
        if candidates:
            scored = self._score_candidates(question, candidates, counts)
            for i, (reward, scores) in zip(to_score, scored):
                rewards[i], step_scores[i] = reward, scores
        return rewards, step_scores

    def _unscorable(
        self,
        question: Mapping[str, Any],
        prompt_tokens: EncodedPrompt | None,
        i: int,
        text: str,
        steps: Sequence[str],
    ) -> str | None:
        """Why the PRM cannot score completion `i` (the `counts` key of its case), or None when it can."""
        if not is_unicode(text):  # a lone surrogate: no tokenizer can encode it
            logger.warning(
                "%s: question %s: completion %d is not valid Unicode (a lone surrogate); reward %r",
                self.__name__,
                question.get("id", "?"),
                i,
                self.invalid_input_reward,
            )
            return "invalid_input"
        if not steps:
            return "no_steps"
        if self._too_long(prompt_tokens, question, steps):
            return "overlong"
        return None

    def _score_candidates(
        self, question: Mapping[str, Any], candidates: Sequence[Candidate], counts: dict[str, int]
    ) -> list[tuple[float | None, list[float]]]:
        """(reward, step scores) per candidate, from one scorer call; a non-finite step score gets
        `invalid_score_reward`."""
        row = question.get("id", "?")
        scores = self.scorer.score(question, candidates)
        counts["scorer_calls"] += 1
        if len(scores) != len(candidates):
            raise ValueError(
                f"{type(self.scorer).__name__} returned {len(scores)} score lists for {len(candidates)} candidates"
            )
        out: list[tuple[float | None, list[float]]] = []
        for candidate, candidate_scores in zip(candidates, scores):
            if len(candidate_scores) != len(candidate.steps):
                raise ValueError(
                    f"{type(self.scorer).__name__} returned {len(candidate_scores)} scores for a candidate of "
                    f"{len(candidate.steps)} steps (question {row})"
                )
            step_scores = [float(s) for s in candidate_scores]
            if not all(math.isfinite(s) for s in step_scores):
                counts["invalid_score"] += 1
                out.append((self.invalid_score_reward, step_scores))
                continue
            out.append((aggregate(candidate_scores, self.aggregation), step_scores))
            counts["scored"] += 1
        return out

    # ---- TRL's reward-function call ------------------------------------------------------------------------

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        images: Sequence[Any] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """One reward per completion (see the class docstring); `images` and other columns come from the dataset."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if self.prompt_column is not None and self.prompt_column not in kwargs:
            raise ValueError(
                f"{self.__name__}: prompt_column {self.prompt_column!r} is not a dataset column; columns passed: "
                f"{sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))}"
            )
        questions = row_questions(prompts, images, kwargs, self.prompt_column)
        groups: dict[str, list[int]] = {}
        for i, question in enumerate(questions):
            groups.setdefault(group_key(question["prompt"], question["images"]), []).append(i)

        counts = dict.fromkeys(("scorer_calls", "scored", "no_steps", "overlong", "invalid_input", "invalid_score"), 0)
        rewards: list[float | None] = [None] * len(completions)
        step_scores: list[list[float] | None] = [None] * len(completions)
        for indices in groups.values():
            texts = [completion_text(completions[i]) for i in indices]
            group_rewards, group_scores = self.score_group(questions[indices[0]], texts, counts)
            for i, reward, scores in zip(indices, group_rewards, group_scores):
                rewards[i], step_scores[i] = reward, scores

        # Kept for `VLPRMGRPOTrainer`, which turns the step scores of this call into per-token advantages.
        self.last_step_scores = step_scores
        self._record(len(completions), len(groups), counts, step_scores, log_metric, log_extra)
        return rewards

    def _record(
        self,
        completions: int,
        groups: int,
        counts: Mapping[str, int],
        step_scores: list[list[float] | None],
        log_metric: Callable[[str, float], None] | None,
        log_extra: Callable[[str, list], None] | None,
    ) -> None:
        """Add one call's counts to `stats` and log them (per call) through TRL's callbacks."""
        self.stats.calls += 1
        self.stats.completions += completions
        self.stats.groups += groups
        for key, value in counts.items():
            setattr(self.stats, key, getattr(self.stats, key) + value)
        if log_metric is not None:
            for key in ("no_steps", "overlong", "invalid_input", "invalid_score"):
                log_metric(f"{self.__name__}/{key}", float(counts[key]))
            log_metric(f"{self.__name__}/scorer_calls", float(counts["scorer_calls"]))
        if log_extra is not None:
            log_extra(f"{self.__name__}_step_scores", step_scores)

    def __repr__(self) -> str:
        scorer = type(self.scorer).__name__
        return f"VLPRMReward(name={self.__name__!r}, scorer={scorer}, aggregation={self.aggregation!r})"


def outcome_reward(
    completions: Sequence[Any],
    answer: Sequence[str | None],
    options: Sequence[Sequence[str] | None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when a completion states the gold `answer` (`trl_vlprm.data.answers.grade`, kind "auto"), else 0.0;
    None (not applicable) for rows without a gold answer. Reads the dataset's `answer` and `options` columns."""
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        gold = answer[i]
        if gold is None or not str(gold).strip():
            rewards.append(None)
            continue
        row_options = (options[i] or None) if options is not None else None
        rewards.append(1.0 if grade(completion_text(completion), str(gold), row_options) else 0.0)
    return rewards


def grpo_dataset(records: Any, system_prompt: str | None = None, num_proc: int | None = None) -> Any:
    """Question records (`trl_vlprm.data.schema`) as a GRPO dataset.

    `prompt` becomes chat messages with one `{"type": "image"}` part per "<image>" placeholder, in place (TRL fills
    them from the `images` column), after an optional system turn; the record's own prompt is kept as `prm_prompt`
    (give it to `VLPRMReward(prompt_column="prm_prompt")` so the PRM reads the question as it was trained, without the
    policy's system prompt). `images`, `answer`, `options`, `id` stay; step columns (`completions`, `labels`, ...) go.
    """
    drop = [c for c in ("completions", "labels", "step_types", "metadata") if c in records.column_names]

    def convert(record: Mapping[str, Any]) -> dict[str, Any]:
        messages = question_messages(record, system_prompt)
        return {"prm_prompt": record["prompt"], "prompt": messages}

    return records.map(convert, remove_columns=drop, num_proc=num_proc)
