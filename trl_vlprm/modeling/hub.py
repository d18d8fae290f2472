"""Where a model's files come from: a local folder or a Hub repo id (at a revision), resolved as transformers does.

Every entry point that takes a model (`load_processor`, `load_prm`, `VLPRMTrainer(model=str)`, the scorer and the
policies, the recipes and the specs of the labeller and the evaluation) goes through these functions, so a repo id
and a folder behave alike: a folder is read in place; a repo id is looked up in the Hugging Face cache (`HF_HOME` /
`HF_HUB_CACHE`), downloaded when the Hub is reachable, and read from the cache alone under `HF_HUB_OFFLINE=1`. The
resolution is transformers' own (`transformers.utils.hub.cached_file`, `huggingface_hub.snapshot_download`), never
a guess from whether a path exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub.constants import is_offline_mode
from transformers.utils.hub import cached_file

ModelName = str | os.PathLike


def model_file(name_or_path: ModelName, filename: str, revision: str | None = None) -> Path | None:
    """Local path of `filename` in a model folder or Hub repo (from the cache, or downloaded); None if it has none.

    Args:
        name_or_path: a local model folder or a Hub repo id such as "Qwen/Qwen2.5-VL-3B-Instruct".
        filename: a file of the model, e.g. "preprocessor_config.json".
        revision: branch, tag or commit of a repo id (default "main"); ignored for a folder, as in transformers.

    Raises:
        OSError: the repo id is unknown (or, offline, absent from the cache) - transformers' own message.
    """
    resolved = cached_file(
        str(name_or_path),
        filename,
        revision=revision,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_gated_repo=True,
    )
    return Path(resolved) if resolved is not None else None


def read_model_json(name_or_path: ModelName, filename: str, revision: str | None = None) -> dict[str, Any] | None:
    """The parsed JSON file `filename` of a model, or None when the model has no such file."""
    path = model_file(name_or_path, filename, revision)
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{name_or_path}: {filename} ({path}) is not valid JSON: {error}") from error


def model_snapshot_dir(name_or_path: ModelName, revision: str | None = None) -> Path:
    """A local folder holding every file of the model: the folder itself, or the repo's snapshot in the Hub cache.

    For engines that want a folder rather than an id (the snapshot is downloaded when the Hub is reachable, read
    from the cache alone when offline).
    """
    config = model_file(name_or_path, "config.json", revision)
    if config is None:
        raise OSError(f"{name_or_path} (revision {revision or 'main'}) has no config.json: not a model")
    if os.path.isdir(str(name_or_path)):  # transformers' own rule: a folder is read in place
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path), revision=revision, local_files_only=is_offline_mode()))
