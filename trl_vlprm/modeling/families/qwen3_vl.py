"""Qwen3-VL and Qwen3.5 (dense and MoE): one family, the Qwen-VL adapter with their processor and image sizes.

What differs from Qwen2.5-VL, and where it is handled:

- 16-pixel patches (32 pixels a token after the 2x2 merge) and 0.5 mean/std normalisation: the image processor's
  defaults here; a checkpoint's saved `preprocessor_config.json` gives them anyway.
- One processor class for all four model types (`Qwen3VLProcessor`), image-only here (its video processor needs
  torchvision); a live processor therefore reads as the family's first model type, which processes alike.
- Qwen3-VL's deepstack: the vision tower's intermediate features are added to the hidden states of the first text
  layers at the image tokens. Those tokens all lie in the question prefix, so a prefix forward builds exactly the
  cache a whole forward does; its per-layer projectors (`deepstack_merger_list`) train with the language model.
- Qwen3.5's hybrid text stack (Gated DeltaNet linear-attention layers between full-attention ones): the prefix cache
  holds recurrent states as well as keys and values; the scorer copies whatever the cache holds, so prefix sharing
  stays exact.
- Positions: interleaved 3-axis M-RoPE, computed by the backbone's `get_rope_index` as for Qwen2-VL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from trl_vlprm.modeling.families.base import register_model_family
from trl_vlprm.modeling.families.image_only import image_only_processor_class
from trl_vlprm.modeling.families.qwen_vl import QwenVLFamily

ImageOnlyQwen3VLProcessor = image_only_processor_class(Qwen3VLProcessor)


@register_model_family
class Qwen3VLFamily(QwenVLFamily):
    """Qwen3-VL, Qwen3-VL-MoE, Qwen3.5 and Qwen3.5-MoE: one processor class, one position scheme, one weight layout."""

    name = "qwen3_vl"
    model_types = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
    class_name_prefixes = {"Qwen3VL": "qwen3_vl"}
    projector_modules: ClassVar[tuple[str, ...]] = ("merger", "deepstack_merger_list")
    processor_classes: ClassVar[Mapping[str, type]] = dict.fromkeys(model_types, ImageOnlyQwen3VLProcessor)
    image_processor_defaults: ClassVar[Mapping[str, Any]] = {
        "patch_size": 16,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
