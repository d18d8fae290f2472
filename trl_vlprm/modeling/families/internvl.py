"""InternVL (the transformers-native `internvl` model type, e.g. OpenGVLab/InternVL3-1B-hf): dynamic tiles.

An image is cut into 1 to `max_patches` tiles by its aspect ratio (plus a thumbnail), each tile `image_seq_length`
`<IMG_CONTEXT>` tokens, the whole framed by `<img>` ... `</img>`. The template writes one `<IMG_CONTEXT>` per image;
the placeholder is expanded as the processor expands it (`replace_image_token` on the image processor's tile
counts), and counted by the processor's `_get_num_multimodal_tokens`. Everything else is the LLaVA-style adapter's:
1-D positions, no multimodal token types, the vision tower under `vision_tower`, the projector outside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trl_vlprm.modeling.families.base import register_model_family
from trl_vlprm.modeling.families.llava import LlavaStyleFamily, expand_as_the_processor_does


@register_model_family
class InternVLFamily(LlavaStyleFamily):
    """InternVL (transformers-native)."""

    name = "internvl"
    model_types = ("internvl",)
    class_name_prefixes = {"InternVL": "internvl"}
    vision_marker_tokens = ("<img>", "</img>")

    def expand_image_tokens(self, processing_class: Any, text: str, images: Sequence[Any], row: Any = "?") -> str:
        return expand_as_the_processor_does(processing_class, text, images, row)
