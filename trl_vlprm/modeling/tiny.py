"""Build tiny random Qwen2-VL / Qwen2.5-VL checkpoints (and a tiny text LM) on disk, offline, in seconds.

Tests and the demo never touch a model hub: they build a folder with a byte-level BPE tokenizer trained on a little
text, the Qwen-VL special tokens and chat template, an image-only processor, and a ~0.3 M-parameter model. The
folder has the same layout as a real checkpoint, so everything downstream (`load_prm`, `load_processor`,
`recipes/train.py --model_name_or_path`) treats it like one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
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


def build_tiny_tokenizer(vocab_size: int = 640) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the Qwen-VL special tokens and chat template, trained on a built-in corpus.

    Byte-level, so every string encodes (no unknown tokens); deterministic, so two builds are identical.
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
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
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


def tiny_vlm_config(arch: str, tokenizer: PreTrainedTokenizerFast, hidden_size: int = 64):
    """Config of a tiny Qwen-VL: 2 text layers of width `hidden_size`, 2 vision blocks."""
    heads = 4
    head_dim = hidden_size // heads
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]  # must sum to head_dim / 2
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
    }
    if arch == "qwen2_vl":
        vision_config = {"depth": 2, "embed_dim": 32, "hidden_size": hidden_size, "num_heads": 2, "mlp_ratio": 2}
        config_class = Qwen2VLConfig
    elif arch == "qwen2_5_vl":
        vision_config = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": hidden_size,
            "fullatt_block_indexes": [1],
            "window_size": 56,
        }
        config_class = Qwen2_5_VLConfig
    else:
        raise ValueError(f"unknown arch {arch!r}; expected 'qwen2_vl' or 'qwen2_5_vl'")
    return config_class(
        text_config=text_config,
        vision_config=vision_config,
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
) -> Path:
    """Write a tiny random Qwen-VL checkpoint (model, tokenizer, image-only processor) to `output_dir`.

    Args:
        output_dir: folder to write (created).
        arch: "qwen2_vl" or "qwen2_5_vl".
        seed: torch seed for the random weights (same seed, same weights).
        hidden_size: text width; the vision tower projects to it.
        min_pixels: image processor's minimum area; with `max_pixels` it bounds image tokens (112x112 -> 16 tokens).
        max_pixels: image processor's maximum area.

    Returns:
        The folder, loadable with `Qwen2VLForConditionalGeneration.from_pretrained`, `load_prm` and `load_processor`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    config = tiny_vlm_config(arch, tokenizer, hidden_size)
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


# -- the Hugging Face cache, as a download from the Hub leaves it ------------------------------------------------

# Upstream Qwen-VL checkpoints (written by transformers 4.4x) keep the text settings at the top level of
# config.json and store `visual.*` / `model.layers.*` tensors; transformers 5 reads both forms.
_UPSTREAM_KEYS = [(r"^model\.visual\.", "visual."), (r"^model\.language_model\.", "model.")]
_UPSTREAM_PROCESSORS = {
    "qwen2_vl": ("Qwen2VLImageProcessor", "Qwen2VLProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLImageProcessor", "Qwen2_5_VLProcessor"),
}


