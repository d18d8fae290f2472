"""The record every stage reads and writes, as data flows data -> labelling -> training -> guidance -> evaluation.

A record is a row of a `datasets.Dataset`. It is a superset of TRL's former *stepwise supervision* format
(`prompt`, `completions`, `labels`), so a text-only TRL dataset is already a valid record set.

| field        | type                                   | needed by                  |
|--------------|----------------------------------------|----------------------------|
| `prompt`     | `str` or chat messages (`list[dict]`)  | all                        |
| `images`     | `list[PIL.Image]` (may be empty)       | all (vision rows)          |
| `completions`| `list[str]`, one string a step         | training, labelling output |
| `labels`     | `list[bool]` or `list[float]` in [0,1] | training                   |
| `step_types` | `list[str]`: "perception"/"reasoning"  | optional                   |
| `label_weights` | `list[float]` >= 0, one a step      | optional: per-step loss weights in training |
| `id`         | `str`                                  | guidance, evaluation       |
| `answer`     | `str`: the gold final answer           | labelling, evaluation      |
| `options`    | `list[str]`: multiple-choice options   | optional                   |
| `category`   | `str`                                  | optional                   |

Images are referenced from the prompt: a string prompt holds one `IMAGE_PLACEHOLDER` ("<image>") per image, in
order; a chat prompt holds one `{"type": "image"}` content part per image. Rows whose prompt is a question
without completions (``completions`` absent or empty) are *question records*: the input of labelling, guidance
and evaluation.
"""

from __future__ import annotations

import base64
import io
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

IMAGE_PLACEHOLDER = "<image>"
PERCEPTION = "perception"
REASONING = "reasoning"
STEP_TYPES = (PERCEPTION, REASONING)
# Option letters: prompts, graders, the answer judge and the paper layouts all letter options with these.
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def option_letter(index: int) -> str:
    """The letter of the option at `index` (0 -> "A"); more than 26 options is an error, not a wrong letter."""
    if not 0 <= index < len(OPTION_LETTERS):
        raise ValueError(f"option {index} has no letter: at most {len(OPTION_LETTERS)} options (A-Z) can be lettered")
    return OPTION_LETTERS[index]


class RecordError(ValueError):
    """A record breaks the schema. The message always names the row and the field."""

    def __init__(self, row: int | str, field: str, problem: str):
        self.row = row
        self.field = field
        self.problem = problem
        super().__init__(f"row {row}: field '{field}': {problem}")


def format_prompt(question: str, options: Sequence[str]) -> str:
    """The prompt of a multiple-choice visual question: image placeholder, question, lettered options.

    Example: `format_prompt("Q?", ["a", "b"])` is `"<image>\nQ?\nOptions: (A) a (B) b"`. The testbed's puzzles and
    the PuzzleVQA loaders both ask in this form.
    """
    lines = [IMAGE_PLACEHOLDER, question.strip()]
    if options:
        lines.append("Options: " + " ".join(f"({option_letter(i)}) {o}" for i, o in enumerate(options)))
    return "\n".join(lines)


def solution_id(question_id: Any, k: int) -> str:
    """The id of a question's `k`-th solution row: `<question id>#<k>`. Every writer of solution rows (the labeller,
    `trl-vlprm puzzles --solutions`, the testbed process bench) uses it, so `question_key` groups them all alike."""
    return f"{question_id}#{k}"


def question_key(record: Mapping[str, Any]) -> str:
    """Solution rows of one question share this key: their `question_id` column (the labeller writes it), else the
    id before "#" (`solution_id`), else the id with the prompt (a row that is its question's only solution)."""
    if record.get("question_id") not in (None, ""):
        return str(record["question_id"])
    row_id = str(record.get("id") or "")
    return row_id.split("#")[0] if "#" in row_id else f"{row_id}|{record.get('prompt')}"


