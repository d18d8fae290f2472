"""What every source-format converter shares: the `CONVERTERS` registry, the helpers a converter builds a schema
record with (and that raise `RecordError` naming the row and the source field), and `convert_records` /
`convert_dataset`, which map a registered converter over a dataset and report the rows they skip."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from trl_vlprm.registry import Registry

from ..schema import IMAGE_PLACEHOLDER, RecordError, is_soft, stepwise_features, validate_record

logger = logging.getLogger(__name__)

OPTIONAL_FIELDS = ("id", "answer", "options", "category")

# Source formats by name: `converter(record, row=..., **kwargs) -> schema record`, each registered at its definition
# with `@CONVERTERS.register(name)`. Every module of this package is imported before the first lookup, so a new
# format is one module that registers itself.
CONVERTERS: Registry[Callable[..., dict[str, Any]]] = Registry("source format", discover="trl_vlprm.data.converters")


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


def schema_record(
    prompt: str,
    images: list[str],
    completions: list[str],
    labels: list[Any],
    step_types: list[str] | None = None,
    **optional: Any,
) -> dict[str, Any]:
    """A schema record with every column: the optional ones (`OPTIONAL_FIELDS`) are None unless given."""
    record = {"prompt": prompt, "images": images, "completions": completions, "labels": labels}
    record["step_types"] = step_types
    for name in OPTIONAL_FIELDS:
        record[name] = optional.get(name)
    return record


def require(record: Mapping[str, Any], field: str, row: int | str) -> Any:
    """`record[field]`, or `RecordError` naming the row and the field when it is absent or None."""
    value = record.get(field)
    if value is None:
        raise RecordError(row, field, "missing")
    return value


def optional_string(value: Any) -> str | None:
    """`value` as a string for an optional text column (ids may be numbers in the source), None kept."""
    return None if value is None else str(value)


def resolve_images(value: Any, image_root: str | None, row: int | str, field: str) -> list[str]:
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


def step_score(step: Any, index: int, row: int | str, field: str) -> float:
    """The score of a `{"step", "score"}` dict of `steps_with_score`, checked to be a number in [0, 1]."""
    if not isinstance(step, Mapping) or "step" not in step or "score" not in step:
        raise RecordError(row, field, f"step {index} must be a dict with 'step' and 'score', got {step!r}")
    score = step["score"]
    if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score) or not 0 <= score <= 1:
        raise RecordError(row, field, f"step {index} has score {score!r}; expected a number in [0, 1]")
    return float(score)


def step_text(step: Mapping[str, Any], index: int, row: int | str, field: str) -> str:
    """The stripped, non-empty text of a `{"step", "score"}` dict of `steps_with_score`."""
    text = step["step"]
    if not isinstance(text, str) or not text.strip():
        raise RecordError(row, field, f"step {index} text is empty")
    return text.strip()


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
                report.skipped.append({"row": index, "id": optional_string(source.get("id")), "reason": str(skipped)})
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
