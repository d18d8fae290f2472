"""Tiny LLaVA (CLIP vision, Llama text), LLaVA-NeXT (any-resolution tiles, `image_sizes`) and LLaVA-OneVision
(SigLIP vision, Qwen2 text) models, in the llava-hf checkpoints' file shapes; and VipLLaVA (several vision layers'
features), a type only the generic adapter serves.

28-pixel images of 14-pixel patches: a LLaVA image is 4 tokens; LLaVA-NeXT / OneVision add the tiles of the best of
four grid pinpoints (up to 56x56), so their token count depends on the image size, as the real ones do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from transformers import CONFIG_MAPPING, PreTrainedTokenizerBase

from trl_vlprm.testing.tiny_models import TinySpec, register_tiny, text_sizes, write_json

# llava-hf/llava-1.5-7b-hf's template structure ("USER: <image>\n... ASSISTANT:"), reading string content as well.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if message['role'] == 'assistant' %}</s>{% else %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# llava-hf/llava-onevision-qwen2-*-ov-hf's template structure (Qwen's turns, "<image>\n" before the text).
ONEVISION_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# llava-hf/vip-llava-7b-hf's template structure ("###Human: <image>\n...###Assistant:").
VIPLLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}###Human: "
    "{% elif message['role'] == 'assistant' %}###Assistant: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}###Assistant:{% endif %}"
)
PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]


def llava_config(model_type: str, tokenizer: PreTrainedTokenizerBase, **sizes: Any):
    text = text_sizes(tokenizer, **sizes)
    text["model_type"] = "qwen2" if model_type == "llava_onevision" else "llama"
    vision = {
        "model_type": "siglip_vision_model" if model_type == "llava_onevision" else "clip_vision_model",
        "hidden_size": sizes["vision_width"], "intermediate_size": 2 * sizes["vision_width"],
        "num_hidden_layers": sizes["vision_depth"], "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
    }  # fmt: skip
    extra: dict[str, Any] = {} if model_type in ("llava", "vipllava") else {"image_grid_pinpoints": PINPOINTS}
    if model_type == "vipllava":  # features of several vision layers, concatenated (2 of the tiny tower's 3 states)
        extra["vision_feature_layers"] = [-2, -1]
    if model_type == "llava_onevision":
        extra["video_token_id"] = tokenizer.convert_tokens_to_ids("<video>")
    return CONFIG_MAPPING[model_type](
        text_config=text, vision_config=vision, tie_word_embeddings=False,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), **extra,
    )  # fmt: skip


# transformers 5 names -> the names in llava-hf checkpoints written before transformers 4.52
_UPSTREAM_KEYS = [
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^model\.(vision_tower|multi_modal_projector|image_newline)", r"\1"),
]
_UPSTREAM_TYPES = {  # model type: (image processor type, processor class)
    "llava": ("CLIPImageProcessor", "LlavaProcessor"),
    "llava_next": ("LlavaNextImageProcessor", "LlavaNextProcessor"),
    "llava_onevision": ("LlavaOnevisionImageProcessor", "LlavaOnevisionProcessor"),
}


def write_upstream_layout(folder: Path) -> Path:
    """A `build_tiny_vlm` folder rewritten as a llava-hf download: tensors under `language_model.model.*`,
    `vision_tower.*`, `multi_modal_projector.*`; `image_token_index` in config.json; `preprocessor_config.json`
    (LLaVA's is a `CLIPImageProcessor`), `processor_config.json` with the processor's settings and
    `chat_template.json`."""
    from safetensors.torch import load_file, save_file

    config = json.loads((folder / "config.json").read_text())
    if "image_token_id" in config:
        config["image_token_index"] = config.pop("image_token_id")
    config["torch_dtype"] = config.pop("dtype", "float32")
    config["transformers_version"] = "4.45.0"
    write_json(folder / "config.json", config)
    renamed = {}
    for key, tensor in load_file(str(folder / "model.safetensors")).items():
        for pattern, target in _UPSTREAM_KEYS:
            key = re.sub(pattern, target, key)
        renamed[key] = tensor.contiguous()
    save_file(renamed, str(folder / "model.safetensors"), {"format": "pt"})
    image_type, processor_type = _UPSTREAM_TYPES[config["model_type"]]
    processor_config = json.loads((folder / "processor_config.json").read_text())
    image_settings = processor_config.pop("image_processor")
    image_settings.update(image_processor_type=image_type, processor_class=processor_type)
    write_json(folder / "preprocessor_config.json", image_settings)
    write_json(folder / "processor_config.json", {**processor_config, "processor_class": processor_type})
    template_file = folder / "chat_template.jinja"
    write_json(folder / "chat_template.json", {"chat_template": template_file.read_text()})
    template_file.unlink()
    return folder


_SPECIAL = ("<s>", "</s>", "<pad>", "<image>")
_IMAGE_28 = {"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}}
register_tiny("llava")(TinySpec(
    special_tokens=_SPECIAL, eos_token="</s>", pad_token="<pad>", chat_template=LLAVA_TEMPLATE,
    config=lambda tokenizer, **s: llava_config("llava", tokenizer, **s), upstream_layout=write_upstream_layout,
    image_processor_settings=_IMAGE_28, hub_ids=("llava-hf/llava-1.5-7b-hf",),
    processor_kwargs={"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
))  # fmt: skip
register_tiny("llava_next")(TinySpec(
    special_tokens=_SPECIAL, eos_token="</s>", pad_token="<pad>", chat_template=LLAVA_TEMPLATE,
    config=lambda tokenizer, **s: llava_config("llava_next", tokenizer, **s), upstream_layout=write_upstream_layout,
    image_processor_settings={**_IMAGE_28, "image_grid_pinpoints": PINPOINTS},
    hub_ids=("llava-hf/llava-v1.6-mistral-7b-hf",),
    processor_kwargs={"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
))  # fmt: skip
register_tiny("llava_onevision")(TinySpec(
    special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"), eos_token="<|im_end|>",
    pad_token="<|endoftext|>", chat_template=ONEVISION_TEMPLATE,
    config=lambda tokenizer, **s: llava_config("llava_onevision", tokenizer, **s),
    upstream_layout=write_upstream_layout,
    image_processor_settings={"size": {"height": 28, "width": 28}, "image_grid_pinpoints": PINPOINTS},
    hub_ids=("llava-hf/llava-onevision-qwen2-0.5b-ov-hf",),
    processor_kwargs={"num_image_tokens": 4, "vision_feature_select_strategy": "full"},
))  # fmt: skip
# VipLLaVA: no family registers it; the generic LLaVA-style adapter serves it (tests/test_model_matrix.py `[generic]`).
register_tiny("vipllava")(TinySpec(
    special_tokens=_SPECIAL, eos_token="</s>", pad_token="<pad>", chat_template=VIPLLAVA_TEMPLATE,
    config=lambda tokenizer, **s: llava_config("vipllava", tokenizer, **s), image_processor_settings=_IMAGE_28,
    processor_kwargs={"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
))  # fmt: skip