def question_ids(questions: Iterable[Mapping[str, Any]], purpose: str) -> list[str]:
    """The `id` of every question as a string, in order. A run that resumes by id (labelling, test-time scaling, the
    evaluation sweep) would silently skip a question whose id repeats, so a missing or repeated id is a
    `RecordError` naming the row; `purpose` says who needs the ids ("labelling", ...)."""
    ids, seen = [], set()
    for row, question in enumerate(questions):
        qid = question.get("id")
        if qid is None or str(qid) == "":
            raise RecordError(row, "id", f"missing; {purpose} needs an id per question to resume")
        qid = str(qid)
        if qid in seen:
            raise RecordError(row, "id", f"duplicate id {qid!r}")
        seen.add(qid)
        ids.append(qid)
    return ids


def count_image_placeholders(prompt: str | Sequence[Mapping[str, Any]]) -> int:
    """Number of image slots in a prompt (placeholders in a string, image parts in chat messages)."""
    if isinstance(prompt, str):
        return prompt.count(IMAGE_PLACEHOLDER)
    count = 0
    for message in prompt:
        content = message.get("content")
        if isinstance(content, list):
            count += sum(1 for part in content if isinstance(part, Mapping) and part.get("type") == "image")
        elif isinstance(content, str):
            count += content.count(IMAGE_PLACEHOLDER)
    return count


_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit PNGs open as "I;16" (or "I" in places)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of a PIL image in any mode, keeping what the image shows.

    - alpha (`RGBA`, `LA`, `PA`, premultiplied, or `P`/`L`/`RGB` with a transparency key): composited on white,
      so a dark drawing on a transparent background stays visible (a plain `convert("RGB")` paints it on black);
    - 16-bit and 32-bit integer grey (`I;16*`, `I`): scaled from 0-65535 to 0-255 (`convert` clips it at 255, so
      a 16-bit PNG turns almost white);
    - float grey (`F`): read as 0-1 when its maximum is at most 1, else as 0-255, and clipped;
    - every other mode (`1`, `L`, `P`, `CMYK`, `YCbCr`, `LAB`, `HSV`, `RGBX`): PIL's own conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_INTEGER_MODES:
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(image: Any, row: int | str = "?", field: str = "images") -> Image.Image:
    """Turn any image form a dataset may hold (PIL, Arrow `{"bytes", "path"}`, path, bytes) into an RGB PIL image
    (any PIL mode, converted by `to_rgb`: transparency on white, 16-bit grey scaled).

    Raises `RecordError` naming the row and field when the image is missing or cannot be decoded.
    """
    try:
        if isinstance(image, Image.Image):
            image.load()
            return to_rgb(image)
        if isinstance(image, Mapping):
            if image.get("bytes"):
                image = image["bytes"]
            elif image.get("path"):
                image = image["path"]
            else:
                raise ValueError("image has neither bytes nor path")
        if isinstance(image, (bytes, bytearray)):
            try:
                pil = Image.open(io.BytesIO(image))
            except Image.UnidentifiedImageError:  # PIL's message names the BytesIO object's memory address
                raise ValueError(f"{len(image)} bytes in no known image format") from None
        elif isinstance(image, str):
            pil = Image.open(image)
        else:
            raise ValueError(f"unsupported image type {type(image).__name__}")
        pil.load()
        return to_rgb(pil)
    except FileNotFoundError as err:
        raise RecordError(row, field, f"image file not found: {err.filename}") from err
    except RecordError:
        raise
    except Exception as err:  # PIL raises many types for corrupt data
        raise RecordError(row, field, f"image cannot be decoded ({type(err).__name__}: {err})") from err


def image_data_url(image: Any, row: int | str = "?", field: str = "images") -> str:
    """A PNG `data:` URL of any image form a record may hold (`load_image`; errors name the row and field)."""
    buffer = io.BytesIO()
    load_image(image, row, field).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _check_prompt(record: Mapping[str, Any], row: int | str) -> None:
    prompt = record.get("prompt")
    if prompt is None:
        raise RecordError(row, "prompt", "missing")
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, list) or not all(isinstance(m, Mapping) and "role" in m for m in prompt):
        raise RecordError(row, "prompt", "must be a string or a list of chat messages with 'role' and 'content'")


