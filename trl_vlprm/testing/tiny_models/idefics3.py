"""A tiny Idefics3 / SmolVLM model: 56-pixel tiles of 14-pixel patches, pixel-shuffled by 2 into 4 tokens a tile;
images up to 112 pixels a side, so a 2x2 grid of tiles plus the global view (20 image tokens) for most images."""

from __future__ import annotations

from typing import Any

from transformers import CONFIG_MAPPING, PreTrainedTokenizerBase

from trl_vlprm.testing.tiny_models import TinySpec, register_tiny, text_sizes

# HuggingFaceTB/SmolVLM-Instruct's template structure: "User:<image>...<end_of_utterance>\nAssistant:".
TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
TILE_TOKENS = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))


def idefics3_config(model_type: str, tokenizer: PreTrainedTokenizerBase, **sizes: Any):
    text = text_sizes(tokenizer, **sizes)
    text["model_type"] = "llama"
    vision = {
        "hidden_size": sizes["vision_width"], "intermediate_size": 2 * sizes["vision_width"],
        "num_hidden_layers": sizes["vision_depth"], "num_attention_heads": 2, "image_size": 56, "patch_size": 14,
    }  # fmt: skip
    return CONFIG_MAPPING[model_type](
        text_config=text, vision_config=vision, scale_factor=2, tie_word_embeddings=False,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip


# HuggingFaceTB/SmolVLM2-*'s template structure: "<|im_start|>User:<image>...<end_of_utterance>\nAssistant:".
SMOLVLM2_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)

# SmolVLM (v1, 256M / 500M) checkpoints are of type idefics3; SmolVLM2 has its own type, whose processor also needs
# the `num2words` package (a dependency of this project).
for _type, _repos, _bos, _template in (
    ("idefics3", ("HuggingFaceM4/Idefics3-8B-Llama3", "HuggingFaceTB/SmolVLM-256M-Instruct",
                  "HuggingFaceTB/SmolVLM-500M-Instruct"), "<|begin_of_text|>", TEMPLATE),
    ("smolvlm", ("HuggingFaceTB/SmolVLM2-256M-Video-Instruct", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
                 "HuggingFaceTB/SmolVLM2-2.2B-Instruct"), "<|im_start|>", SMOLVLM2_TEMPLATE),
):  # fmt: skip
    register_tiny(_type)(TinySpec(
        special_tokens=(_bos, "<pad>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                        "<global-img>", *TILE_TOKENS),
        eos_token="<end_of_utterance>", pad_token="<pad>", bos_token=_bos, chat_template=_template,
        config=lambda tokenizer, _t=_type, **s: idefics3_config(_t, tokenizer, **s),
        image_processor_settings={"size": {"longest_edge": 112}, "max_image_size": {"longest_edge": 56}},
        processor_kwargs={"image_seq_len": 4}, hub_ids=_repos,
    ))  # fmt: skip
