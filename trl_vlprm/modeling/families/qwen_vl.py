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

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
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
from trl_vlprm.modeling.families.base import ImageOnlyProcessorMixin, ModelFamily, register_model_family

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


# Upstream Qwen-VL checkpoints (written by transformers 4.4x) keep the text settings at the top level of
# config.json and store `visual.*` / `model.layers.*` tensors; transformers 5 reads both forms.
_UPSTREAM_KEYS = [(r"^model\.visual\.", "visual."), (r"^model\.language_model\.", "model.")]
_UPSTREAM_PROCESSORS = {
    "qwen2_vl": ("Qwen2VLImageProcessor", "Qwen2VLProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLImageProcessor", "Qwen2_5_VLProcessor"),
}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


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

    def write_upstream_layout(self, folder: Path) -> Path:
        """Rewrite a `build_tiny_vlm` folder in place into the file shapes of the published Qwen-VL checkpoints.

        `config.json` flat (text fields at the top, `rope_scaling: {type: mrope}`), tensors under `visual.*` and
        `model.*`, `preprocessor_config.json` with `min_pixels` / `max_pixels` and the upstream image processor type,
        `chat_template.json`, and a tokenizer saved as `Qwen2Tokenizer` with `vocab.json` / `merges.txt` beside
        `tokenizer.json`: what `huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct` gives, at a tiny size.
        """
        from safetensors.torch import load_file, save_file

        config = json.loads((folder / "config.json").read_text())
        text = config.pop("text_config")
        rope = text.pop("rope_parameters", None) or {}
        for key in (
            "model_type",
            "architectures",
            "dtype",
            "output_attentions",
            "output_hidden_states",
            "return_dict",
        ):
            text.pop(key, None)
        upstream_config = {**text, **config}
        upstream_config["rope_theta"] = rope.get("rope_theta", 10000.0)
        upstream_config["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
        upstream_config["torch_dtype"] = upstream_config.pop("dtype", "float32")
        upstream_config["transformers_version"] = "4.49.0"
        _write_json(folder / "config.json", upstream_config)

        tensors = load_file(str(folder / "model.safetensors"))
        renamed = {}
        for key, tensor in tensors.items():
            for pattern, target in _UPSTREAM_KEYS:
                key = re.sub(pattern, target, key)
            renamed[key] = tensor.contiguous()
        save_file(renamed, str(folder / "model.safetensors"), {"format": "pt"})

        image_type, processor_type = _UPSTREAM_PROCESSORS[self.model_type]
        # transformers 5 nests the image processor settings in processor_config.json
        saved = json.loads((folder / "processor_config.json").read_text())["image_processor"]
        _write_json(
            folder / "preprocessor_config.json",
            {
                "min_pixels": saved["size"]["shortest_edge"],
                "max_pixels": saved["size"]["longest_edge"],
                "patch_size": saved["patch_size"],
                "temporal_patch_size": saved["temporal_patch_size"],
                "merge_size": saved["merge_size"],
                "image_mean": saved["image_mean"],
                "image_std": saved["image_std"],
                "image_processor_type": image_type,
                "processor_class": processor_type,
            },
        )
        template_file = folder / "chat_template.jinja"
        template = template_file.read_text() if template_file.exists() else self.tiny_chat_template
        _write_json(folder / "chat_template.json", {"chat_template": template})
        for name in ("chat_template.jinja", "processor_config.json"):
            (folder / name).unlink(missing_ok=True)

        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        tokenizer_config.update(
            tokenizer_class="Qwen2Tokenizer", chat_template=template, processor_class=processor_type
        )
        _write_json(folder / "tokenizer_config.json", tokenizer_config)
        # Qwen2Tokenizer imposes Qwen's normaliser and pre-tokeniser; tokenizer.json is re-saved with them, as
        # upstream's holds them, so readers of tokenizer.json alone (vLLM, older transformers) tokenize the same way.
        AutoTokenizer.from_pretrained(folder).backend_tokenizer.save(str(folder / "tokenizer.json"))
        bpe = json.loads((folder / "tokenizer.json").read_text())["model"]
        _write_json(folder / "vocab.json", bpe["vocab"])
        merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return folder
