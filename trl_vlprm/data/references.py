"""What a results line records of its question, so a reader (`trl-vlprm view`) can show it without guessing.

The tts and evaluation sample files hold one line per question; each line carries `question_reference(question)`:
the prompt as the policy read it, and one reference per image. An image read from a file is referenced by its
path; every image also carries its content digest (`trl_vlprm.utils.resume.stable_digest`: pixels of an image held
in memory, bytes of a dataset cell), so an image without a file (generated puzzles, a cell of bytes) is found again
among the questions a reader is given. The images themselves are not copied: a sweep of 10,000 questions would carry
them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trl_vlprm.utils.resume import stable_digest


def image_reference(image: Any) -> dict[str, Any]:
    """`{"path": ..., "digest": ...}` of one image of a question record (PIL image, Arrow cell, path or bytes); the
    path only when the image comes from a file."""
    path = None
    if isinstance(image, (str, Path)):
        path = str(image)
    elif isinstance(image, Mapping) and image.get("path") and image.get("bytes") is None:
        path = str(image["path"])
    elif getattr(image, "filename", None):  # a PIL image opened from a file
        path = str(image.filename)
    reference: dict[str, Any] = {"digest": image_digest(image)}
    if path is not None:
        reference["path"] = str(Path(path).resolve())
    return reference


def image_digest(image: Any) -> str:
    """The digest an image reference records; equal for equal content in the same form (file, bytes or pixels)."""
    return stable_digest(image)


def question_reference(question: Mapping[str, Any]) -> dict[str, Any]:
    """`{"prompt": ..., "image_refs": [...]}` of a question record, JSON-ready (a chat prompt stays a message list)."""
    return {
        "prompt": _json_prompt(question.get("prompt")),
        "image_refs": [image_reference(image) for image in question.get("images") or []],
    }


def _json_prompt(prompt: Any) -> Any:
    """A string prompt as is; a chat prompt with each content part reduced to its text or its kind (an image part
    may hold the image itself, which is referenced apart)."""
    if prompt is None or isinstance(prompt, str):
        return prompt
    messages = []
    for message in prompt:
        content = message.get("content")
        if not isinstance(content, str):
            content = [
                {"type": "text", "text": str(part.get("text", ""))}
                if part.get("type") == "text"
                else {"type": str(part.get("type"))}
                for part in content or []
            ]
        messages.append({"role": str(message.get("role")), "content": content})
    return messages
