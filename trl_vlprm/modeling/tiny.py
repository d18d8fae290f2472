"""Build tiny random Qwen2-VL / Qwen2.5-VL checkpoints (and a tiny text LM) on disk, offline, in seconds.

Tests and the demo never touch a model hub: they build a folder with a byte-level BPE tokenizer trained on a little
text, the Qwen-VL special tokens and chat template, an image-only processor, and a ~0.3 M-parameter model. The
folder has the same layout as a real checkpoint, so everything downstream (`load_prm`, `load_processor`,
`recipes/train.py --model_name_or_path`) treats it like one. `trl_vlprm.modeling.tiny_hub` puts such folders into a
Hugging Face cache under real repo ids, so everything also loads by id, offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2ForTokenClassification,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from trl_vlprm.modeling.processor import build_processor

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

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

_CORPUS = [
    "The image shows a grid of coloured squares: red, green, blue, yellow, purple, orange, black, white.",
    "There are 3 circles, 4 triangles and 5 squares. The shapes are small, medium and large.",
    "Count the objects. The clock shows 3 o'clock; add 4 hours to get 7 o'clock.",
    "Step 1: read the image. Step 2: find the pattern. Step 3: the answer is (A) (B) (C) (D).",
    "The polygon has 6 sides. A hexagon has 6 sides, a pentagon 5, a square 4, a triangle 3.",
    "Which number is missing? 1 + 2 = 3, 2 * 3 = 6, 9 - 4 = 5, 12 / 4 = 3. Answer: 8. 0 1 2 3 4 5 6 7 8 9",
    "What is the colour of the missing part? The pattern repeats in every row and column.",
    "Let us think step by step. Therefore the answer is B. + - ? = ( ) [ ] , . : ;",
]


def build_tiny_tokenizer(vocab_size: int = 640, extra_corpus: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the Qwen-VL special tokens and chat template, trained on a built-in corpus.

    Byte-level, so every string encodes (no unknown tokens); deterministic, so two builds are identical.
    `extra_corpus` (e.g. `trl_vlprm.testbed.testbed_corpus()`) is added to the training text, so its frequent
    words become whole tokens given a large enough `vocab_size`.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4 + list(extra_corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
    )
    fast.padding_side = "right"
    return fast


def _vision_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def tiny_vlm_config(
    arch: str,
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vision_width: int = 32,
    vision_depth: int = 2,
    initializer_range: float = 0.02,
    intermediate_size: int | None = None,
):
    """Config of a tiny Qwen-VL: `num_layers` text layers of width `hidden_size` with `num_heads` heads (half as
    many key/value heads), and a vision tower of `vision_depth` blocks of width `vision_width`; weights are drawn
    with standard deviation `initializer_range`; the text MLP is `intermediate_size` wide (default
    `2 * hidden_size`)."""
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
    if arch == "qwen2_vl":
        vision_config = {"depth": vision_depth, "embed_dim": vision_width, "hidden_size": hidden_size, "num_heads": 2,
                         "mlp_ratio": 2}  # fmt: skip
        config_class = Qwen2VLConfig
    elif arch == "qwen2_5_vl":
        vision_config = {
            "depth": vision_depth,
            "hidden_size": vision_width,
            "intermediate_size": 2 * vision_width,
            "num_heads": 2,
            "out_hidden_size": hidden_size,
            "fullatt_block_indexes": [vision_depth - 1],
            "window_size": 56,
        }
        config_class = Qwen2_5_VLConfig
    else:
        raise ValueError(f"unknown arch {arch!r}; expected 'qwen2_vl' or 'qwen2_5_vl'")
    vision_config["initializer_range"] = initializer_range
    return config_class(
        text_config=text_config,
        vision_config=vision_config,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        **_vision_token_ids(tokenizer),
    )


def build_tiny_vlm(
    output_dir: str | Path,
    arch: str = "qwen2_vl",
    seed: int = 0,
    hidden_size: int = 64,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    num_layers: int = 2,
    num_heads: int = 4,
    vision_width: int = 32,
    vision_depth: int = 2,
    vocab_size: int = 640,
    extra_corpus: Sequence[str] = (),
    initializer_range: float = 0.02,
    intermediate_size: int | None = None,
) -> Path:
    """Write a tiny random Qwen-VL checkpoint (model, tokenizer, image-only processor) to `output_dir`.

    Args:
        output_dir: folder to write (created).
        arch: "qwen2_vl" or "qwen2_5_vl".
        seed: torch seed for the random weights (same seed, same weights).
        hidden_size: text width; the vision tower projects to it.
        min_pixels: image processor's minimum area; with `max_pixels` it bounds image tokens (112x112 -> 16 tokens).
        max_pixels: image processor's maximum area.
        num_layers: text transformer layers.
        num_heads: text attention heads (key/value heads: half as many).
        vision_width: width of the vision blocks (the merger projects to `hidden_size`).
        vision_depth: vision blocks.
        vocab_size: tokenizer vocabulary size (byte alphabet and special tokens included).
        extra_corpus: more tokenizer training text (`trl_vlprm.testbed.testbed_corpus()` gives the testbed's
            words whole tokens).
        initializer_range: standard deviation of the random weights.
        intermediate_size: width of the text MLP (default `2 * hidden_size`).

    Returns:
        The folder, loadable with `Qwen2VLForConditionalGeneration.from_pretrained`, `load_prm` and `load_processor`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(vocab_size, extra_corpus)
    config = tiny_vlm_config(
        arch,
        tokenizer,
        hidden_size,
        num_layers,
        num_heads,
        vision_width,
        vision_depth,
        initializer_range,
        intermediate_size,
    )
    model_class = Qwen2VLForConditionalGeneration if arch == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = model_class(config)
    model.save_pretrained(output_dir)
    processor = build_processor(arch, tokenizer, min_pixels=min_pixels, max_pixels=max_pixels)
    processor.save_pretrained(output_dir)
    model.generation_config.save_pretrained(output_dir)
    return output_dir


def build_tiny_text_prm(output_dir: str | Path, seed: int = 0, hidden_size: int = 64, num_labels: int = 2) -> Path:
    """Write a tiny random text-only token-classification PRM (Qwen2 architecture) and its tokenizer."""
    output_dir = Path(output_dir)
    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    Qwen2ForTokenClassification(config).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    """`python -m trl_vlprm.modeling.tiny OUT [--arch qwen2_vl|qwen2_5_vl] [--seed 0]`."""
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random Qwen-VL checkpoint (offline).")
    parser.add_argument("output_dir")
    parser.add_argument("--arch", default="qwen2_vl", choices=["qwen2_vl", "qwen2_5_vl"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_vlm(args.output_dir, arch=args.arch, seed=args.seed))


if __name__ == "__main__":
    main()
