"""Converters from the process-supervision formats people already have to the record schema (`schema.py`).

Three source layouts are supported, each a converter in the `CONVERTERS` registry (see `docs/data_format.md` for each
one field by field):

- `"trl_stepwise"`: TRL's former stepwise-supervision format, `{"prompt", "completions", "labels"}`
  (e.g. `trl-lib/math_shepherd`, `trl-lib/prm800k`). Text only.
- `"vlprm300k"`: the VL-PRM300K records published with Ong et al. 2025 (`ob11/VL-PRM300K`): a judged rollout with
  per-step Monte Carlo scores and `conversations` whose `+`/`-` turns are the consensus step labels, split into a
  perception section (`[Visual Elements]`) and a `[Reasoning]` section.
- `"visualprm400k"`: VisualPRM400K raw records (`OpenGVLab/VisualPRM400K-v1.1-Raw`, InternVL's
  `visualprm_data_pieline.py` output): `image`, `question`, `answer`, `response`, `steps_with_score`, with the
  expected accuracy `score` of every step prefix.

Each `from_*` function turns one source record into one schema record and raises `RecordError` naming the row and
the source field when something is missing or malformed. `convert_dataset` maps one of them over a whole dataset;
a row the source itself got inconsistent (`SkippedRecord`: a VL-PRM300K `first_incorrect_step` that names no `-`
turn) is left out and listed in a `ConversionReport` instead of stopping the conversion.
"""

from __future__ import annotations

import ast
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from trl_vlprm.registry import Registry

from .schema import (
    IMAGE_PLACEHOLDER,
    PERCEPTION,
    REASONING,
    RecordError,
    is_soft,
    stepwise_features,
    validate_record,
)

logger = logging.getLogger(__name__)

OPTIONAL_FIELDS = ("id", "answer", "options", "category")

# Source formats by name: `converter(record, row=..., **kwargs) -> schema record`, each registered at its definition
# with `@CONVERTERS.register(name)`.
CONVERTERS: Registry[Callable[..., dict[str, Any]]] = Registry("source format")


class SkippedRecord(RecordError):
    """A source row that is well-formed but self-contradictory upstream: conversion leaves it out and reports it."""


@dataclass
class ConversionReport:
    """What `convert_dataset` / `convert_records` kept and left out.

    Attributes:
        converted: rows converted.
        skipped: one entry per row left out: {"row": index, "id": source id or None, "reason": message}.
    """

    converted: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def skipped_ids(self) -> list[str]:
        return [str(entry["id"] if entry["id"] is not None else entry["row"]) for entry in self.skipped]

    def summary(self) -> str:
        shown = ", ".join(self.skipped_ids[:10]) + (", ..." if len(self.skipped) > 10 else "")
        return f"converted {self.converted} row(s), skipped {len(self.skipped)}" + (f": {shown}" if shown else "")


# VL-PRM300K marks the two parts of a solution with these headers in the user turns of `conversations`;
# the judge's analyses call the first part "[Perception]", so both spellings are accepted.
_SECTION_HEADER = re.compile(r"\s*\[(Visual Elements|Perception|Reasoning)\]")
_SECTION_TYPES = {"Visual Elements": PERCEPTION, "Perception": PERCEPTION, "Reasoning": REASONING}
_QUESTION_HEADER = "### Question:"
_SOLUTION_HEADER = "### Solution Process:"
_GOOD, _BAD = ("+", "<+>"), ("-", "<->")


def _record(
    prompt: str,
    images: list[str],
    completions: list[str],
    labels: list[Any],
    step_types: list[str] | None = None,
    **optional: Any,
) -> dict[str, Any]:
    record = {"prompt": prompt, "images": images, "completions": completions, "labels": labels}
    record["step_types"] = step_types
    for name in OPTIONAL_FIELDS:
        record[name] = optional.get(name)
    return record


def _require(record: Mapping[str, Any], field: str, row: int | str) -> Any:
    value = record.get(field)
    if value is None:
        raise RecordError(row, field, "missing")
    return value


def _string(value: Any) -> str | None:
    return None if value is None else str(value)


