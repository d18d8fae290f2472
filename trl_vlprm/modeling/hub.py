"""Where a model's files come from: a local folder or a Hub repo id (at a revision), resolved as transformers does.

Every entry point that takes a model (`load_processor`, `load_prm`, `VLPRMTrainer(model=str)`, the scorer and the
policies, the recipes and the specs of the labeller and the evaluation) goes through these functions, so a repo id
and a folder behave alike: a folder is read in place; a repo id is looked up in the Hugging Face cache (`HF_HOME` /
`HF_HUB_CACHE`), downloaded when the Hub is reachable, and read from the cache alone under `HF_HUB_OFFLINE=1`. The
resolution is transformers' own (`transformers.utils.hub.cached_file`, `huggingface_hub.snapshot_download`), never
a guess from whether a path exists.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import constants
from transformers.utils.hub import cached_file

ModelName = str | os.PathLike


def model_file(name_or_path: ModelName, filename: str, revision: str | None = None) -> Path | None:
    """Local path of `filename` in a model folder or Hub repo (from the cache, or downloaded); None if it has none.

    Args:
        name_or_path: a local model folder or a Hub repo id ("org/name").
        filename: a file of the model, e.g. "preprocessor_config.json".
        revision: branch, tag or commit of a repo id (default "main"); ignored for a folder, as in transformers.

    Raises:
        OSError: the repo id is unknown (or, offline, absent from the cache) - transformers' own message.
    """
    resolved = cached_file(str(name_or_path), filename, revision=revision, _raise_exceptions_for_missing_entries=False)
    return Path(resolved) if resolved is not None else None


def require_model(name_or_path: ModelName, revision: str | None = None) -> Path:
    """The model's `config.json`, or a `FileNotFoundError` (an `OSError`) naming the model and where it was looked for.

    (Offline, transformers answers an absent repo with a message that names neither the repo nor the cache, and a
    folder that does not exist with "Repo id must be in the form 'repo_name'...".)
    """
    _refuse_missing_folder(name_or_path)
    try:
        config = model_file(name_or_path, "config.json", revision)
    except OSError as error:
        raise FileNotFoundError(
            f"model {str(name_or_path)!r}: no such model folder, nor a Hub repo of that name ({error})"
        ) from error
    if config is None:
        if os.path.isdir(str(name_or_path)):
            where = "that folder"
        elif constants.HF_HUB_OFFLINE:
            where = f"the Hub cache {constants.HF_HUB_CACHE} (HF_HUB_OFFLINE=1)"
        else:
            where = "the Hub"
        revision_name = revision or "main"
        raise FileNotFoundError(f"model {str(name_or_path)!r} (revision {revision_name}): no config.json in {where}")
    return config


def _refuse_missing_folder(name_or_path: ModelName) -> None:
    """A name that can only be a local path (absolute, `./`, `../`, `~`, more than one `/`, or under a folder that
    exists here, such as `outputs/vlprm-tny`) and is not there: say "no such folder", with the close names beside it,
    rather than report a Hub repo missing from the cache."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        return
    parts = Path(name).parts
    local = (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or len(parts) > 2
        or (len(parts) == 2 and Path(parts[0]).is_dir())
    )
    if not local:
        return
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    hint = ""
    if parent == path.parent:
        siblings = sorted(p.name for p in parent.iterdir() if p.is_dir())
        close = difflib.get_close_matches(path.name, siblings, n=3)
        hint = f"; did you mean {', '.join(str(parent / c) for c in close)}?" if close else ""
    else:
        hint = f"; the nearest existing folder is {parent}"
    raise FileNotFoundError(f"model {name!r}: no such folder ({path.resolve()}){hint}")


class RemoteCodeError(ValueError):
    """A model ships its own Python (`auto_map`), which trl_vlprm never runs."""


# The files whose `auto_map` makes transformers import Python from the model (after a "[y/N]" prompt on stdin).
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def refuse_remote_code(name_or_path: ModelName, revision: str | None = None) -> None:
    """Raise `RemoteCodeError` when a file of the model maps an Auto class to the model's own code (`auto_map`).

    Without this, transformers leaves `trust_remote_code` to an interactive "[y/N]" prompt: answering "y" (or a
    wrapper piping "y") runs the folder's Python. The PRM heads are built on the architectures transformers ships,
    so a model's own code is never needed; `train` refuses `--trust_remote_code` for the same reason.
    """
    for filename in REMOTE_CODE_FILES:
        auto_map = (read_model_json(name_or_path, filename, revision) or {}).get("auto_map")
        if auto_map:
            raise RemoteCodeError(
                f"model {str(name_or_path)!r} ships its own code ({filename} auto_map {auto_map}); trl_vlprm never "
                "runs a model's code (trust_remote_code): use a checkpoint of an architecture transformers ships, or "
                f"remove auto_map from {filename} if the model is one"
            )


def model_fingerprint(name_or_path: ModelName, revision: str | None = None) -> Any:
    """What pins a model's weights: a folder's files (name, size, mtime); a repo id's resolved commit."""
    if os.path.isdir(str(name_or_path)):  # transformers' own rule: a folder is read in place
        from trl_vlprm.utils.resume import path_fingerprint

        return path_fingerprint(name_or_path)
    return {"repo_id": str(name_or_path), "commit": require_model(name_or_path, revision).parent.name}


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
    require_model(name_or_path, revision)
    if os.path.isdir(str(name_or_path)):  # transformers' own rule: a folder is read in place
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path), revision=revision, local_files_only=constants.HF_HUB_OFFLINE))


def model_init_kwargs_from(model_args: Any) -> dict[str, Any]:
    """`from_pretrained` arguments of a `trl.ModelConfig`, each flag honoured or refused, never ignored.

    - `model_revision` -> `revision` (of the weights, config and processor alike);
    - `dtype`, `attn_implementation` -> passed as they are;
    - `load_in_4bit` / `load_in_8bit` -> a bitsandbytes `quantization_config` (TRL's `get_quantization_config`)
      and, on GPUs, each process's own device (TRL's k-bit device map): the run needs bitsandbytes and a GPU;
    - `trust_remote_code` -> refused: the PRM heads are defined on the architectures transformers ships
      (the model families of `trl_vlprm.modeling.families`, text LMs), so a model's own modelling code would not
      get them.

    Raises:
        ValueError: `trust_remote_code` was set.
    """
    if getattr(model_args, "trust_remote_code", False):
        from trl_vlprm.modeling.families import supported_families_text

        raise ValueError(
            "trust_remote_code=True is not supported: trl_vlprm builds its PRM heads on the architectures "
            f"transformers ships ({supported_families_text()}; text LMs) and never runs a model's own code; drop "
            "--trust_remote_code"
        )
    from trl.trainer.utils import get_quantization_config

    kwargs: dict[str, Any] = {
        "revision": getattr(model_args, "model_revision", None),
        "dtype": getattr(model_args, "dtype", None),
        "attn_implementation": getattr(model_args, "attn_implementation", None),
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = _kbit_device_map()
    return {key: value for key, value in kwargs.items() if value is not None}


def _kbit_device_map() -> dict[str, int] | None:
    import torch
    from accelerate import PartialState

    return {"": PartialState().local_process_index} if torch.cuda.is_available() else None
