"""Tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL (dense, MoE) and Qwen3.5 (dense, MoE) models, in their published file shapes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from transformers import CONFIG_MAPPING, AutoTokenizer, PreTrainedTokenizerBase

from trl_vlprm.testing.tiny_models import TinySpec, register_tiny, text_sizes, write_json

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

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


def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2
    return [half - 2 * (half // 3), half // 3, half // 3]  # must sum to head_dim / 2


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def qwen2_vl_config(model_type: str, tokenizer: PreTrainedTokenizerBase, **sizes: Any):
    """Qwen2-VL / Qwen2.5-VL: text width `hidden_size`, a vision tower of `vision_depth` blocks merging into it."""
    text = text_sizes(tokenizer, **sizes)
    text.pop("head_dim")
    head_dim = sizes["hidden_size"] // sizes["num_heads"]
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": _mrope_section(head_dim),
    }
    width, depth = sizes["vision_width"], sizes["vision_depth"]
    if model_type == "qwen2_vl":
        vision = {
            "depth": depth,
            "embed_dim": width,
            "hidden_size": sizes["hidden_size"],
            "num_heads": 2,
            "mlp_ratio": 2,
        }
    else:
        vision = {
            "depth": depth,
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_heads": 2,
            "out_hidden_size": sizes["hidden_size"],
            "fullatt_block_indexes": [depth - 1],
            "window_size": 56,
        }
    vision["initializer_range"] = sizes["initializer_range"]
    return CONFIG_MAPPING[model_type](
        text_config=text, vision_config=vision, initializer_range=sizes["initializer_range"],
        tie_word_embeddings=False, **_token_ids(tokenizer),
    )  # fmt: skip


def qwen3_vl_config(model_type: str, tokenizer: PreTrainedTokenizerBase, **sizes: Any):
    """Qwen3-VL (deepstack after every vision block), Qwen3-VL-MoE (4 experts, 2 active), Qwen3.5 (one Gated
    DeltaNet linear-attention layer before each full-attention one) and Qwen3.5-MoE, all with interleaved M-RoPE."""
    text = text_sizes(tokenizer, **sizes)
    head_dim = text["head_dim"]
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True}
    if model_type.startswith("qwen3_5"):
        rope.update(partial_rotary_factor=0.5, mrope_section=_mrope_section(head_dim // 2))  # rope on half the dims
        text.update(
            layer_types=["linear_attention", "full_attention"] * max(1, sizes["num_layers"] // 2),
            linear_num_value_heads=sizes["num_heads"], linear_num_key_heads=max(1, sizes["num_heads"] // 2),
            linear_key_head_dim=head_dim // 2, linear_value_head_dim=head_dim // 2,
        )  # fmt: skip
        text["num_hidden_layers"] = len(text["layer_types"])
    else:
        rope["mrope_section"] = _mrope_section(head_dim)
    text["rope_parameters"] = rope
    if model_type.endswith("_moe"):
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=sizes["hidden_size"] // 2)
        if model_type == "qwen3_5_moe":
            text.update(shared_expert_intermediate_size=sizes["hidden_size"] // 2)
    width, depth = sizes["vision_width"], sizes["vision_depth"]
    vision = {"depth": depth, "hidden_size": width, "intermediate_size": 2 * width, "num_heads": 2,
              "out_hidden_size": sizes["hidden_size"], "num_position_embeddings": 144,
              "initializer_range": sizes["initializer_range"]}  # fmt: skip
    if model_type.startswith("qwen3_vl"):
        vision["deepstack_visual_indexes"] = list(range(depth))
    return CONFIG_MAPPING[model_type](
        text_config=text, vision_config=vision, tie_word_embeddings=False, **_token_ids(tokenizer)
    )


# Upstream Qwen2/2.5-VL checkpoints (written by transformers 4.4x) keep the text settings at the top level of
# config.json and store `visual.*` / `model.layers.*` tensors; transformers 5 reads both forms. Qwen3-VL and Qwen3.5
# were published with transformers >= 4.57: nested configs and tensors as transformers 5 names them.
_UPSTREAM_KEYS = [(r"^model\.visual\.", "visual."), (r"^model\.language_model\.", "model.")]
_UPSTREAM_PROCESSORS = {  # model type: (image processor type, processor class, transformers version)
    "qwen2_vl": ("Qwen2VLImageProcessor", "Qwen2VLProcessor", "4.49.0"),
    "qwen2_5_vl": ("Qwen2_5_VLImageProcessor", "Qwen2_5_VLProcessor", "4.49.0"),
    "qwen3_vl": ("Qwen2VLImageProcessorFast", "Qwen3VLProcessor", "4.57.0.dev0"),
    "qwen3_vl_moe": ("Qwen2VLImageProcessorFast", "Qwen3VLProcessor", "4.57.0.dev0"),
    "qwen3_5": ("Qwen2VLImageProcessorFast", "Qwen3VLProcessor", "4.57.0.dev0"),
    "qwen3_5_moe": ("Qwen2VLImageProcessorFast", "Qwen3VLProcessor", "4.57.0.dev0"),
}
_DROPPED_TEXT_KEYS = (
    "model_type",
    "architectures",
    "dtype",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
)


def _upstream_config(folder: Path) -> tuple[str, str]:
    config = json.loads((folder / "config.json").read_text())
    model_type = config["model_type"]
    text = config["text_config"]
    rope = text.pop("rope_parameters", None) or {}
    rope_scaling = {"type": "mrope", **{k: v for k, v in rope.items() if k not in ("rope_theta", "rope_type")}}
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        config.pop("text_config")
        for key in _DROPPED_TEXT_KEYS:
            text.pop(key, None)
        config = {**text, **config, "rope_theta": rope.get("rope_theta", 10000.0), "rope_scaling": rope_scaling}
    else:
        rope_scaling = {"rope_type": "default", **{k: v for k, v in rope_scaling.items() if k != "type"}}
        text.update(rope_theta=rope.get("rope_theta", 10000.0), rope_scaling=rope_scaling)
    config["torch_dtype"] = config.pop("dtype", "float32")
    config["transformers_version"] = _UPSTREAM_PROCESSORS[model_type][2]
    write_json(folder / "config.json", config)
    return model_type, config.get("architectures", [""])[0]


def write_upstream_layout(folder: Path) -> Path:
    """Rewrite a `build_tiny_vlm` folder of the Qwen-VL families in place into their published checkpoints' shapes.

    `config.json` (Qwen2/2.5-VL: flat, text fields at the top, `rope_scaling: {type: mrope}`; Qwen3: nested with
    `rope_scaling` in `text_config`), Qwen2/2.5-VL tensors under `visual.*` and `model.*`, `preprocessor_config.json`
    with the upstream image processor type (`min_pixels` / `max_pixels` for Qwen2/2.5-VL, `size` for Qwen3),
    `chat_template.json`, and a tokenizer saved as `Qwen2Tokenizer` with `vocab.json` / `merges.txt` beside
    `tokenizer.json`: what `hf download Qwen/Qwen2.5-VL-3B-Instruct` (or `Qwen/Qwen3-VL-2B-Instruct`) gives, tiny.
    """
    from safetensors.torch import load_file, save_file

    model_type, _ = _upstream_config(folder)
    legacy = model_type in ("qwen2_vl", "qwen2_5_vl")
    if legacy:
        tensors = load_file(str(folder / "model.safetensors"))
        renamed = {}
        for key, tensor in tensors.items():
            for pattern, target in _UPSTREAM_KEYS:
                key = re.sub(pattern, target, key)
            renamed[key] = tensor.contiguous()
        save_file(renamed, str(folder / "model.safetensors"), {"format": "pt"})

    image_type, processor_type, _ = _UPSTREAM_PROCESSORS[model_type]
    # transformers 5 nests the image processor settings in processor_config.json
    saved = json.loads((folder / "processor_config.json").read_text())["image_processor"]
    size = {"shortest_edge": saved["size"]["shortest_edge"], "longest_edge": saved["size"]["longest_edge"]}
    bounds = {"min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]} if legacy else {"size": size}
    write_json(
        folder / "preprocessor_config.json",
        {
            **bounds,
            **{
                key: saved[key]
                for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
            },
            "image_processor_type": image_type,
            "processor_class": processor_type,
        },
    )
    template_file = folder / "chat_template.jinja"
    template = template_file.read_text() if template_file.exists() else CHAT_TEMPLATE
    write_json(folder / "chat_template.json", {"chat_template": template})
    for name in ("chat_template.jinja", "processor_config.json"):
        (folder / name).unlink(missing_ok=True)

    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.update(tokenizer_class="Qwen2Tokenizer", chat_template=template, processor_class=processor_type)
    write_json(folder / "tokenizer_config.json", tokenizer_config)
    # Qwen2Tokenizer imposes Qwen's normaliser and pre-tokeniser; tokenizer.json is re-saved with them, as
    # upstream's holds them, so readers of tokenizer.json alone (vLLM, older transformers) tokenize the same way.
    AutoTokenizer.from_pretrained(folder).backend_tokenizer.save(str(folder / "tokenizer.json"))
    bpe = json.loads((folder / "tokenizer.json").read_text())["model"]
    write_json(folder / "vocab.json", bpe["vocab"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def _spec(config, min_pixels: int, max_pixels: int, hub_ids: tuple[str, ...] = ()) -> TinySpec:
    return TinySpec(
        special_tokens=SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE,
        config=config, min_pixels=min_pixels, max_pixels=max_pixels, upstream_layout=write_upstream_layout,
        hub_ids=hub_ids,
    )  # fmt: skip


for _type in ("qwen2_vl", "qwen2_5_vl"):  # 28-pixel tokens: 56x56 .. 112x112 -> 4 .. 16 image tokens
    register_tiny(_type)(
        _spec(lambda tokenizer, _t=_type, **s: qwen2_vl_config(_t, tokenizer, **s), 56 * 56, 112 * 112)
    )
# 32-pixel tokens: 64x64 .. 128x128 -> 4 .. 16 image tokens. Repo ids from transformers' model pages.
_QWEN3_IDS = {
    "qwen3_vl": ("Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"),
    "qwen3_vl_moe": ("Qwen/Qwen3-VL-30B-A3B-Instruct",),
    "qwen3_5": ("Qwen/Qwen3.5-27B",),
    "qwen3_5_moe": ("Qwen/Qwen3.5-35B-A3B",),
}
for _type, _ids in _QWEN3_IDS.items():
    register_tiny(_type)(
        _spec(lambda tokenizer, _t=_type, **s: qwen3_vl_config(_t, tokenizer, **s), 64 * 64, 128 * 128, _ids)
    )