def _resolve_images(value: Any, image_root: str | None, row: int | str, field: str) -> list[str]:
    """Source image path(s) -> absolute paths that exist; relative paths are taken from `image_root`."""
    paths = value if isinstance(value, (list, tuple)) else [value]
    resolved = []
    for i, path in enumerate(paths):
        name = field if len(paths) == 1 else f"{field}[{i}]"
        if not isinstance(path, str) or not path:
            raise RecordError(row, name, f"expected an image path, got {path!r}")
        full = path if os.path.isabs(path) or image_root is None else os.path.join(image_root, path)
        if not os.path.isfile(full):
            hint = "" if os.path.isabs(path) or image_root else " (relative path and no image_root given)"
            raise RecordError(row, name, f"image file not found: {full}{hint}")
        resolved.append(os.path.abspath(full))
    return resolved


def with_image_placeholders(question: str, num_images: int, row: int | str = "?", field: str = "question") -> str:
    """The prompt for `question`: kept as is when it already holds one `<image>` per image, else the placeholders
    are put in front of it (one line), as InternVL and Qwen-VL data put the image before the text."""
    slots = question.count(IMAGE_PLACEHOLDER)
    if slots == num_images:
        return question
    if slots == 0:
        return IMAGE_PLACEHOLDER * num_images + "\n" + question
    raise RecordError(row, field, f"{slots} '{IMAGE_PLACEHOLDER}' placeholder(s) for {num_images} image(s)")


def _score(step: Any, index: int, row: int | str, field: str) -> float:
    if not isinstance(step, Mapping) or "step" not in step or "score" not in step:
        raise RecordError(row, field, f"step {index} must be a dict with 'step' and 'score', got {step!r}")
    score = step["score"]
    if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score) or not 0 <= score <= 1:
        raise RecordError(row, field, f"step {index} has score {score!r}; expected a number in [0, 1]")
    return float(score)


def _step_text(step: Mapping[str, Any], index: int, row: int | str, field: str) -> str:
    text = step["step"]
    if not isinstance(text, str) or not text.strip():
        raise RecordError(row, field, f"step {index} text is empty")
    return text.strip()


@CONVERTERS.register("trl_stepwise")
def from_trl_stepwise(record: Mapping[str, Any], row: int | str = "?") -> dict[str, Any]:
    """A record of TRL's former stepwise-supervision format (text only) as a schema record.

    Source layout: `{"prompt": str, "completions": list[str], "labels": list[bool]}`; `id`, `answer`, `options`
    and `category` are carried over when present. The result has no images and no step types.
    """
    prompt = _require(record, "prompt", row)
    if not isinstance(prompt, str):
        raise RecordError(row, "prompt", f"must be a string, got {type(prompt).__name__}")
    completions = _require(record, "completions", row)
    labels = _require(record, "labels", row)
    optional = {name: record.get(name) for name in OPTIONAL_FIELDS}
    return _record(prompt, [], list(completions), list(labels), None, **optional)


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
    images = _resolve_images(_require(record, image_field, row), image_root, row, image_field)
    if paper_text and IMAGE_PLACEHOLDER not in question:
        prompt = IMAGE_PLACEHOLDER * len(images) + question
    else:
        prompt = with_image_placeholders(question, len(images), row)
    return _record(
        prompt,
        images,
        completions,
        labels,
        types,
        id=_string(record.get("id")),
        answer=_string(record.get("rollout_ground_truth_answer")),
        category=_string(record.get("source")),
    )


def _vlprm300k_turns(record: Mapping[str, Any], row: int | str) -> tuple[list[str], list[str], list[Any]]:
    """The user turns (one step each), the assistant verdicts and `steps_with_score`, checked to line up."""
    conversations = _require(record, "conversations", row)
    steps = _require(record, "steps_with_score", row)
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
        score = _score(steps[i], i, row, "steps_with_score")
        text = _step_text(steps[i], i, row, "steps_with_score")
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


