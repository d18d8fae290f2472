"""What a tiny random model of each model type is built from (tests, demo): its tokenizer's special tokens and chat
template, a shrunk config of the real transformers class, and the file shapes of its published checkpoints.

Test-only by nature, so kept out of the model-family adapters (`trl_vlprm.modeling.families`), which hold only what
the pipeline asks of a real model. One module a family, each registering its model types with `register_tiny`;
`trl_vlprm.testing.tiny.build_tiny_vlm` builds from them and `trl_vlprm.testing.tiny_hub` places the results under
real repo ids.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from trl_vlprm.modeling.families import UnsupportedModelError


@dataclass(frozen=True)
class TinySpec:
    """How to build a tiny random model of one model type.

    Attributes:
        special_tokens: the tokenizer's special tokens (the family's chat-template and image tokens).
        eos_token: the end-of-turn token (generation stops on it).
        pad_token: the padding token.
        bos_token: the begin-of-sequence token, if the family's template writes one.
        extra_special_tokens: named special tokens the processor reads from the tokenizer (Gemma 3's `boi_token`,
            `eoi_token`, `image_token`).
        chat_template: a chat template of the published one's structure (image parts become the image tokens).
        config: `config(tokenizer, hidden_size, num_layers, num_heads, vision_width, vision_depth, initializer_range,
            intermediate_size)` -> the model's config (the real transformers config class, shrunk).
        min_pixels: the image processor's minimum image area of the tiny model.
        max_pixels: its maximum image area (bounds the image tokens a tiny model reads).
        upstream_layout: rewrites a saved tiny folder in place into the published checkpoints' file shapes (None:
            the transformers 5 layout is the published one).
        image_processor_settings: the tiny image processor's settings (None: the family's defaults).
        processor_kwargs: the processor's own settings (e.g. LLaVA's `patch_size`).
        redrawn: parameters the model class initialises to zero that a random tiny model must draw like the rest
            (Gemma 3's image projection: left at zero, every image would reach the language model as zeros).
        hub_ids: published repo ids a tiny model of this type stands for in the tiny hub cache (`tiny_hub`).
    """

    special_tokens: tuple[str, ...]
    eos_token: str
    pad_token: str
    chat_template: str
    config: Callable[..., Any]
    bos_token: str | None = None
    extra_special_tokens: dict[str, str] | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    upstream_layout: Callable[[Path], Path] | None = None
    image_processor_settings: dict[str, Any] | None = None
    processor_kwargs: dict[str, Any] | None = None
    redrawn: tuple[str, ...] = ()
    hub_ids: tuple[str, ...] = field(default=())


TINY_SPECS: dict[str, TinySpec] = {}


def register_tiny(*model_types: str) -> Callable[[TinySpec], TinySpec]:
    """Registers `spec` for each of `model_types` (call it on a spec: `register_tiny("qwen3_vl")(SPEC)`)."""

    def register(spec: TinySpec) -> TinySpec:
        for model_type in model_types:
            TINY_SPECS[model_type] = spec
        return spec

    return register


def get_tiny_spec(model_type: str) -> TinySpec:
    """The tiny-model spec of `model_type`.

    Raises:
        UnsupportedModelError: no tiny model is described for it (the message lists those that are).
    """
    if model_type not in TINY_SPECS:
        raise UnsupportedModelError(
            f"no tiny model of model type {model_type!r}; tiny models exist for {', '.join(sorted(TINY_SPECS))}"
        )
    return TINY_SPECS[model_type]


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def text_sizes(tokenizer: PreTrainedTokenizerBase, **sizes: Any) -> dict[str, Any]:
    """Text-config fields of a tiny model: `sizes` as `tiny_vlm_config` names them, in transformers' field names."""
    hidden, heads = sizes["hidden_size"], sizes["num_heads"]
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"hidden_size={hidden} must split into {heads} heads of an even width")
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": sizes.get("intermediate_size") or 2 * hidden,
        "num_hidden_layers": sizes["num_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "head_dim": hidden // heads,
        "max_position_embeddings": 2048,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
        "initializer_range": sizes["initializer_range"],
    }


for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TINY_SPECS", "TinySpec", "get_tiny_spec", "register_tiny", "text_sizes", "write_json"]
