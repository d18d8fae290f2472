"""What vLLM loads for a PRM: the folder, or a view of it, and the engine arguments that make it a token classifier.

- **value head**: vLLM converts the architecture to its classifier model, whose weight mapper may expect the head
  under another name (the family's `vllm_value_head_renames`); `vllm_checkpoint` writes a view of the folder with
  those keys renamed (other shards are symlinked), once per checkpoint.
- **generative head**: converted online where vLLM can (`classifier_from_token`: the LM-head rows of `-` and `+` as a
  two-class classifier, `no_post_processing`), so its softmax is P(+) / (P(+) + P(-)), the generative PRM's score.
  vLLM 0.32 puts those rows on the model's inner language model; a family whose vLLM model keeps its LM head outside
  it (Idefics3 / SmolVLM: `ModelFamily.vllm_reads_lm_head_rows` False) would get uninitialised rows, so
  `vllm_generative_view` writes the same two rows into a view as a two-label value head instead: the same softmax.

Views live in a cache folder (default `$TRL_VLPRM_CACHE` or `~/.cache/trl_vlprm`) under a name derived from the
folder's path and weight files (size, mtime), are written under a temporary name and renamed, and are reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trl_vlprm.modeling.families import find_family

_INDEX = "model.safetensors.index.json"


def _view(path: Path, kind: str, key: Any, cache_dir: str | Path | None, write: Callable[[Path, list[Path]], None]):
    """The view folder of `path` (`kind`, extra fingerprint `key`), written by `write(partial, shards)` unless it
    exists; every file `write` does not create is symlinked to the original."""
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path}: a PRM view for vLLM needs safetensors weights, found none")
    files = [(s.name, s.stat().st_size, s.stat().st_mtime_ns) for s in shards]
    fingerprint = hashlib.sha256(json.dumps([str(path), kind, key, *files]).encode()).hexdigest()[:16]
    root = Path(cache_dir or os.environ.get("TRL_VLPRM_CACHE") or Path.home() / ".cache" / "trl_vlprm")
    target = root / "vllm" / f"{path.name}-{fingerprint}"
    if target.is_dir():
        return target
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    write(partial, shards)
    for item in path.iterdir():
        if not (partial / item.name).exists():
            (partial / item.name).symlink_to(item)
    try:
        partial.rename(target)
    except OSError:  # another process finished the same view first
        if not target.is_dir():
            raise
    return target


def vllm_checkpoint(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A folder vLLM loads as this PRM: the folder itself for a generative head (or a value head whose names vLLM
    reads as saved); for a value head a view with the classifier saved under the names vLLM's classifier of the
    model family loads (`ModelFamily.vllm_value_head_renames`)."""
    path = Path(path).resolve()
    config = json.loads((path / "config.json").read_text())
    family = find_family(config.get("model_type"))
    renames = dict(family.vllm_value_head_renames) if family is not None else {}
    if config.get("prm_head") != "value" or not renames:
        return path

    def write(partial: Path, shards: list[Path]) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file

        renamed = False
        for shard in shards:
            with safe_open(str(shard), framework="pt") as weights:
                keys = list(weights.keys())
                if set(keys) & set(renames):
                    tensors = {renames.get(key, key): weights.get_tensor(key) for key in keys}
                    save_file(tensors, str(partial / shard.name), metadata=weights.metadata())
                    renamed = True
        if not renamed:
            raise ValueError(f"{path}: config says prm_head='value' but no shard holds 'score.weight'")
        if (path / _INDEX).exists():
            data = json.loads((path / _INDEX).read_text())
            data["weight_map"] = {renames.get(k, k): v for k, v in data["weight_map"].items()}
            (partial / _INDEX).write_text(json.dumps(data, indent=2))

    return _view(path, "value", None, cache_dir, write)


def _lm_head_key(keys: list[str], config: dict[str, Any]) -> str | None:
    """The checkpoint key of the LM head's weight: `lm_head.weight`, else (tied embeddings) the text embeddings."""
    if "lm_head.weight" in keys:
        return "lm_head.weight"
    text = config.get("text_config") or {}
    if config.get("tie_word_embeddings") or text.get("tie_word_embeddings"):
        tied = [k for k in keys if k.endswith("embed_tokens.weight") and "vision" not in k]
        return tied[0] if len(tied) == 1 else None
    return None


def vllm_generative_view(path: str | Path, token_ids: tuple[int, int], cache_dir: str | Path | None = None) -> Path:
    """A view of a generative PRM folder that vLLM loads as a two-label value head: the LM-head rows of the negative
    and positive verdict tokens (`token_ids` = (positive, negative)) as `score.weight` (class 0 wrong, class 1
    correct), the LM head itself left out; the softmax of those two logits is the generative PRM's P(+).

    For the families vLLM 0.32 cannot convert online (`ModelFamily.vllm_reads_lm_head_rows` False).
    """
    from trl_vlprm.modeling.heads import value_head_class

    path = Path(path).resolve()
    config = json.loads((path / "config.json").read_text())
    family = find_family(config.get("model_type"))
    renames = dict(family.vllm_value_head_renames) if family is not None else {}
    positive, negative = token_ids

    def write(partial: Path, shards: list[Path]) -> None:
        import torch
        from safetensors import safe_open
        from safetensors.torch import save_file

        rows, dropped = None, None
        for shard in shards:
            with safe_open(str(shard), framework="pt") as weights:
                keys = list(weights.keys())
                head = _lm_head_key(keys, config)
                if head is None:
                    continue
                rows = weights.get_tensor(head)[[negative, positive]].clone()
                if head == "lm_head.weight":  # the classifier replaces it; a tied embedding stays
                    dropped = head
                    kept = {key: weights.get_tensor(key) for key in keys if key != head}
                    save_file(kept, str(partial / shard.name), metadata=weights.metadata())
        if rows is None:
            raise ValueError(f"{path}: no shard holds the LM head (lm_head.weight, or tied text embeddings)")
        score = renames.get("score.weight", "score.weight")
        save_file({score: rows.to(torch.float32).contiguous()}, str(partial / "prm-verdict-rows.safetensors"))
        if (path / _INDEX).exists():
            data = json.loads((path / _INDEX).read_text())
            data["weight_map"] = {k: v for k, v in data["weight_map"].items() if k != dropped}
            data["weight_map"][score] = "prm-verdict-rows.safetensors"
            (partial / _INDEX).write_text(json.dumps(data, indent=2))
        view_config = {
            **config,
            "architectures": [value_head_class(config["model_type"]).__name__],
            "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
            "label2id": {"LABEL_0": 0, "LABEL_1": 1},
        }
        (partial / "config.json").write_text(json.dumps(view_config, indent=2))

    return _view(path, "generative-rows", [positive, negative], cache_dir, write)


def uses_generative_view(path: str | Path, head: str) -> bool:
    """Whether vLLM must load this generative PRM through `vllm_generative_view` (its family's LM head lies where
    vLLM's online conversion does not look)."""
    if head != "generative":
        return False
    config = json.loads((Path(path) / "config.json").read_text())
    family = find_family(config.get("model_type"))
    return family is not None and not family.vllm_reads_lm_head_rows


def engine_kwargs(path: str | Path, head: str, tokenizer: Any, token_ids: tuple[int, int] | None) -> dict[str, Any]:
    """`vllm.LLM` arguments that run a PRM folder (as `vllm_model` gives it) as a token-classification pooling
    model."""
    kwargs: dict[str, Any] = {"runner": "pooling", "pooler_config": {"task": "token_classify"}}
    if head == "generative":
        positive, negative = token_ids
        tokens = tokenizer.convert_ids_to_tokens([negative, positive])  # class 0 wrong, class 1 correct
        config = json.loads((Path(path) / "config.json").read_text())
        tied = bool(config.get("tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings")))
        overrides = {"classifier_from_token": tokens, "method": "no_post_processing"}
        kwargs["convert"] = "classify"
        if "text_config" in config:
            # vLLM reads the overrides from the text config of a VLM; transformers 5.19's Qwen2-VL text config lacks
            # `tie_word_embeddings`, which vLLM's conversion reads.
            kwargs["hf_overrides"] = {**overrides, "text_config": {**overrides, "tie_word_embeddings": tied}}
        else:
            # A text-only PRM (Math-Shepherd): a `text_config` override would become the config vLLM reads its heads
            # from, and the engine would refuse it ("does not have `num_attention_heads`").
            kwargs["hf_overrides"] = overrides
    return kwargs


def vllm_model(
    path: str | Path, head: str, tokenizer: Any, token_ids: tuple[int, int] | None, cache_dir: str | Path | None
) -> tuple[Path, dict[str, Any]]:
    """(the folder vLLM loads, the engine arguments) of a PRM folder with `head`: a value head's renamed view, a
    generative head as it is or as its two-row view (`uses_generative_view`)."""
    if head == "value":
        folder = vllm_checkpoint(path, cache_dir)
        return folder, engine_kwargs(folder, head, tokenizer, None)
    if uses_generative_view(path, head):
        folder = vllm_generative_view(path, token_ids, cache_dir)
        return folder, engine_kwargs(folder, "value", tokenizer, None)
    return Path(path), engine_kwargs(path, head, tokenizer, token_ids)