@CONVERTERS.register("visualprm400k")
def from_visualprm400k(
    record: Mapping[str, Any],
    image_root: str | None = None,
    threshold: float | None = 0.0,
    stop_at_first_error: bool = False,
    row: int | str = "?",
) -> dict[str, Any]:
    """A VisualPRM400K raw record (`OpenGVLab/VisualPRM400K-v1.1-Raw`) as a schema record.

    Each step's `score` is its Monte Carlo expected accuracy (`num_mc_correct / num_mc_total`). With a `threshold`
    a step is good when `score > threshold` (VisualPRM uses 0: a step is correct if any continuation reaches the
    right answer); with `threshold=None` the scores are kept as soft labels.

    Args:
        record: the source row (fields `image`, `question`, `answer`, `response`, `steps_with_score`, ...).
        image_root: folder the relative image paths are resolved against.
        threshold: score above which a step is labelled good; `None` keeps the float scores.
        stop_at_first_error: keep only the steps up to the first one at or below the threshold (InternVL's
            `--early-stop`; steps after an early-stopped rollout were never scored and carry score 0).
        row: the row index, used in error messages.
    """
    steps = _require(record, "steps_with_score", row)
    if not isinstance(steps, (list, tuple)) or not steps:
        raise RecordError(row, "steps_with_score", "must be a non-empty list of {'step', 'score'} dicts")
    completions, labels = [], []
    for i, step in enumerate(steps):
        score = _score(step, i, row, "steps_with_score")
        completions.append(_step_text(step, i, row, "steps_with_score"))
        labels.append(score if threshold is None else score > threshold)
        if stop_at_first_error and score <= (threshold or 0.0):
            break
    question = _require(record, "question", row)
    images = _resolve_images(_require(record, "image", row), image_root, row, "image")
    prompt = with_image_placeholders(str(question), len(images), row)
    return _record(
        prompt, images, completions, labels, None, id=_string(record.get("id")), answer=_string(record.get("answer"))
    )


def convert_records(
    records: Iterable[Mapping[str, Any]],
    fmt: str,
    validate: bool = True,
    report: ConversionReport | None = None,
    **kwargs: Any,
):
    """Yield the schema record of every source record, each validated (images are not decoded here).

    A `SkippedRecord` row is left out and added to `report` (when given); any other `RecordError` stops the run.
    """
    converter = CONVERTERS.get(fmt)
    fields = list(stepwise_features(with_types=True))
    for index, source in enumerate(records):
        if not isinstance(source, Mapping):
            raise RecordError(index, "<row>", f"expected a dict, got {type(source).__name__}")
        try:
            record = converter(source, row=index, **kwargs)
        except SkippedRecord as skipped:
            if report is not None:
                report.skipped.append({"row": index, "id": _string(source.get("id")), "reason": str(skipped)})
            continue
        missing = [name for name in fields if name not in record]
        if missing:  # a registered converter must give every column (None where the source has no value)
            raise RecordError(index, missing[0], f"the {fmt!r} converter returned no such field")
        if validate:
            validate_record(record, index, check_images=False)
        if report is not None:
            report.converted += 1
        yield record


def convert_dataset(
    dataset: Iterable[Mapping[str, Any]],
    fmt: str,
    validate: bool = True,
    report: ConversionReport | None = None,
    **kwargs: Any,
):
    """Convert a whole dataset (a `datasets.Dataset` or any iterable of dicts) to a schema `datasets.Dataset`.

    Images are stored as an `Image` feature referencing the resolved files. Labels are booleans unless some row has
    soft labels, in which case all labels are stored as floats.

    Args:
        dataset: the source rows.
        fmt: a name in `CONVERTERS`: `"trl_stepwise"`, `"vlprm300k"`, `"visualprm400k"` or one registered since.
        validate: check each converted record against the schema (a bad row raises `RecordError` naming it).
        report: filled with the rows converted and the rows skipped (`SkippedRecord`, with their ids and reasons);
            the skipped ones are also logged as a warning.
        **kwargs: passed to the converter (`image_root`, `threshold`, `soft_labels`, `paper_text`, ...).
    """
    from datasets import Dataset

    report = report if report is not None else ConversionReport()
    total = len(dataset) if hasattr(dataset, "__len__") else None
    records = convert_records(dataset, fmt, validate, report, **kwargs)
    rows = list(tqdm(records, total=total, desc=f"converting {fmt}"))
    if report.skipped:
        logger.warning("convert_dataset(%s): %s", fmt, report.summary())
    soft = any(is_soft(row["labels"]) for row in rows)
    if soft:
        for row in rows:
            row["labels"] = [float(label) for label in row["labels"]]
    features = stepwise_features(with_types=True, soft_labels=soft)
    columns = {name: [row[name] for row in rows] for name in features}
    return Dataset.from_dict(columns, features=features)
