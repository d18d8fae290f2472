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
- Pan-and-scan (off by default; `do_pan_and_scan` in the image processor settings): a wide or tall image also gets up
  to `pan_and_scan_max_num_crops` crops, each a whole image sequence, after "Here is the original image ... and here
  are some crops to help you see better"; expanded as the processor expands it (`replace_image_token` on the image
  processor's `num_crops`), and counted from `num_crops` (the processor's own count ignores crops). The crops are part
  of the question prefix, so prefix sharing stays exact.
- 1-D positions, the vision tower under `vision_tower`, the projector `multi_modal_projector` outside it: defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import Gemma3ImageProcessorPil, Gemma3Processor, PreTrainedTokenizerBase, ProcessorMixin

from trl_vlprm.data.schema import RecordError
from trl_vlprm.modeling.families.base import ModelFamily, register_model_family
from trl_vlprm.modeling.families.llava import expand_as_the_processor_does

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
        # Published checkpoints save these as null and the processor fills them in at call time; the family calls the
        # image processor directly (token counts, pixels), so it takes the processor's values up front.
        for key, value in Gemma3Processor.images_kwargs.items():
            if settings.get(key) is None:
                settings[key] = value
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

    @staticmethod
    def _pans(processing_class: Any) -> bool:
        return bool(getattr(processing_class.image_processor, "do_pan_and_scan", False))

    def image_token_counts(self, processing_class: Any, images: Sequence[Any], row: Any = "?") -> list[int]:
        if not images or not self._pans(processing_class):
            return [processing_class.image_seq_length] * len(images)
        crops = processing_class.image_processor(images=list(images))["num_crops"]
        return [processing_class.image_seq_length * (1 + int(n)) for n in crops]

    def image_inputs(self, processing_class: Any, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        inputs = super().image_inputs(processing_class, images)
        inputs.pop("num_crops", None)  # the text's image sequences already say it; the model takes no such input
        return inputs

    def image_placeholder(self, processing_class: Any) -> str:
        return processing_class.boi_token

    def expand_image_tokens(self, processing_class: Any, text: str, images: Sequence[Any], row: Any = "?") -> str:
        if self._pans(processing_class):  # the processor's own text around the crops (its image_token is the boi)
            return expand_as_the_processor_does(processing_class, text, images, row)
        pieces = text.split(processing_class.boi_token)
        if len(pieces) - 1 != len(images):
            raise RecordError(
                row, "images", f"{len(images)} image(s) but {len(pieces) - 1} image slot(s) after the chat template"
            )
        return processing_class.full_image_sequence.join(pieces)
