"""A tiny InternVL: 56-pixel tiles of 14-pixel patches, pixel-shuffled by 0.5 into 4 tokens a tile, 1 to 4 tiles (plus
a thumbnail when there are several) by the image's aspect ratio; Qwen2 text."""

from __future__ import annotations

from typing import Any

from transformers import CONFIG_MAPPING, PreTrainedTokenizerBase

from trl_vlprm.testing.tiny_models import TinySpec, register_tiny, text_sizes

# OpenGVLab/InternVL3-1B-hf's template structure: Qwen turns, each image as one <IMG_CONTEXT> before the text.
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<IMG_CONTEXT>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def internvl_config(tokenizer: PreTrainedTokenizerBase, **sizes: Any):
    text = text_sizes(tokenizer, **sizes)
    text["model_type"] = "qwen2"
    vision = {
        "hidden_size": sizes["vision_width"], "intermediate_size": 2 * sizes["vision_width"],
        "num_hidden_layers": sizes["vision_depth"], "num_attention_heads": 2, "image_size": [56, 56],
        "patch_size": [14, 14],
    }  # fmt: skip
    return CONFIG_MAPPING["internvl"](
        text_config=text, vision_config=vision, downsample_ratio=0.5, tie_word_embeddings=False,
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=4,
    )  # fmt: skip


register_tiny("internvl")(TinySpec(
    special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
    eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=TEMPLATE, config=internvl_config,
    extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                          "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    image_processor_settings={"size": {"height": 56, "width": 56}, "crop_to_patches": True, "min_patches": 1,
                              "max_patches": 4},
    processor_kwargs={"image_seq_length": 4}, hub_ids=("OpenGVLab/InternVL3-1B-hf",),
))  # fmt: skip