def write_upstream_layout(folder: str | Path) -> Path:
    """Rewrite a `build_tiny_vlm` folder in place into the file shapes of the published Qwen-VL checkpoints.

    `config.json` flat (text fields at the top, `rope_scaling: {type: mrope}`), tensors under `visual.*` and
    `model.*`, `preprocessor_config.json` with `min_pixels` / `max_pixels` and the upstream image processor type,
    `chat_template.json`, and a tokenizer saved as `Qwen2Tokenizer` with `vocab.json` / `merges.txt` beside
    `tokenizer.json`: what `huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct` gives, at a tiny size.
    """
    import json
    import re

    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    model_type = config["model_type"]
    text = config.pop("text_config")
    rope = text.pop("rope_parameters", None) or {}
    for key in ("model_type", "architectures", "dtype", "output_attentions", "output_hidden_states", "return_dict"):
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

    image_type, processor_type = _UPSTREAM_PROCESSORS[model_type]
    saved = json.loads((folder / "processor_config.json").read_text())["image_processor"]  # transformers 5 nests it
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
    template = template_file.read_text() if template_file.exists() else CHAT_TEMPLATE
    _write_json(folder / "chat_template.json", {"chat_template": template})
    for name in ("chat_template.jinja", "processor_config.json"):
        (folder / name).unlink(missing_ok=True)

    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.update(tokenizer_class="Qwen2Tokenizer", chat_template=template, processor_class=processor_type)
    _write_json(folder / "tokenizer_config.json", tokenizer_config)
    # Qwen2Tokenizer imposes Qwen's normaliser and pre-tokeniser; tokenizer.json is re-saved with them, as upstream's
    # holds them, so readers of tokenizer.json alone (vLLM, older transformers) tokenize the same way.
    AutoTokenizer.from_pretrained(folder).backend_tokenizer.save(str(folder / "tokenizer.json"))
    bpe = json.loads((folder / "tokenizer.json").read_text())["model"]
    _write_json(folder / "vocab.json", bpe["vocab"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def _write_json(path: Path, data: dict) -> None:
    import json

    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_to_hub_cache(
    folder: str | Path,
    repo_id: str,
    cache_dir: str | Path | None = None,
    revision: str = "main",
) -> Path:
    """Place a model folder in a Hugging Face cache exactly as a download of `repo_id` at `revision` would.

    Layout (huggingface_hub's): `<cache_dir>/models--Org--Name/blobs/<sha256>` holding the file contents,
    `snapshots/<commit>/<file>` symlinks to them, and `refs/<revision>` holding the commit. The commit hash is
    derived from the contents, so the same folder gives the same commit and a changed one a new commit (two
    revisions of one repo live side by side). With `HF_HUB_OFFLINE=1` and this cache, transformers, huggingface_hub
    and every `trl_vlprm` entry point load the model by `repo_id`.

    Args:
        folder: the model folder (e.g. from `build_tiny_vlm`, then `write_upstream_layout`, or a trained PRM).
        repo_id: "Org/Name", e.g. "Qwen/Qwen2.5-VL-3B-Instruct".
        cache_dir: the hub cache (`HF_HUB_CACHE`, i.e. `$HF_HOME/hub`); default: huggingface_hub's current one.
        revision: the branch or tag name that points at the new commit ("main" by default).

    Returns:
        The snapshot folder.
    """
    import hashlib
    import os
    import shutil
    import tempfile

    from huggingface_hub import constants

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like 'Org/Name', got {repo_id!r}")
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not any(p.name == "config.json" for p in files):
        raise ValueError(f"{folder} has no config.json: not a model folder")
    repo_dir = Path(cache_dir or constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1()
    blobs = {}
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        relative = path.relative_to(folder).as_posix()
        blobs[relative] = digest
        commit.update(f"{relative}\0{digest}\n".encode())
    commit_hash = commit.hexdigest()
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for path in files:
        blob = repo_dir / "blobs" / blobs[path.relative_to(folder).as_posix()]
        if not blob.exists():
            shutil.copyfile(path, blob.with_suffix(".incomplete"))  # huggingface_hub's own temporary name
            os.replace(blob.with_suffix(".incomplete"), blob)
    snapshot = repo_dir / "snapshots" / commit_hash
    if not snapshot.exists():
        (repo_dir / "snapshots").mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=repo_dir / "snapshots", prefix=".tmp-"))
        for relative, digest in blobs.items():
            link = staging / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(repo_dir / "blobs" / digest, (snapshot / relative).parent))
        os.replace(staging, snapshot)
    (repo_dir / "refs").mkdir(exist_ok=True)
    ref = repo_dir / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    pending = ref.parent / f".{ref.name}.tmp"
    pending.write_text(commit_hash)
    os.replace(pending, ref)
    return snapshot


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
