"""The Qwen-VL family: Qwen2-VL and Qwen2.5-VL (`model_type` "qwen2_vl" / "qwen2_5_vl").

Everything Qwen-VL-specific in the library lives here (and in `qwen3_vl.py`, whose families reuse this adapter):

- image-only processors (transformers 5.x's Qwen-VL processors demand a video processor, which needs torchvision) on
  the PIL image processor, reading the upstream checkpoints' `min_pixels` / `max_pixels`;
- image tokens: `patches / merge_size**2` per image, framed by `<|vision_start|>` / `<|vision_end|>`;
- 3-axis rope (temporal, height, width): the backbone's `get_rope_index` places a prefix with images, and text after
  it continues at `max(prefix positions) + 1` on all three axes;
- the vision tower is `visual.*` minus its `merger` (the projector, which trains);
- vLLM's Qwen-VL classifier loads a value head under `language_model.score`.

The value head is made from the model class by `heads.as_token_classification_model`, which also registers the hub
checkpoints' `visual.*` / `model.layers.*` key conversions for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from transformers import PreTrainedTokenizerBase, ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

from trl_vlprm.data.schema import RecordError
from trl_vlprm.modeling.families.base import ModelFamily, register_model_family
from trl_vlprm.modeling.families.image_only import image_only_processor_class

MAX_ASPECT_RATIO = 200  # the Qwen-VL image processors refuse images more elongated than this

ImageOnlyQwen2VLProcessor = image_only_processor_class(Qwen2VLProcessor)
ImageOnlyQwen2_5_VLProcessor = image_only_processor_class(Qwen2_5_VLProcessor)


def _image_processor_kwargs(saved: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of the PIL image processor from a saved `preprocessor_config.json`.

    Upstream Qwen-VL checkpoints give `min_pixels` / `max_pixels` at the top level (older ones inside `size`);
    transformers 5 saves `size: {shortest_edge, longest_edge}`. All three land in the same `size`.
    """
    kwargs = {k: v for k, v in saved.items() if k not in ("image_processor_type", "processor_class", "auto_map")}
    size = dict(kwargs.pop("size", None) or {})
    for old, new in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        if old in size:
            size[new] = size.pop(old)
    if size:
        kwargs["size"] = size
    return kwargs


@register_model_family
class QwenVLFamily(ModelFamily):
    """Qwen2-VL and Qwen2.5-VL."""

    name = "qwen_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    class_name_prefixes = {"Qwen2_5_VL": "qwen2_5_vl", "Qwen2VL": "qwen2_vl"}
    vision_marker_tokens = ("<|vision_start|>", "<|vision_end|>")
    vllm_value_head_renames = {
        "score.weight": "language_model.score.weight",
        "score.bias": "language_model.score.bias",
    }
    vision_tower_description = "vision tower (`visual`)"
    vision_tower_modules = ("visual",)
    projector_modules: ClassVar[tuple[str, ...]] = ("merger",)
    # model type -> the image-only processor class; the image processor's defaults (a model's saved settings win)
    processor_classes: ClassVar[Mapping[str, type]] = {
        "qwen2_vl": ImageOnlyQwen2VLProcessor,
        "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
    }
    image_processor_defaults: ClassVar[Mapping[str, Any]] = {}

    # ---- processing

    def image_processor(
        self, saved: Mapping[str, Any] | None = None, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> Qwen2VLImageProcessorPil:
        if saved is None:
            bounds = {"min_pixels": min_pixels, "max_pixels": max_pixels}
            bounds = {k: v for k, v in bounds.items() if v is not None}
            return Qwen2VLImageProcessorPil(**{**self.image_processor_defaults, **bounds})
        image_processor = Qwen2VLImageProcessorPil(**_image_processor_kwargs(saved))
        if min_pixels is not None:
            image_processor.size["shortest_edge"] = min_pixels
            image_processor.min_pixels = min_pixels
        if max_pixels is not None:
            image_processor.size["longest_edge"] = max_pixels
            image_processor.max_pixels = max_pixels
        return image_processor

    def processor(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        chat_template: str | None,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> ProcessorMixin:
        return self.processor_classes[self.model_type](
            image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template
        )

    # ---- encoding and batching

    def image_token_counts(self, processing_class: Any, images: Sequence[Any], row: Any = "?") -> list[int]:
        image_processor = processing_class.image_processor
        merge = image_processor.merge_size
        counts = []
        for i, image in enumerate(images):
            width, height = image.size
            if max(width, height) / max(min(width, height), 1) > MAX_ASPECT_RATIO:
                raise RecordError(
                    row, f"images[{i}]", f"{width}x{height} image: aspect ratio above {MAX_ASPECT_RATIO}, which "
                    "Qwen-VL image processors refuse; crop or pad it"
                )  # fmt: skip
            patches = image_processor.get_number_of_image_patches(height, width, {})
            counts.append(patches // (merge * merge))
        return counts

    def image_inputs(self, processing_class: Any, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        pixels = processing_class.image_processor(images=list(images), return_tensors="pt")
        return {"pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]}

    # ---- positions

    def prefix_positions(
        self,
        backbone: torch.nn.Module,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor | None,
        image_inputs: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        if "image_grid_thw" not in image_inputs:  # text only: the same position on all three axes
            return torch.arange(input_ids.shape[1], device=input_ids.device)[None][None].expand(3, 1, -1)
        positions, _ = backbone.get_rope_index(
            input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_inputs["image_grid_thw"]
        )
        return positions  # [3, 1, P]

    def text_positions(self, start: int, length: int, batch: int) -> torch.Tensor:
        return super().text_positions(start, length, batch)[None].expand(3, -1, -1)  # text: all three axes alike
