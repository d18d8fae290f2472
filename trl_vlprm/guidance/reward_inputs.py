"""What a TRL reward call hands `VLPRMReward`, read as questions and texts: the text of a completion, the question
of each row (prompt, images, id), and the key under which the `num_generations` completions of one prompt are
scored together."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any


def is_unicode(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (a lone surrogate, e.g. from a bad byte decode, does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def completion_text(completion: str | Sequence[Mapping[str, Any]]) -> str:
    """The generated text of a TRL completion: a string (standard format) or assistant messages (conversational)."""
    if isinstance(completion, str):
        return completion
    pieces = []
    for message in completion:
        content = message.get("content")
        if isinstance(content, str):
            pieces.append(content)
        elif content:  # structured parts: keep the text ones
            pieces.extend(part.get("text") or "" for part in content if part.get("type") == "text")
    return "".join(pieces)


def _fingerprint(value: Any) -> str:
    # Rows of one group hold equal but distinct image objects (the dataset decodes each repeat anew): compare pixels.
    if hasattr(value, "tobytes") and hasattr(value, "size"):
        digest = hashlib.sha1(value.tobytes()).hexdigest()
        return f"image:{getattr(value, 'mode', '')}:{value.size}:{digest}"
    if isinstance(value, (bytes, bytearray)):
        return "bytes:" + hashlib.sha1(value).hexdigest()
    return repr(value)


def group_key(prompt: Any, images: Any) -> str:
    """A string equal for two rows exactly when their prompts and images are equal (pixels compared by hash)."""
    return json.dumps([prompt, images], sort_keys=True, default=_fingerprint)


def prompt_images(prompt: Any) -> list[Any]:
    """Images carried inside chat messages (`{"type": "image", "image": ...}` parts), in order."""
    if isinstance(prompt, str):
        return []
    return [
        part["image"]
        for message in prompt
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image" and part.get("image") is not None
    ]


def row_questions(
    prompts: Sequence[Any], images: Sequence[Any] | None, columns: Mapping[str, Any], prompt_column: str | None = None
) -> list[dict[str, Any]]:
    """Per row of a reward call, the question as the PRM reads it: id (the `id` column, else the row number), prompt
    (the `prompt_column` column, else the policy's prompt) and images (the `images` column, else TRL's single `image`
    column, else the images inside the chat prompt)."""
    questions = []
    for i, prompt in enumerate(prompts):
        row_images = images[i] if images is not None else None
        if row_images is None and columns.get("image") is not None:  # TRL's single-image column
            row_images = [columns["image"][i]] if columns["image"][i] is not None else []
        if row_images is None:
            row_images = prompt_images(prompt)
        prm_prompt = columns[prompt_column][i] if prompt_column else prompt
        row_id = columns["id"][i] if "id" in columns else i
        questions.append({"id": row_id, "prompt": prm_prompt, "images": list(row_images or [])})
    return questions
