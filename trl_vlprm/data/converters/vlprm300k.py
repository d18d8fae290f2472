"""VL-PRM300K records (`"vlprm300k"`, Ong et al. 2025, `ob11/VL-PRM300K`): judged rollouts whose `conversations`
hold one user turn per step and the consensus `+`/`-` label of each, under `[Visual Elements]` / `[Reasoning]`."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

from ..schema import IMAGE_PLACEHOLDER, PERCEPTION, REASONING, RecordError
from .base import (
    CONVERTERS,
    SkippedRecord,
    optional_string,
    require,
    resolve_images,
    schema_record,
    step_score,
    step_text,
    with_image_placeholders,
)

# VL-PRM300K marks the two parts of a solution with these headers in the user turns of `conversations`;
# the judge's analyses call the first part "[Perception]", so both spellings are accepted.
_SECTION_HEADER = re.compile(r"\s*\[(Visual Elements|Perception|Reasoning)\]")
_SECTION_TYPES = {"Visual Elements": PERCEPTION, "Perception": PERCEPTION, "Reasoning": REASONING}
_QUESTION_HEADER = "### Question:"
_SOLUTION_HEADER = "### Solution Process:"
_GOOD, _BAD = ("+", "<+>"), ("-", "<->")


def _message_role_and_text(message: Any, index: int, row: int | str) -> tuple[str, str]:
    """(role, text) of a chat turn in either the ShareGPT (`from`/`value`) or the OpenAI (`role`/`content`) form."""
    if not isinstance(message, Mapping):
        raise RecordError(row, "conversations", f"turn {index} is {type(message).__name__}, not a dict")
    # Arrow gives every turn all keys of the column, so a missing key reads as None rather than being absent.
    role = message.get("role") or message.get("from")
    content = message.get("content") if message.get("content") is not None else message.get("value")
    if isinstance(content, list):
        content = "".join(part.get("text") or "" for part in content if isinstance(part, Mapping))
    if not isinstance(role, str) or not isinstance(content, str):
        raise RecordError(row, "conversations", f"turn {index} has no role or text content")
    return {"human": "user", "gpt": "assistant"}.get(role, role), content


def _parse_first_incorrect_step(value: Any, row: int | str) -> tuple[str, int] | None:
    # Stored as a string such as "['Visual Elements', 2]" in the Parquet release, as a list/tuple in the jsonl.
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "null")):
        return None
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as err:
            raise RecordError(row, "first_incorrect_step", f"cannot parse {value!r}") from err
    if not isinstance(value, (list, tuple)) or len(value) != 2 or value[0] not in _SECTION_TYPES:
        raise RecordError(row, "first_incorrect_step", f"expected [section, index], got {value!r}")
    return str(value[0]), int(value[1])


@CONVERTERS.register("vlprm300k")
def from_vlprm300k(
    record: Mapping[str, Any],
    image_root: str | None = None,
    soft_labels: bool = False,
    image_field: str = "image",
    row: int | str = "?",
    paper_text: bool = False,
) -> dict[str, Any]:
    """A VL-PRM300K record (Ong et al. 2025, `ob11/VL-PRM300K`) as a schema record.

    The steps are those the paper trained on: one per user turn of `conversations` (training stopped at the first
    wrong step), their text taken from `steps_with_score` (where the format tags are removed). Labels are the
    `+`/`-` answers of the assistant turns (the consensus of Monte Carlo scores and LLM judges), or, with
    `soft_labels`, the Monte Carlo `score` of each step. Step types come from the section headers in the user turns:
    steps under `[Visual Elements]` are perception steps, steps under `[Reasoning]` reasoning steps.

    Args:
        record: the source row (fields `id`, `question`, `image`, `conversations`, `steps_with_score`,
            `first_incorrect_step`, `rollout_ground_truth_answer`, `source`, ...).
        image_root: folder the relative image paths are resolved against (the dataset snapshot).
        soft_labels: use the Monte Carlo scores in [0, 1] as labels instead of the consensus booleans.
        image_field: the column holding the image path (`"image_qwen_smart_resize"` for the resized copies).
        row: the row index, used in error messages.
        paper_text: keep the text exactly as the paper's PRM read it, for the multi-turn layout: the question as
            written inside the first turn's "### Question:" wrapper (its instructions included) and each step as its
            user turn holds it, with the `[Visual Elements]`/`[Reasoning]` headers, the `<step_k>` tags and anything
            else in the turn (such as `<correct_answer>`); the first step is the first turn's text after
            "### Solution Process:\n". The layout adds the wrapper and the system prompt back
            (`PRMLayout.named("multi_turn")`, whose system prompt is the paper's). The image goes before the
            question, as in the paper's messages.

    Raises:
        SkippedRecord: `first_incorrect_step` names no `-` turn (`convert_dataset` skips and reports the row).
    """
    user_turns, verdicts, steps = _vlprm300k_turns(record, row)
    completions, labels, step_types = _vlprm300k_steps(user_turns, verdicts, steps, row, soft_labels, paper_text)
    types = None if None in step_types else step_types
    _check_first_incorrect_step(record, [verdict in _GOOD for verdict in verdicts], types, row)
    question = _vlprm300k_question(record, user_turns[0], paper_text, row)
    images = resolve_images(require(record, image_field, row), image_root, row, image_field)
    if paper_text and IMAGE_PLACEHOLDER not in question:
        prompt = IMAGE_PLACEHOLDER * len(images) + question
    else:
        prompt = with_image_placeholders(question, len(images), row)
    return schema_record(
        prompt,
        images,
        completions,
        labels,
        types,
        id=optional_string(record.get("id")),
        answer=optional_string(record.get("rollout_ground_truth_answer")),
        category=optional_string(record.get("source")),
    )


def _vlprm300k_turns(record: Mapping[str, Any], row: int | str) -> tuple[list[str], list[str], list[Any]]:
    """The user turns (one step each), the assistant verdicts and `steps_with_score`, checked to line up."""
    conversations = require(record, "conversations", row)
    steps = require(record, "steps_with_score", row)
    turns = [_message_role_and_text(message, i, row) for i, message in enumerate(conversations)]
    user_turns = [text for role, text in turns if role == "user"]
    verdicts = [text.strip() for role, text in turns if role == "assistant"]
    if not user_turns or len(user_turns) != len(verdicts):
        raise RecordError(
            row, "conversations", f"{len(user_turns)} user turn(s) for {len(verdicts)} assistant turn(s)"
        )
    if len(user_turns) > len(steps):
        raise RecordError(row, "steps_with_score", f"{len(steps)} step(s) for {len(user_turns)} conversation turn(s)")
    for i, verdict in enumerate(verdicts):
        if verdict not in _GOOD + _BAD:
            raise RecordError(row, "conversations", f"assistant turn {i} is {verdict!r}; expected '+' or '-'")
    return user_turns, verdicts, steps


def _vlprm300k_steps(
    user_turns: list[str], verdicts: list[str], steps: list[Any], row: int | str, soft_labels: bool, paper_text: bool
) -> tuple[list[str], list[Any], list[str | None]]:
    """Each turn's step text, label and type (the section header the step falls under)."""
    completions = []
    labels = []
    step_types = []
    section = None
    for i, (turn, verdict) in enumerate(zip(user_turns, verdicts)):
        score = step_score(steps[i], i, row, "steps_with_score")
        text = step_text(steps[i], i, row, "steps_with_score")
        if text not in turn:
            raise RecordError(row, "conversations", f"user turn {i} does not hold step {i} of steps_with_score")
        # The first turn also holds the question, whose instructions may name the sections themselves.
        header = _SECTION_HEADER.match(turn.split(_SOLUTION_HEADER, 1)[-1] if i == 0 else turn)
        section = _SECTION_TYPES[header.group(1)] if header else section
        if paper_text:
            completions.append(turn.split(_SOLUTION_HEADER, 1)[1].lstrip("\n") if i == 0 else turn)
        else:
            completions.append(text)
        labels.append(score if soft_labels else verdict in _GOOD)
        step_types.append(section)
    return completions, labels, step_types


def _vlprm300k_question(record: Mapping[str, Any], first_turn: str, paper_text: bool, row: int | str) -> str:
    """The question: the record's field, or (for the paper's text, and older exports without it) the first turn's."""
    question = record.get("question")
    if question is None or paper_text:  # older jsonl exports keep the question only inside the first user turn
        if _QUESTION_HEADER not in first_turn or _SOLUTION_HEADER not in first_turn:
            raise RecordError(row, "question", "missing, and not found in the first user turn of conversations")
        question = first_turn.split(_QUESTION_HEADER, 1)[1].split(_SOLUTION_HEADER, 1)[0].strip()
    return str(question)


def _check_first_incorrect_step(
    record: Mapping[str, Any], good: list[bool], step_types: list[str] | None, row: int | str
) -> None:
    """The published `first_incorrect_step` ([section, index within the section]) must name the first `-` turn."""
    published = _parse_first_incorrect_step(record.get("first_incorrect_step"), row)
    expected = None if published is None else (_SECTION_TYPES[published[0]], published[1])
    first_bad = good.index(False) if False in good else None
    if first_bad is None:
        found = None
    elif step_types is None:  # without section headers only the presence of an error can be checked
        found = expected or ("an error", first_bad)
    else:
        kind = step_types[first_bad]
        found = (kind, step_types[:first_bad].count(kind))
    if found != expected:
        raise SkippedRecord(
            row,
            "first_incorrect_step",
            f"is {published!r} but the first '-' turn of conversations is {'none' if found is None else found}",
        )
