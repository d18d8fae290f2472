"""Tiny models in a Hugging Face cache, exactly as a download from the Hub leaves them, for offline tests by repo id.

`save_to_hub_cache` writes any model folder into the hub layout (`models--Org--Name/blobs`, `snapshots/<commit>`,
`refs/<revision>`); `write_upstream_layout` gives a tiny model its family's published checkpoint file shapes;
`build_tiny_hub` fills a cache with the models the paper's recipes name (`Qwen/Qwen2.5-VL-3B-Instruct`, ...), and
`offline_hub` points this process and its subprocesses at that cache with `HF_HUB_OFFLINE=1`, so a test runs the
recipes as written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trl_vlprm.testing.tiny import build_tiny_vlm
from trl_vlprm.testing.tiny_models import TINY_SPECS, get_tiny_spec
from trl_vlprm.types import DEFAULT_STEP_SEPARATOR


def write_upstream_layout(folder: str | Path) -> Path:
    """Rewrite a `build_tiny_vlm` folder in place into the file shapes of its model type's published checkpoints
    (`TinySpec.upstream_layout`; none: transformers 5's layout is the published one): what a download of such a
    checkpoint gives, at a tiny size."""
    folder = Path(folder)
    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    rewrite = get_tiny_spec(model_type).upstream_layout
    return rewrite(folder) if rewrite is not None else folder


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
    # every other model type under the published ids its tiny spec names (`TinySpec.hub_ids`), seeds from 20 on
    **{
        repo_id: (model_type, 20 + i)
        for i, (repo_id, model_type) in enumerate(
            (repo_id, model_type) for model_type, spec in TINY_SPECS.items() for repo_id in spec.hub_ids
        )
    },
}
TINY_HUB_PRMS = {
    "ob11/Qwen-VL-PRM-3B": ("qwen2_5_vl", 10),
    "ob11/Qwen-VL-PRM-7B": ("qwen2_5_vl", 11),
}


def build_tiny_prm(
    output_dir: str | Path, arch: str = "qwen2_5_vl", seed: int = 0, step_separator: str = DEFAULT_STEP_SEPARATOR
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


@contextmanager
def offline_hub(home: str | Path) -> Iterator[Path]:
    """Within the block, models load by repo id from the hub cache of the Hugging Face home `home` (`home/hub`, as
    `build_tiny_hub(home / "hub")` fills it), never from the Hub; the environment and huggingface_hub's settings are
    restored on exit.

    Both are set: subprocesses (e.g. `accelerate launch` of a recipe) read the environment at start-up, while
    huggingface_hub reads its cache path and offline flag from module constants it computed at import.

    Example:
        >>> build_tiny_hub(tmp_path / "hub")
        >>> with offline_hub(tmp_path):
        ...     AutoConfig.from_pretrained("Qwen/Qwen2.5-VL-3B-Instruct").model_type
        'qwen2_5_vl'
    """
    from huggingface_hub import constants

    home = Path(home)
    environment = {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    settings = {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": True}
    saved_environment = {name: os.environ.get(name) for name in environment}
    saved_settings = {name: getattr(constants, name) for name in settings}
    os.environ.update(environment)
    for name, value in settings.items():
        setattr(constants, name, value)
    try:
        yield home
    finally:
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for name, value in saved_settings.items():
            setattr(constants, name, value)
