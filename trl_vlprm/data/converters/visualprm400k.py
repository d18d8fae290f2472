"""VisualPRM400K raw records (`"visualprm400k"`, `OpenGVLab/VisualPRM400K-v1.1-Raw`): per-step Monte Carlo scores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..schema import RecordError
from .base import (
    CONVERTERS,
    optional_string,
    require,
    resolve_images,
    schema_record,
    step_score,
    step_text,
    with_image_placeholders,
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
    steps = require(record, "steps_with_score", row)
    if not isinstance(steps, (list, tuple)) or not steps:
        raise RecordError(row, "steps_with_score", "must be a non-empty list of {'step', 'score'} dicts")
    completions, labels = [], []
    for i, step in enumerate(steps):
        score = step_score(step, i, row, "steps_with_score")
        completions.append(step_text(step, i, row, "steps_with_score"))
        labels.append(score if threshold is None else score > threshold)
        if stop_at_first_error and score <= (threshold or 0.0):
            break
    question = require(record, "question", row)
    images = resolve_images(require(record, "image", row), image_root, row, "image")
    prompt = with_image_placeholders(str(question), len(images), row)
    return schema_record(
        prompt,
        images,
        completions,
        labels,
        None,
        id=optional_string(record.get("id")),
        answer=optional_string(record.get("answer")),
    )
