"""Tiny models in a Hugging Face cache, exactly as a download from the Hub leaves them, for offline tests by repo id.

`save_to_hub_cache` writes any model folder into the hub layout (`models--Org--Name/blobs`, `snapshots/<commit>`,
`refs/<revision>`); `write_upstream_layout` gives a tiny Qwen-VL the file shapes of the published checkpoints;
`build_tiny_hub` fills a cache with the models the paper's recipes name (`Qwen/Qwen2.5-VL-3B-Instruct`, ...), so a
test sets `HF_HOME` + `HF_HUB_OFFLINE=1` and runs the recipes as written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

from trl_vlprm.modeling.families import get_family
from trl_vlprm.modeling.tiny import build_tiny_vlm

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
    template = template_file.read_text() if template_file.exists() else get_family(model_type).tiny_chat_template
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


# Base models under the ids the recipes name (arch, seed), and published PRM ids (arch, seed) saved with this
# project's PRM metadata (head, separator, verdict tokens), so a scorer never reads an untrained head.
TINY_HUB_BASE_MODELS = {
    "Qwen/Qwen2.5-VL-3B-Instruct": ("qwen2_5_vl", 0),
    "Qwen/Qwen2.5-VL-7B-Instruct": ("qwen2_5_vl", 1),
    "Qwen/Qwen2.5-VL-32B-Instruct": ("qwen2_5_vl", 2),
    "Qwen/Qwen2-VL-2B-Instruct": ("qwen2_vl", 3),
}
TINY_HUB_PRMS = {
    "ob11/Qwen-VL-PRM-3B": ("qwen2_5_vl", 10),
    "ob11/Qwen-VL-PRM-7B": ("qwen2_5_vl", 11),
}


def build_tiny_prm(
    output_dir: str | Path, arch: str = "qwen2_5_vl", seed: int = 0, step_separator: str = "\n"
) -> Path:
    """A tiny generative-head PRM saved as `VLPRMTrainer` saves one (config holds `prm_head`, the separator and the
    `+`/`-` token ids; image-only processor beside it)."""
    from trl_vlprm.modeling.heads import load_prm, prm_token_ids
    from trl_vlprm.modeling.processor import load_processor

    output_dir = Path(output_dir)
    base = build_tiny_vlm(output_dir.with_name(output_dir.name + ".base"), arch=arch, seed=seed)
    model, processor = load_prm(base, head="generative"), load_processor(base)
    model.config.prm_head = "generative"
    model.config.prm_step_separator = step_separator
    model.config.prm_positive_token_id, model.config.prm_negative_token_id = prm_token_ids(processor.tokenizer)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    shutil.rmtree(base)
    return output_dir


def build_tiny_hub(cache_dir: str | Path, work_dir: str | Path | None = None) -> dict[str, Path]:
    """Fill the hub cache `cache_dir` (`$HF_HOME/hub`) with tiny models under `TINY_HUB_BASE_MODELS` (upstream file
    layout) and `TINY_HUB_PRMS` (this project's PRM layout); returns each repo id's snapshot folder."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="tiny-hub-"))
    snapshots = {}
    for repo_id, (arch, seed) in TINY_HUB_BASE_MODELS.items():
        folder = write_upstream_layout(build_tiny_vlm(work / repo_id, arch=arch, seed=seed))
        snapshots[repo_id] = save_to_hub_cache(folder, repo_id, cache_dir)
    for repo_id, (arch, seed) in TINY_HUB_PRMS.items():
        snapshots[repo_id] = save_to_hub_cache(build_tiny_prm(work / repo_id, arch, seed), repo_id, cache_dir)
    if work_dir is None:
        shutil.rmtree(work)
    return snapshots
