"""Open a record dataset from wherever users keep it: a saved folder, Parquet/JSON files, or a hub name."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk


def load_records(name_or_path: str, split: str = "train", config_name: str | None = None) -> Dataset:
    """Load one split of a record dataset.

    Args:
        name_or_path: a `save_to_disk` folder, a Parquet file, a folder of Parquet shards (searched recursively, as
            the labelling builder writes them), a JSON/JSONL file, or a hub dataset name (GPU machines with a hub).
        split: split to return (for saved `DatasetDict`s and hub datasets; single files are one split).
        config_name: hub dataset configuration.
    """
    path = Path(name_or_path)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, DatasetDict) else loaded
    if path.is_dir():
        shards = sorted(str(p) for p in path.rglob("*.parquet"))
        if not shards:
            raise FileNotFoundError(f"{path} holds neither a saved dataset nor Parquet shards")
        return load_dataset("parquet", data_files=shards, split="train")
    if path.suffix == ".parquet":
        return load_dataset("parquet", data_files=str(path), split="train")
    if path.suffix in (".json", ".jsonl"):
        return load_dataset("json", data_files=str(path), split="train")
    if path.exists():
        raise ValueError(f"{path}: unsupported dataset file type {path.suffix!r} (use Parquet, JSON or a folder)")
    return load_dataset(name_or_path, config_name, split=split)
