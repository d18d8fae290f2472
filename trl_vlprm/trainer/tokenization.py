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

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trl_vlprm.data.schema import IMAGE_PLACEHOLDER, PERCEPTION, RecordError, load_image
from trl_vlprm.modeling.processor import get_tokenizer

IGNORE_INDEX = -100
# Per-token step type, kept beside the labels for loss weighting and per-type metrics.
STEP_TYPE_IDS = {"reasoning": 0, PERCEPTION: 1, None: 2}
STEP_TYPE_NAMES = {0: "reasoning", 1: PERCEPTION, 2: "untyped"}


def is_vision_processor(processing_class: Any) -> bool:
    return hasattr(processing_class, "image_processor")


def prompt_to_messages(prompt: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for a prompt: a string becomes one user turn; "<image>" placeholders become image parts."""

    def parts(text: str) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i > 0:
                out.append({"type": "image"})
            if chunk:
                out.append({"type": "text", "text": chunk})
        return out

    if isinstance(prompt, str):
        return [{"role": "user", "content": parts(prompt)}]
    messages = []
    for message in prompt:
        content = message["content"]
        if isinstance(content, str):
            content = parts(content)
        messages.append({"role": message["role"], "content": list(content)})
    return messages


MAX_ASPECT_RATIO = 200  # the Qwen-VL image processors refuse images more elongated than this


def image_token_counts(processing_class: Any, images: Sequence[Any], row: Any = "?") -> list[int]:
    """Image tokens each image will occupy after the image processor resizes it (no pixels are computed).

    Raises:
        RecordError: an image more elongated than `MAX_ASPECT_RATIO` (the image processor would refuse it
            without naming the row).
    """
    image_processor = processing_class.image_processor
    merge = image_processor.merge_size
    counts = []
    for i, image in enumerate(images):
        width, height = image.size
        if max(width, height) / max(min(width, height), 1) > MAX_ASPECT_RATIO:
            raise RecordError(
                row, f"images[{i}]", f"{width}x{height} image: aspect ratio above {MAX_ASPECT_RATIO}, which Qwen-VL "
                "image processors refuse; crop or pad it"
            )  # fmt: skip
        patches = image_processor.get_number_of_image_patches(height, width, {})
        counts.append(patches // (merge * merge))
    return counts


@dataclass
class EncodedPrompt:
    """Token ids of a prompt (image placeholders already expanded) and the images it references."""

    input_ids: list[int]
    mm_token_type_ids: list[int] | None
    images: list[Any]


def encode_prompt(
    processing_class: Any, prompt: str | Sequence[Mapping[str, Any]], images: Sequence[Any] = (), row: Any = "?"
) -> EncodedPrompt:
    """Token ids of the prompt part of a row.

    With a plain tokenizer and a string prompt this is TRL's former layout (optional BOS + the raw prompt); chat
    prompts go through the tokenizer's chat template. With a vision processor the chat template is always used and
    each image becomes `<|vision_start|>` + n image tokens + `<|vision_end|>`.
    """
    tokenizer = get_tokenizer(processing_class)
    if not is_vision_processor(processing_class):
        if images:
            raise RecordError(row, "images", "the row has images but the processing class is a text tokenizer")
        if isinstance(prompt, str):
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if tokenizer.bos_token_id is not None:
                ids = [tokenizer.bos_token_id] + ids
        else:
            ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
        return EncodedPrompt(list(ids), None, [])

    pil_images = [load_image(image, row, f"images[{i}]") for i, image in enumerate(images)]
    text = processing_class.apply_chat_template(prompt_to_messages(prompt), add_generation_prompt=True, tokenize=False)
    image_token = processing_class.image_token
    counts = image_token_counts(processing_class, pil_images, row)
    pieces = text.split(image_token)
    if len(pieces) - 1 != len(pil_images):
        raise RecordError(
            row, "images", f"{len(pil_images)} image(s) but {len(pieces) - 1} image slot(s) after the chat template"
        )
    expanded = pieces[0] + "".join(image_token * n + piece for n, piece in zip(counts, pieces[1:]))
    ids = tokenizer(expanded, add_special_tokens=False)["input_ids"]
    image_token_id = processing_class.image_token_id
    mm_types = [1 if token == image_token_id else 0 for token in ids]
    return EncodedPrompt(list(ids), mm_types, pil_images)


def encode_steps(tokenizer: Any, steps: Sequence[str], step_separator: str) -> list[list[int]]:
    """Token ids of each step followed by the separator (tokenized apart, as TRL did: step ends stay aligned)."""
    separator_ids = tokenizer.encode(step_separator, add_special_tokens=False)
    return [tokenizer(step, add_special_tokens=False)["input_ids"] + separator_ids for step in steps]


def label_value(label: Any) -> int | float:
    """A label as TRL stored it: bools (and 0/1 integers) as int, soft labels as float."""
    if isinstance(label, (bool, np.bool_, int, np.integer)):
        return int(label)
    return float(label)


def _check_steps_free_of_vision_tokens(processing_class: Any, steps: Sequence[Sequence[int]], row: Any) -> None:
    # A literal image token in a step would be read as an image slot by the model: name the row instead.
    tokenizer = get_tokenizer(processing_class)
    special = {getattr(processing_class, name, None) for name in ("image_token_id", "video_token_id")}
    special |= {tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")}
    special -= {None, tokenizer.unk_token_id}  # a token the vocabulary lacks maps to unk (or None)
    for i, step_ids in enumerate(steps):
        found = special.intersection(step_ids)
        if found:
            names = ", ".join(sorted(tokenizer.convert_ids_to_tokens(sorted(found))))
            raise RecordError(row, "completions", f"step {i} contains the vision token(s) {names}; remove them")


def tokenize_row(
    features: Mapping[str, Any],
    processing_class: Any,
    step_separator: str = "\n",
    max_length: int | None = None,
    max_completion_length: int | None = None,
    train_on_last_step_only: bool = False,
    is_eval: bool = False,
    row: Any = "?",
    step_truncation: str = "tokens",
    long_prompt: str = "truncate",
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

    Returns:
        `input_ids`, `labels` (int 0/1 for bool labels, float for soft ones, -100 off step ends), `step_type_ids`
        (per token, -100 off step ends), `mm_token_type_ids` (vision rows), `label_weights` (per token, when the
        record has them), `num_steps_dropped` (labelled steps lost to truncation), `prompt_too_long` (0/1) and
        `num_labels` (labelled positions left).

    Raises:
        RecordError: the prompt alone exceeds `max_length` and `long_prompt="error"`; a step holds a vision token.
    """
    tokenizer = get_tokenizer(processing_class)
    prompt = encode_prompt(processing_class, features["prompt"], features.get("images") or [], row)
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
                row, "prompt", f"{len(prompt_ids)} prompt tokens (images included) exceed max_length "
                f"{max_length}; raise max_length or lower max_pixels"
            )  # fmt: skip
        steps = []  # as TRL: nothing of the steps is left, so the row keeps no label

    budget = None if max_length is None else max_length - len(prompt_ids)
    if max_completion_length is not None:
        budget = max_completion_length if budget is None else min(budget, max_completion_length)
    completion_ids, token_labels, token_types, token_weights = [], [], [], []
    for i, (step_ids, label, kind) in enumerate(zip(steps, labels, step_types)):
        if step_truncation == "whole_steps" and budget is not None and len(completion_ids) + len(step_ids) > budget:
            break  # no partial step is left as context without its label
        off = [IGNORE_INDEX] * (len(step_ids) - 1)
        completion_ids += step_ids
        token_labels += off + [label]
        token_types += off + [STEP_TYPE_IDS[kind] if label != IGNORE_INDEX else IGNORE_INDEX]
        token_weights += [0.0] * (len(step_ids) - 1) + [float(weights[i]) if weights is not None else 1.0]
    if budget is not None:  # token truncation exactly as TRL: a step cut before its end loses its label
        completion_ids, token_labels = completion_ids[:budget], token_labels[:budget]
        token_types, token_weights = token_types[:budget], token_weights[:budget]
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


_SPACE = re.compile(r"\s+")


def describe_row(features: Mapping[str, Any]) -> str:
    """A short human-readable id of a row for error messages."""
    return str(features.get("id") or _SPACE.sub(" ", str(features.get("prompt", "")))[:40])
