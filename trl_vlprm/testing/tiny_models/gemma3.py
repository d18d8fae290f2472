"""A tiny Gemma 3 (SigLIP vision of 28-pixel images in 14-pixel patches, 4 image tokens per image, Gemma 3 text with
sliding-window and global layers), with the published template's structure and named special tokens."""

from __future__ import annotations

from typing import Any

from transformers import CONFIG_MAPPING, PreTrainedTokenizerBase

from trl_vlprm.testing.tiny_models import TinySpec, register_tiny, text_sizes

# google/gemma-3-4b-it's template structure: turns of `<start_of_turn>role\n...<end_of_turn>\n`, images as
# `<start_of_image>`, the assistant's role written "model".
TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def gemma3_config(tokenizer: PreTrainedTokenizerBase, **sizes: Any):
    text = text_sizes(tokenizer, **sizes)
    text.update(query_pre_attn_scalar=text["head_dim"], sliding_window=512, bos_token_id=tokenizer.bos_token_id)
    vision = {
        "hidden_size": sizes["vision_width"], "intermediate_size": 2 * sizes["vision_width"],
        "num_hidden_layers": sizes["vision_depth"], "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
    }  # fmt: skip
    ids = tokenizer.convert_tokens_to_ids
    return CONFIG_MAPPING["gemma3"](
        text_config=text, vision_config=vision, mm_tokens_per_image=4, tie_word_embeddings=False,
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )  # fmt: skip


register_tiny("gemma3")(TinySpec(
    special_tokens=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                    "<end_of_image>", "<image_soft_token>"),
    eos_token="<end_of_turn>", pad_token="<pad>", bos_token="<bos>", chat_template=TEMPLATE, config=gemma3_config,
    extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                          "image_token": "<image_soft_token>"},
    image_processor_settings={"size": {"height": 28, "width": 28}}, processor_kwargs={"image_seq_length": 4},
    redrawn=("model.multi_modal_projector.mm_input_projection_weight",), hub_ids=("google/gemma-3-4b-it",),
))  # fmt: skip
