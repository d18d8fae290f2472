"""Turn a stepwise-supervision record into token ids with labels at step ends.

Layout of a tokenized row: `prompt_ids + step_1 + sep + step_2 + sep + ...`; the label of step i sits on the last
token of `step_i + sep` and every other position is -100 (TRL's former PRMTrainer convention, so text-only rows
give identical ids and label positions). For a vision-language processor the prompt goes through the chat template
with one image part per image, and each image placeholder is expanded to the number of image tokens the image
processor will produce; the pixels themselves are computed in the collator, so the Arrow cache stays small.

The encoding itself lives in `trl_vlprm.modeling.encoding` (one component for training and every scoring backend,
so a PRM scores exactly the token layout it was trained on); `layout` picks the PRM input layout ("steps" above, the
paper's "multi_turn", or the one-string "text").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trl_vlprm.data.schema import PERCEPTION, RecordError
from trl_vlprm.modeling.encoding import (  # noqa: F401  (re-exported: the trainer's row tokenizer's building blocks)
    EncodedPrompt,
    PRMEncoder,
    PRMLayout,
    encode_prompt,
    encode_steps,
    image_token_counts,
    is_vision_processor,
    prompt_to_messages,
)
from trl_vlprm.modeling.processor import get_tokenizer

IGNORE_INDEX = -100
# Per-token step type, kept beside the labels for loss weighting and per-type metrics.
STEP_TYPE_IDS = {"reasoning": 0, PERCEPTION: 1, None: 2}
STEP_TYPE_NAMES = {0: "reasoning", 1: PERCEPTION, 2: "untyped"}


def tokenize_row(
    features: Mapping[str, Any],
    processing_class: Any,
    step_separator: str = "\n",
    max_length: int | None = None,
    max_completion_length: int | None = None,
    train_on_last_step_only: bool = False,
    is_eval: bool = False,
    row: Any = "?",
    layout: PRMLayout | None = None,
) -> dict[str, Any]:
    """Tokenize one record.

    `layout` (default: the "steps" layout with `step_separator`) picks the PRM input layout; in the multi-turn layout
    the assistant turn after each step shows that step's own label (`+` when >= 0.5), as the paper's training data
    does, and the label sits on the last token of the generation prompt before it.

    Returns:
        `input_ids`, `labels` (float: 0/1 or soft, -100 off step ends), `step_type_ids` (per token, -100 off step
        ends), `mm_token_type_ids` (vision rows), `num_steps_dropped` (trailing steps cut by truncation),
        `num_labels` (labelled positions left).

    Raises:
        RecordError: the prompt alone (with its image tokens) exceeds `max_length`.
    """
    if layout is not None and layout.name != "steps":
        limits = (max_length, max_completion_length, train_on_last_step_only, is_eval)
        return _tokenize_one_string(features, processing_class, layout, *limits, row)
    tokenizer = get_tokenizer(processing_class)
    system_prompt = layout.system_prompt if layout is not None else None
    prompt = encode_prompt(processing_class, features["prompt"], features.get("images") or [], row, system_prompt)
    prompt_ids = prompt.input_ids
    if max_length is not None and len(prompt_ids) > max_length:
        raise RecordError(
            row,
            "prompt",
            f"{len(prompt_ids)} prompt tokens (images included) exceed max_length "
            f"{max_length}; raise max_length or lower max_pixels",
        )
    labels = [float(label) for label in features["labels"]]
    if train_on_last_step_only and not is_eval:
        labels = [IGNORE_INDEX] * (len(labels) - 1) + labels[-1:]
    step_types = features.get("step_types") or [None] * len(labels)

    budget = None if max_length is None else max_length - len(prompt_ids)
    if max_completion_length is not None:
        budget = max_completion_length if budget is None else min(budget, max_completion_length)
    input_ids, token_labels, token_types = list(prompt_ids), [IGNORE_INDEX] * len(prompt_ids), []
    used, kept = 0, 0
    for step_ids, label, kind in zip(
        encode_steps(tokenizer, features["completions"], step_separator), labels, step_types
    ):
        if budget is not None and used + len(step_ids) > budget:
            break  # whole steps only: a cut step would carry a label for text the model never saw
        input_ids += step_ids
        token_labels += [IGNORE_INDEX] * (len(step_ids) - 1) + [label]
        token_types += [IGNORE_INDEX] * (len(step_ids) - 1) + [
            STEP_TYPE_IDS[kind] if label != IGNORE_INDEX else IGNORE_INDEX
        ]
        used += len(step_ids)
        kept += 1
    out = {
        "input_ids": input_ids,
        "labels": token_labels,
        "step_type_ids": [IGNORE_INDEX] * len(prompt_ids) + token_types,
        "num_steps_dropped": len(labels) - kept,
        "num_labels": sum(label != IGNORE_INDEX for label in token_labels),
    }
    if prompt.mm_token_type_ids is not None:
        out["mm_token_type_ids"] = prompt.mm_token_type_ids + [0] * used
    return out


def _tokenize_one_string(
    features: Mapping[str, Any],
    processing_class: Any,
    layout: PRMLayout,
    max_length: int | None,
    max_completion_length: int | None,
    train_on_last_step_only: bool,
    is_eval: bool,
    row: Any,
) -> dict[str, Any]:
    """`tokenize_row` for the one-string layouts ("multi_turn", "text"): same outputs, same whole-step truncation."""
    encoder = PRMEncoder(processing_class, layout)
    labels = [float(label) for label in features["labels"]]
    verdicts = [label >= 0.5 for label in labels]
    prompt, ids, ends = encoder.encode_row(
        features["prompt"], features.get("images") or [], features["completions"], verdicts, row
    )
    prompt_length = len(prompt.input_ids)
    if max_length is not None and prompt_length > max_length:
        raise RecordError(
            row,
            "prompt",
            f"{prompt_length} prompt tokens (images included) exceed max_length "
            f"{max_length}; raise max_length or lower max_pixels",
        )
    if train_on_last_step_only and not is_eval:
        labels = [IGNORE_INDEX] * (len(labels) - 1) + labels[-1:]
    step_types = features.get("step_types") or [None] * len(labels)
    kept = 0  # whole steps only: a step is kept when its score token fits
    for end in ends:
        if max_length is not None and end >= max_length:
            break
        if max_completion_length is not None and end - prompt_length >= max_completion_length:
            break
        kept += 1
    ids = ids[: ends[kept - 1] + 1] if kept else ids[:prompt_length]
    token_labels, token_types = [IGNORE_INDEX] * len(ids), [IGNORE_INDEX] * len(ids)
    for end, label, kind in zip(ends[:kept], labels, step_types):
        token_labels[end] = label
        token_types[end] = STEP_TYPE_IDS[kind] if label != IGNORE_INDEX else IGNORE_INDEX
    out = {
        "input_ids": ids,
        "labels": token_labels,
        "step_type_ids": token_types,
        "num_steps_dropped": len(labels) - kept,
        "num_labels": sum(label != IGNORE_INDEX for label in token_labels),
    }
    if encoder.is_vision:
        image_token_id = processing_class.image_token_id
        out["mm_token_type_ids"] = [1 if token == image_token_id else 0 for token in ids]
    return out


_SPACE = re.compile(r"\s+")


def describe_row(features: Mapping[str, Any]) -> str:
    """A short human-readable id of a row for error messages."""
    return str(features.get("id") or _SPACE.sub(" ", str(features.get("prompt", "")))[:40])