def validate_record(record: Mapping[str, Any], row: int | str = "?", check_images: bool = True) -> None:
    """Check one record against the schema; raise `RecordError` naming the row and field on the first problem.

    Args:
        record: the row.
        row: its index (or id), used in the error message.
        check_images: decode every image (catches corrupt bytes and missing files).
    """
    _check_prompt(record, row)
    images = record.get("images") or []
    if not isinstance(images, (list, tuple)):
        raise RecordError(row, "images", f"must be a list of images, got {type(images).__name__}")
    for i, image in enumerate(images):
        if image is None:
            raise RecordError(row, "images", f"image {i} is missing (None)")
        if check_images:
            load_image(image, row, f"images[{i}]")
    slots = count_image_placeholders(record["prompt"])
    if slots != len(images):
        raise RecordError(row, "images", f"{len(images)} image(s) but {slots} image placeholder(s) in the prompt")

    completions = record.get("completions")
    if completions is None or len(completions) == 0:
        if record.get("labels"):
            raise RecordError(row, "completions", "labels are given but there are no steps")
        return  # a question record
    if not isinstance(completions, (list, tuple)):
        raise RecordError(row, "completions", f"must be a list of step strings, got {type(completions).__name__}")
    for i, step in enumerate(completions):
        if not isinstance(step, str):
            raise RecordError(row, "completions", f"step {i} is {type(step).__name__}, not a string")
        if not step.strip():
            raise RecordError(row, "completions", f"step {i} is empty")

    labels = record.get("labels")
    if labels is None:
        raise RecordError(row, "labels", "missing")
    if len(labels) != len(completions):
        raise RecordError(row, "labels", f"{len(labels)} label(s) for {len(completions)} step(s)")
    for i, label in enumerate(labels):
        if isinstance(label, (bool, np.bool_)):
            continue
        if not isinstance(label, numbers.Real) or math.isnan(label) or not 0.0 <= float(label) <= 1.0:
            raise RecordError(row, "labels", f"label {i} is {label!r}; expected a bool or a float in [0, 1]")

    label_weights = record.get("label_weights")
    if label_weights is not None:
        if len(label_weights) != len(completions):
            raise RecordError(row, "label_weights", f"{len(label_weights)} weight(s) for {len(completions)} step(s)")
        for i, weight in enumerate(label_weights):
            if not isinstance(weight, numbers.Real) or isinstance(weight, bool) or not 0.0 <= float(weight) < math.inf:
                raise RecordError(row, "label_weights", f"weight {i} is {weight!r}; expected a finite number >= 0")

    step_types = record.get("step_types")
    if step_types is not None and len(step_types) > 0:
        if len(step_types) != len(completions):
            raise RecordError(row, "step_types", f"{len(step_types)} step type(s) for {len(completions)} step(s)")
        for i, kind in enumerate(step_types):
            if kind not in STEP_TYPES:
                raise RecordError(row, "step_types", f"step {i} has type {kind!r}; expected one of {STEP_TYPES}")


def validate_dataset(records: Iterable[Mapping[str, Any]], check_images: bool = True) -> int:
    """Validate every record; return how many there were. Stops at the first bad one (its error names the row)."""
    count = 0
    for index, record in enumerate(records):
        validate_record(record, index, check_images=check_images)
        count += 1
    return count


def is_soft(labels: Sequence[Any]) -> bool:
    """True when labels are probabilities rather than booleans (any value other than 0/1/True/False)."""
    return any(not isinstance(x, bool) and float(x) not in (0.0, 1.0) for x in labels)


def question_columns() -> dict[str, Any]:
    """Feature of each column every record has, question or stepwise: id, prompt, images, answer, options, category."""
    from datasets import Image as ImageFeature
    from datasets import List, Value

    return {
        "id": Value("string"),
        "prompt": Value("string"),
        "images": List(ImageFeature()),
        "answer": Value("string"),
        "options": List(Value("string")),
        "category": Value("string"),
    }


def stepwise_features(with_types: bool = True, soft_labels: bool = False):
    """`datasets.Features` of a stepwise-supervision record with a string prompt and an Image feature."""
    from datasets import Features, List, Value

    features = question_columns()
    features["completions"] = List(Value("string"))
    features["labels"] = List(Value("float32") if soft_labels else Value("bool"))
    if with_types:
        features["step_types"] = List(Value("string"))
    return Features(features)


def to_json_string(value: Any) -> str:
    """Deterministic JSON for provenance columns (Arrow has no free-form dict type)."""
    return json.dumps(value, sort_keys=True, default=str)
