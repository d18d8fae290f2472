"""The images a page embeds: each once (by content), shrunk to a bounded side, as data URIs.

Results lines reference their question's images (`trl_vlprm.data.references`): a file path, and always a pixel
digest. A reference is resolved from the file when it is there and unchanged, else from the questions the caller
gives (matched by digest); what cannot be found is counted and shown as missing, never silently dropped.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from trl_vlprm.data.references import image_digest
from trl_vlprm.data.schema import RecordError, load_image

# Above this many bytes a PNG thumbnail is re-encoded as JPEG (photographs); diagrams stay lossless.
PNG_BUDGET = 24_000


class ImageTable:
    """Data URIs of the page's images, one entry per distinct image; `add_image` and `resolve` return indices.

    Args:
        max_side: images larger than this (in pixels, either side) are shrunk to fit: the page stays bounded at
            10,000 questions.
        questions: question records whose images resolve references that name no readable file.
    """

    def __init__(self, max_side: int = 256, questions: Iterable[Mapping[str, Any]] | None = None):
        self.max_side = max_side
        self.uris: list[str] = []
        self._index: dict[str, int] = {}
        self._known: dict[str, Any] = {}
        self.missing: list[str] = []
        self.add_questions(questions or [])

    def add_questions(self, questions: Iterable[Mapping[str, Any]]) -> None:
        """Makes the images of `questions` available to `resolve` (matched by digest)."""
        for question in questions:
            for image in question.get("images") or []:
                self._known.setdefault(image_digest(image), image)

    def add_image(self, image: Any, where: str, digest: str | None = None) -> int:
        """The index of `image` (PIL, Arrow cell, path or bytes), encoding it on first sight."""
        key = digest or image_digest(image)
        if key not in self._index:
            try:
                pil = load_image(image, where)
            except RecordError as err:
                raise ValueError(f"{where}: {err.problem}") from None
            self._index[key] = len(self.uris)
            self.uris.append(self._encode(pil))
        return self._index[key]

    def resolve(self, reference: Mapping[str, Any], where: str) -> int | None:
        """The index of the image a results line references, or None (counted in `missing`)."""
        digest = reference.get("digest")
        if digest in self._index:
            return self._index[digest]
        if digest in self._known:
            return self.add_image(self._known[digest], where, digest)
        path = reference.get("path")
        if path and Path(path).is_file():
            return self.add_image(path, where, digest)
        self.missing.append(f"{where}: image {path or digest}")
        return None

    def _encode(self, image) -> str:
        image = image.copy()
        image.thumbnail((self.max_side, self.max_side))
        buffer = io.BytesIO()
        # zlib's default level, not `optimize=True`: on testbed diagrams that search cost 5x the encoding time for
        # files 11% smaller, and encoding was 80% of writing a page of 10,000 questions.
        image.save(buffer, format="PNG", compress_level=6)
        kind = "png"
        if buffer.tell() > PNG_BUDGET:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
            kind = "jpeg"
        return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
