"""Turn a stepwise-supervision record into token ids with labels at step ends.

Layout of a tokenized row: `prompt_ids + step_1 + sep + step_2 + sep + ...`; the label of step i sits on the last
token of `step_i + sep` and every other position is -100 (TRL's former PRMTrainer convention, so text-only rows
give identical ids and label positions). For a vision-language processor the prompt goes through the chat template
with one image part per image, and each image placeholder is expanded to the number of image tokens the image
processor will produce; the pixels themselves are computed in the collator, so the Arrow cache stays small.

The same functions serve training (`tokenize_row`) and scoring (`encode_prompt`, `encode_steps`), so a PRM scores
exactly the token layout it was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trl_vlprm.data.schema import PERCEPTION, RecordError
from trl_vlprm.modeling.encoding import (
    PRMEncoder,
    PRMLayout,
    encode_prompt,
    encode_steps,
    is_vision_processor,
    mm_token_type_ids,
)
from trl_vlprm.modeling.families import family_of_processor
from trl_vlprm.modeling.processor import get_tokenizer
from trl_vlprm.types import DEFAULT_STEP_SEPARATOR

IGNORE_INDEX = -100
# Per-token step type, kept beside the labels for loss weighting and per-type metrics.
STEP_TYPE_IDS = {"reasoning": 0, PERCEPTION: 1, None: 2}
STEP_TYPE_NAMES = {0: "reasoning", 1: PERCEPTION, 2: "untyped"}


def label_value(label: Any) -> int | float:
    """A label as TRL stored it: bools (and 0/1 integers) as int, soft labels as float."""
    if isinstance(label, (bool, np.bool_, int, np.integer)):
        return int(label)
    return float(label)


def _check_steps_free_of_vision_tokens(processing_class: Any, steps: Sequence[Sequence[int]], row: Any) -> None:
    # A literal image token in a step would be read as an image slot by the model: name the row instead.
    tokenizer = get_tokenizer(processing_class)
    special = family_of_processor(processing_class).vision_token_ids(processing_class)
    for i, step_ids in enumerate(steps):
        found = special.intersection(step_ids)
        if found:
            names = ", ".join(sorted(tokenizer.convert_ids_to_tokens(sorted(found))))
            raise RecordError(row, "completions", f"step {i} contains the vision token(s) {names}; remove them")


def tokenize_row(
    features: Mapping[str, Any],
    processing_class: Any,
    step_separator: str = DEFAULT_STEP_SEPARATOR,
    max_length: int | None = None,
    max_completion_length: int | None = None,
    train_on_last_step_only: bool = False,
    is_eval: bool = False,
    row: Any = "?",
    step_truncation: str = "tokens",
    long_prompt: str = "truncate",
    layout: PRMLayout | None = None,
) -> dict[str, Any]:
    """Tokenize one record.

    Args:
        features: the record (`prompt`, `completions`, `labels`, optional `images`, `step_types`, `label_weights`).
        processing_class: a tokenizer (text rows) or an image-only processor.
        step_separator, max_length, max_completion_length, train_on_last_step_only, is_eval: as TRL's former
            `PRMTrainer.tokenize_row`.
        row: the row's index or id, named in errors.
        step_truncation: `"tokens"` cuts at the token budget exactly as TRL did; `"whole_steps"` drops trailing
            steps that do not fit whole.
        long_prompt: a prompt longer than `max_length`: `"truncate"` (as TRL; the row keeps no label) or
            `"error"`.
        layout: the PRM input layout (default: the "steps" layout with `step_separator`). In the one-string layouts
            ("multi_turn", "text") steps are always kept or dropped whole, and in the multi-turn layout the
            assistant turn after each step shows that step's own label (`+` when >= 0.5), as the paper's training
            data does; the label sits on the last token of the generation prompt before it.

    Returns:
        `input_ids`, `labels` (int 0/1 for bool labels, float for soft ones, -100 off step ends), `step_type_ids`
        (per token, -100 off step ends), `mm_token_type_ids` (vision rows), `label_weights` (per token, when the
        record has them), `num_steps_dropped` (labelled steps lost to truncation), `prompt_too_long` (0/1) and
        `num_labels` (labelled positions left).

    Raises:
        RecordError: the prompt alone exceeds `max_length` and `long_prompt="error"`; a step holds a vision token.
    """
    if layout is not None and layout.name != "steps":
        limits = (max_length, max_completion_length, train_on_last_step_only, is_eval, long_prompt)
        return _tokenize_one_string(features, processing_class, layout, *limits, row)
    tokenizer = get_tokenizer(processing_class)
    system_prompt = layout.system_prompt if layout is not None else None
    prompt = encode_prompt(processing_class, features["prompt"], features.get("images") or [], row, system_prompt)
    prompt_ids = prompt.input_ids
    labels = [label_value(label) for label in features["labels"]]
    if train_on_last_step_only and not is_eval:
        labels = [IGNORE_INDEX] * (len(labels) - 1) + labels[-1:]
    step_types = features.get("step_types") or [None] * len(labels)
    weights = features.get("label_weights")
    steps = encode_steps(tokenizer, features["completions"], step_separator)
    if is_vision_processor(processing_class):
        _check_steps_free_of_vision_tokens(processing_class, steps, row)

    prompt_too_long = max_length is not None and len(prompt_ids) > max_length
    if prompt_too_long:
        if long_prompt == "error":
            raise RecordError(
                row,
                "prompt",
                f"{len(prompt_ids)} prompt tokens (images included) exceed max_length "
                f"{max_length}; raise max_length or lower max_pixels",
            )
        steps = []  # as TRL: nothing of the steps is left, so the row keeps no label

    budget = None if max_length is None else max_length - len(prompt_ids)
    if max_completion_length is not None:
        budget = max_completion_length if budget is None else min(budget, max_completion_length)
    completion_ids, token_labels, token_types, token_weights = _completion_tokens(
        steps, labels, step_types, weights, budget, step_truncation
    )
    num_labels = sum(label != IGNORE_INDEX for label in token_labels)
    if prompt_too_long:
        prompt_ids = prompt_ids[:max_length]
    out = {
        "input_ids": prompt_ids + completion_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + token_labels,
        "step_type_ids": [IGNORE_INDEX] * len(prompt_ids) + token_types,
        "num_steps_dropped": sum(label != IGNORE_INDEX for label in labels) - num_labels,
        "prompt_too_long": int(prompt_too_long),
        "num_labels": num_labels,
    }
    if weights is not None:
        out["label_weights"] = [0.0] * len(prompt_ids) + token_weights
    if prompt.mm_token_type_ids is not None:
        out["mm_token_type_ids"] = prompt.mm_token_type_ids[: len(prompt_ids)] + [0] * len(completion_ids)
    return out


def _completion_tokens(
    steps: list[list[int]],
    labels: list[Any],
    step_types: list[str | None],
    weights: list[float] | None,
    budget: int | None,
    step_truncation: str,
) -> tuple[list[int], list[Any], list[int], list[float]]:
    """The steps' token ids with, per token, the label, the step-type id and the loss weight (set on each step's
    last token, -100 / 0.0 elsewhere), cut to `budget` tokens."""
    completion_ids = []
    token_labels = []
    token_types = []
    token_weights = []
    for i, (step_ids, label, kind) in enumerate(zip(steps, labels, step_types)):
        if step_truncation == "whole_steps" and budget is not None and len(completion_ids) + len(step_ids) > budget:
            break  # no partial step is left as context without its label
        off = [IGNORE_INDEX] * (len(step_ids) - 1)
        completion_ids += step_ids
        token_labels += off + [label]
        token_types += off + [STEP_TYPE_IDS[kind] if label != IGNORE_INDEX else IGNORE_INDEX]
        token_weights += [0.0] * (len(step_ids) - 1) + [float(weights[i]) if weights is not None else 1.0]
    if budget is None:
        return completion_ids, token_labels, token_types, token_weights
    # Token truncation exactly as TRL: a step cut before its end loses its label.
    return completion_ids[:budget], token_labels[:budget], token_types[:budget], token_weights[:budget]


def _tokenize_one_string(
    features: Mapping[str, Any],
    processing_class: Any,
    layout: PRMLayout,
    max_length: int | None,
    max_completion_length: int | None,
    train_on_last_step_only: bool,
    is_eval: bool,
    long_prompt: str,
    row: Any,
) -> dict[str, Any]:
    """`tokenize_row` for the one-string layouts ("multi_turn", "text"): same outputs; steps kept or dropped whole
    (a step is kept when its score token fits)."""
    encoder = PRMEncoder(processing_class, layout)
    labels = [label_value(label) for label in features["labels"]]
    verdicts = [label >= 0.5 for label in labels]
    prompt, ids, ends = encoder.encode_row(
        features["prompt"], features.get("images") or [], features["completions"], verdicts, row
    )
    prompt_length = len(prompt.input_ids)
    prompt_too_long = max_length is not None and prompt_length > max_length
    if prompt_too_long and long_prompt == "error":
        raise RecordError(
            row,
            "prompt",
            f"{prompt_length} prompt tokens (images included) exceed max_length "
            f"{max_length}; raise max_length or lower max_pixels",
        )
    if train_on_last_step_only and not is_eval:
        labels = [IGNORE_INDEX] * (len(labels) - 1) + labels[-1:]
    step_types = features.get("step_types") or [None] * len(labels)
    weights = features.get("label_weights")
    kept = 0
    for end in [] if prompt_too_long else ends:
        if max_length is not None and end >= max_length:
            break
        if max_completion_length is not None and end - prompt_length >= max_completion_length:
            break
        kept += 1
    if prompt_too_long:
        ids = ids[:max_length]
    else:
        ids = ids[: ends[kept - 1] + 1] if kept else ids[:prompt_length]
    token_labels, token_types = [IGNORE_INDEX] * len(ids), [IGNORE_INDEX] * len(ids)
    token_weights = [0.0] * len(ids)
    for i, (end, label, kind) in enumerate(zip(ends[:kept], labels, step_types)):
        token_labels[end] = label
        token_types[end] = STEP_TYPE_IDS[kind] if label != IGNORE_INDEX else IGNORE_INDEX
        token_weights[end] = float(weights[i]) if weights is not None else 1.0
    num_labels = sum(label != IGNORE_INDEX for label in token_labels)
    out = {
        "input_ids": ids,
        "labels": token_labels,
        "step_type_ids": token_types,
        "num_steps_dropped": sum(label != IGNORE_INDEX for label in labels) - num_labels,
        "prompt_too_long": int(prompt_too_long),
        "num_labels": num_labels,
    }
    if weights is not None:
        out["label_weights"] = token_weights
    mm_types = mm_token_type_ids(processing_class, ids)
    if mm_types is not None:
        out["mm_token_type_ids"] = mm_types
    return out
