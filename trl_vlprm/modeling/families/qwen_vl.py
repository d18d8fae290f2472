"""The Qwen-VL family: Qwen2-VL and Qwen2.5-VL (`model_type` "qwen2_vl" / "qwen2_5_vl").

Everything Qwen-VL-specific in the library lives here:

- image-only processors (transformers 5.x's Qwen-VL processors demand a video processor, which needs torchvision) on
  the PIL image processor, reading the upstream checkpoints' `min_pixels` / `max_pixels`;
- image tokens: `patches / merge_size**2` per image, framed by `<|vision_start|>` / `<|vision_end|>`;
- 3-axis rope (temporal, height, width): the backbone's `get_rope_index` places a prefix with images, and text after
  it continues at `max(prefix positions) + 1` on all three axes;
- the vision tower is `visual.*` minus its `merger` (the projector, which trains);
- value heads on transformers' generic token-classification mixin (transformers has none for Qwen-VL), registered
  with `AutoModelForTokenClassification`, loading the hub checkpoints' `visual.*` / `model.layers.*` tensor names;
- vLLM's Qwen-VL classifier loads a value head under `language_model.score`;
- a tiny random config, the Qwen-VL special tokens and a chat template of the same structure, for offline tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import (
    AutoModelForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_layers import GenericForTokenClassification
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLPreTrainedModel
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLPreTrainedModel
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

from trl_vlprm.data.schema import RecordError
from trl_vlprm.modeling.families.base import ImageOnlyProcessorMixin, ModelFamily, register_family

MAX_ASPECT_RATIO = 200  # the Qwen-VL image processors refuse images more elongated than this


class ImageOnlyQwen2VLProcessor(ImageOnlyProcessorMixin, Qwen2VLProcessor):
    """`Qwen2VLProcessor` without the video processor (no torchvision needed)."""

    upstream_name = "Qwen2VLProcessor"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(ImageOnlyProcessorMixin, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without the video processor (no torchvision needed)."""

    upstream_name = "Qwen2_5_VLProcessor"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2VLForTokenClassification(GenericForTokenClassification, Qwen2VLPreTrainedModel):
    """Qwen2-VL backbone + per-token classifier (`score`): the value-head VL-PRM."""

    config_class = Qwen2VLConfig


class Qwen2_5_VLForTokenClassification(GenericForTokenClassification, Qwen2_5_VLPreTrainedModel):
    """Qwen2.5-VL backbone + per-token classifier (`score`): the value-head VL-PRM."""

    config_class = Qwen2_5_VLConfig


# model type: (config, image-only processor, value head, generation model)
_CLASSES = {
    "qwen2_vl": (
        Qwen2VLConfig, ImageOnlyQwen2VLProcessor, Qwen2VLForTokenClassification, Qwen2VLForConditionalGeneration
    ),
    "qwen2_5_vl": (
        Qwen2_5_VLConfig, ImageOnlyQwen2_5_VLProcessor, Qwen2_5_VLForTokenClassification,
        Qwen2_5_VLForConditionalGeneration,
    ),
}  # fmt: skip

# Hub Qwen-VL checkpoints store `visual.*` and `model.layers.*`; transformers 5 modules live under
# `model.visual` / `model.language_model`. Same renaming transformers registers for the generation class; a custom
# head class without it would load with its backbone left random.
_LEGACY_KEYS = [
    (r"^visual", "model.visual"),
    (r"^model(?!\.(language_model|visual))", "model.language_model"),
]
for _config, _, _value_head, _ in _CLASSES.values():
    register_checkpoint_conversion_mapping(
        _value_head.__name__, [WeightRenaming(source, target) for source, target in _LEGACY_KEYS], overwrite=True
    )
    AutoModelForTokenClassification.register(_config, _value_head, exist_ok=True)

# Same structure as the Qwen-VL template: image parts become <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


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


@register_family
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

    # ---- processing

    def image_processor(
        self, saved: Mapping[str, Any] | None = None, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> Qwen2VLImageProcessorPil:
        if saved is None:
            bounds = {"min_pixels": min_pixels, "max_pixels": max_pixels}
            return Qwen2VLImageProcessorPil(**{k: v for k, v in bounds.items() if v is not None})
        image_processor = Qwen2VLImageProcessorPil(**_image_processor_kwargs(saved))
        if min_pixels is not None:
            image_processor.size["shortest_edge"] = min_pixels
            image_processor.min_pixels = min_pixels
        if max_pixels is not None:
            image_processor.size["longest_edge"] = max_pixels
            image_processor.max_pixels = max_pixels
        return image_processor

    def processor(
        self, tokenizer: PreTrainedTokenizerBase, image_processor: Any, chat_template: str | None
    ) -> ProcessorMixin:
        processor_class = _CLASSES[self.model_type][1]
        return processor_class(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)

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

    def image_token_total(self, processing_class: Any, image_inputs: Mapping[str, torch.Tensor]) -> int:
        merge = processing_class.image_processor.merge_size
        return int((image_inputs["image_grid_thw"].prod(dim=-1) // (merge * merge)).sum())

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

    # ---- training and heads

    def is_vision_tower_parameter(self, name: str) -> bool:
        return ".visual." in f".{name}" and ".merger." not in name

    def value_head_class(self) -> type[PreTrainedModel]:
        return _CLASSES[self.model_type][2]

    # ---- tiny models

    tiny_special_tokens = (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    )
    tiny_eos_token = "<|im_end|>"
    tiny_pad_token = "<|endoftext|>"
    tiny_chat_template = CHAT_TEMPLATE

    def tiny_model_class(self) -> type[PreTrainedModel]:
        return _CLASSES[self.model_type][3]

    def tiny_config(
        self,
        tokenizer: PreTrainedTokenizerBase,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        vision_width: int = 32,
        vision_depth: int = 2,
        initializer_range: float = 0.02,
        intermediate_size: int | None = None,
    ):
        heads = num_heads
        if hidden_size % heads or (hidden_size // heads) % 2:
            raise ValueError(f"hidden_size={hidden_size} must split into {heads} heads of an even width")
        head_dim = hidden_size // heads
        half = head_dim // 2
        mrope_section = [half - 2 * (half // 3), half // 3, half // 3]  # must sum to head_dim / 2
        text_config = {
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size or 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None,
            "initializer_range": initializer_range,
        }
        if self.model_type == "qwen2_vl":
            vision_config = {"depth": vision_depth, "embed_dim": vision_width, "hidden_size": hidden_size,
                             "num_heads": 2, "mlp_ratio": 2}  # fmt: skip
        else:
            vision_config = {
                "depth": vision_depth,
                "hidden_size": vision_width,
                "intermediate_size": 2 * vision_width,
                "num_heads": 2,
                "out_hidden_size": hidden_size,
                "fullatt_block_indexes": [vision_depth - 1],
                "window_size": 56,
            }
        vision_config["initializer_range"] = initializer_range
        ids = tokenizer.convert_tokens_to_ids
        return _CLASSES[self.model_type][0](
            text_config=text_config,
            vision_config=vision_config,
            initializer_range=initializer_range,
            tie_word_embeddings=False,
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )
