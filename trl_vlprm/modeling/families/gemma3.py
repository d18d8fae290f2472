"""Gemma 3 (`model_type` "gemma3"): SigLIP vision, a fixed number of image tokens per image, bidirectional attention
among an image's tokens.

What differs from a LLaVA-style model, and where it is handled:

- The chat template writes `<start_of_image>`, which the processor replaces by `\\n\\n<start_of_image>` + the image
  soft token `image_seq_length` times + `<end_of_image>\\n\\n` (`expand_image_tokens`); the features replace the soft
  tokens (`image_token_id`), while the processor's own `image_token_id` is the begin-of-image marker.
- The model reads the per-token types as `token_type_ids` (1 on soft tokens): an image's tokens attend to each other
  both ways. A prefix holds whole images, so a prefix forward given those types builds exactly the cache a whole
  forward does (measured: 3e-7 on a tiny model, where dropping the types moves the scores by 9e-5); prefix sharing
  stays on (`exact_prefix_sharing`).
- Pan-and-scan crops (off by default) change the text around each image; they are refused rather than misplaced.
- 1-D positions, the vision tower under `vision_tower`, the projector `multi_modal_projector` outside it: defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import Gemma3ImageProcessorPil, Gemma3Processor, PreTrainedTokenizerBase, ProcessorMixin

from trl_vlprm.data.schema import RecordError
from trl_vlprm.modeling.families.base import ModelFamily, UnsupportedModelError, register_model_family

logger = logging.getLogger(__name__)
_SAVED_ONLY = ("image_processor_type", "processor_class", "auto_map")


@register_model_family
class Gemma3Family(ModelFamily):
    """Gemma 3."""

    name = "gemma3"
    model_types = ("gemma3",)
    class_name_prefixes = {"Gemma3": "gemma3"}
    vision_marker_tokens = ("<start_of_image>", "<end_of_image>")
    token_types_input = "token_type_ids"
    vision_tower_description = "vision tower (`vision_tower`)"

    def image_processor(
        self, saved: Mapping[str, Any] | None = None, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> Gemma3ImageProcessorPil:
        if min_pixels is not None or max_pixels is not None:
            logger.warning(
                "Gemma 3 resizes every image to its image processor's fixed size; min_pixels / max_pixels (the "
                "Qwen-VL image processors' bounds) do not apply and are not used"
            )
        settings = {k: v for k, v in (saved or {}).items() if k not in _SAVED_ONLY}
        if settings.get("do_pan_and_scan"):
            raise UnsupportedModelError(
                "Gemma 3 with do_pan_and_scan: the crops add text around each image that the PRM layouts do not "
                "place; set do_pan_and_scan to false in the image processor settings"
            )
        return Gemma3ImageProcessorPil(**settings)

    def processor(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        chat_template: str | None,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> ProcessorMixin:
        seq_length = (processor_kwargs or {}).get("image_seq_length", 256)
        return Gemma3Processor(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
            image_seq_length=seq_length,
        )  # fmt: skip

    def image_token_id(self, processing_class: Any) -> int:
        return processing_class.tokenizer.image_token_id

    def image_token_counts(self, processing_class: Any, images: Sequence[Any], row: Any = "?") -> list[int]:
        return [processing_class.image_seq_length] * len(images)

    def image_placeholder(self, processing_class: Any) -> str:
        return processing_class.boi_token

    def expand_image_tokens(self, processing_class: Any, text: str, images: Sequence[Any], row: Any = "?") -> str:
        pieces = text.split(processing_class.boi_token)
        if len(pieces) - 1 != len(images):
            raise RecordError(
                row, "images", f"{len(images)} image(s) but {len(pieces) - 1} image slot(s) after the chat template"
            )
        return processing_class.full_image_sequence.join(pieces)
