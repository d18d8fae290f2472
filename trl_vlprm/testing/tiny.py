"""Build tiny random vision-language checkpoints (of any model family) and a tiny text LM on disk, offline, fast.

Tests and the demo never touch a model hub: they build a folder with a byte-level BPE tokenizer trained on a little
text, the model type's special tokens and chat template, an image-only processor, and a ~0.3 M-parameter model of the
real transformers class with a shrunk config (`trl_vlprm.testing.tiny_models`). The folder has the same layout as a
real checkpoint, so everything downstream (`load_prm`, `load_processor`, `recipes/train.py --model_name_or_path`)
treats it like one.
`trl_vlprm.testing.tiny_hub` puts such folders into a Hugging Face cache under real repo ids, so everything also
loads by id, offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForTokenClassification

from trl_vlprm.modeling.families import get_family
from trl_vlprm.modeling.processor import build_processor
from trl_vlprm.testing.tiny_models import TINY_SPECS, get_tiny_spec

DEFAULT_ARCH = "qwen2_vl"  # the tiny backbone the tests and the demo build unless told otherwise

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


def build_tiny_tokenizer(
    vocab_size: int = 640, extra_corpus: Sequence[str] = (), arch: str = DEFAULT_ARCH
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the special tokens and chat template of `arch`'s model family, trained on a
    built-in corpus.

    Byte-level, so every string encodes (no unknown tokens); deterministic, so two builds are identical.
    `extra_corpus` (e.g. `trl_vlprm.testbed.testbed_corpus()`) is added to the training text, so its frequent
    words become whole tokens given a large enough `vocab_size`.
    """
    spec = get_tiny_spec(arch)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4 + list(extra_corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        unk_token=None,
        bos_token=spec.bos_token,
        chat_template=spec.chat_template,
        **({"extra_special_tokens": spec.extra_special_tokens} if spec.extra_special_tokens else {}),
    )
    fast.padding_side = "right"
    return fast


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
    """Config of a tiny model of model type `arch`: `num_layers` text layers of width `hidden_size` with `num_heads`
    heads (half as many key/value heads), and a vision tower of `vision_depth` blocks of width `vision_width`; weights
    are drawn with standard deviation `initializer_range`; the text MLP is `intermediate_size` wide (default
    `2 * hidden_size`).

    Raises:
        UnsupportedModelError: no model family covers `arch` (the message lists the supported ones).
    """
    return get_tiny_spec(arch).config(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        vision_width=vision_width,
        vision_depth=vision_depth,
        initializer_range=initializer_range,
        intermediate_size=intermediate_size,
    )


def build_tiny_vlm(
    output_dir: str | Path,
    arch: str = DEFAULT_ARCH,
    seed: int = 0,
    hidden_size: int = 64,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    num_layers: int = 2,
    num_heads: int = 4,
    vision_width: int = 32,
    vision_depth: int = 2,
    vocab_size: int = 640,
    extra_corpus: Sequence[str] = (),
    initializer_range: float = 0.02,
    intermediate_size: int | None = None,
) -> Path:
    """Write a tiny random vision-language checkpoint (model, tokenizer, image-only processor) to `output_dir`.

    Args:
        output_dir: folder to write (created).
        arch: the model type, one a registered model family covers (`trl_vlprm.modeling.families`).
        seed: torch seed for the random weights (same seed, same weights).
        hidden_size: text width; the vision tower projects to it.
        min_pixels: image processor's minimum area; with `max_pixels` it bounds image tokens (default: the model
            type's tiny bounds, e.g. 56x56 .. 112x112 for Qwen2-VL: 4 .. 16 tokens).
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
        The folder, loadable with `AutoModelForImageTextToText.from_pretrained`, `load_prm` and `load_processor`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(vocab_size, extra_corpus, arch)
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
    torch.manual_seed(seed)
    model = get_family(arch).model_class()(config)
    spec = get_tiny_spec(arch)
    with torch.no_grad():
        for name in spec.redrawn:
            model.get_parameter(name).normal_(0.0, initializer_range)
    model.save_pretrained(output_dir)
    min_pixels = spec.min_pixels if min_pixels is None else min_pixels
    max_pixels = spec.max_pixels if max_pixels is None else max_pixels
    processor = build_processor(
        arch,
        tokenizer,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        image_processor_settings=spec.image_processor_settings,
        processor_kwargs=spec.processor_kwargs,
    )
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
    """`python -m trl_vlprm.testing.tiny OUT [--arch MODEL_TYPE] [--seed 0]`."""
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random vision-language checkpoint (offline).")
    parser.add_argument("output_dir")
    parser.add_argument("--arch", default=DEFAULT_ARCH, choices=sorted(TINY_SPECS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_vlm(args.output_dir, arch=args.arch, seed=args.seed))


if __name__ == "__main__":
    main()
