"""Open a record dataset from wherever users keep it (a saved folder, Parquet/JSON files, a hub name), and write one
atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from trl_vlprm.utils.errors import UsageError


def _named_splits(path: Path) -> bool:
    """True for a folder whose splits have names: a saved `DatasetDict` or the hub layout."""
    return (path / "dataset_dict.json").exists() or _has_split_layout(path)


def _has_split_layout(path: Path) -> bool:
    """True when a folder names its splits as a hub dataset does (`data/train-00000-of-00001.parquet`, `test.jsonl`,
    `validation/`...), read with the patterns `datasets` itself uses; a folder of plain shards has none."""
    from datasets.data_files import get_data_patterns

    try:
        patterns = get_data_patterns(str(path))
    except Exception:  # no data file at all: the shard branch reports it
        return False
    return dict(patterns) != {"train": ["**"]}


def load_records(
    name_or_path: str, split: str = "train", config_name: str | None = None, strict_split: bool = False
) -> Dataset:
    """Load one split of a record dataset.

    Args:
        name_or_path: a `save_to_disk` folder, a Parquet file, a folder in the hub layout (`data/train-*.parquet`,
            `data/test-*.parquet`: each split read apart), a folder of Parquet shards (searched recursively, as
            the labelling builder writes them), a JSON/JSONL file, or a hub dataset name (GPU machines with a hub).
        split: split to return (for saved `DatasetDict`s and hub datasets; single files are one split).
        config_name: hub dataset configuration.
        strict_split: a source with one unnamed split (a shard folder, a single file) raises `ValueError` for any
            `split` but "train" instead of returning its only split (no train rows taken for evaluation rows).
    """
    path = Path(name_or_path)
    single_split = path.exists() and not (path.is_dir() and _named_splits(path))
    if strict_split and single_split and split != "train":
        raise ValueError(f"{path} holds a single unnamed split, not {split!r}")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise ValueError(f"{path} has no split {split!r}; it has {sorted(loaded)}")
            return loaded[split]
        return loaded
    if path.is_dir():
        if _has_split_layout(path):  # data/train-*.parquet, data/test-*.parquet...: keep the splits apart
            return load_dataset(str(path), split=split)
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
    try:
        return load_dataset(name_or_path, config_name, split=split)
    except FileNotFoundError as err:  # datasets' own message names neither what was looked for nor where
        raise FileNotFoundError(
            f"dataset {name_or_path!r}: no such local folder or file (a saved dataset, Parquet shards, a .parquet, "
            f".json or .jsonl file), nor a hub dataset ({err})"
        ) from err


# Column signatures of this project's other outputs, so that one given where records are expected is named.
OUTPUT_SIGNATURES: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"chosen", "candidates"}), "a `trl-vlprm tts` results file (per question: candidates, chosen answer)"),
    (frozenset({"benchmark", "scorer", "strategy"}), "a `trl-vlprm eval` results table (accuracy per setting and N)"),
)
# What each kind of input holds, and which command writes it.
STEP_RECORDS = "step-labelled records (prompt, images, completions, labels), as `trl-vlprm label` writes"
QUESTION_RECORDS = "question records (id, prompt, images, answer), as `trl-vlprm puzzles` writes"


def require_columns(dataset: Dataset, source: str | Path, needed: tuple[str, ...], expected: str) -> None:
    """Refuse another command's output (its columns match `OUTPUT_SIGNATURES`) or a dataset that lacks a column
    `needed`, saying what it is and what the caller reads (`expected`, e.g. `STEP_RECORDS`), instead of failing
    later on the first missing column or reading results as input."""
    columns = list(dataset.column_names)
    missing = [name for name in needed if name not in columns]
    what = next((kind for signature, kind in OUTPUT_SIGNATURES if signature <= set(columns)), None)
    if what is None and not missing:
        return
    lacking = f", without column(s) {missing}" if missing else ""
    raise UsageError(f"{source} is {what or f'a dataset with columns {columns}'}{lacking}; expected {expected}")


def load_questions(source: str | Path, split: str = "test", max_questions: int | None = None) -> Dataset:
    """The question records of TTS and labelling (`id`, `prompt`, `images`, `answer`, optional `options`).

    `source` is anything `load_records` reads (a `save_to_disk` folder, a Parquet/JSON/JSONL file, a folder of
    shards, a hub dataset name); a path that looks like a file but does not exist raises FileNotFoundError instead of
    being looked up on a hub. `max_questions` keeps only the first questions.
    """
    path = Path(str(source))
    if not path.exists() and path.suffix:
        raise FileNotFoundError(f"dataset {str(source)!r}: no such datasets folder nor .jsonl/.json/.parquet file")
    dataset = load_records(str(source), split)
    require_columns(dataset, source, ("prompt",), QUESTION_RECORDS)
    if max_questions is not None:
        dataset = dataset.select(range(min(max_questions, len(dataset))))
    return dataset


def write_dataset(dataset, out: str | Path) -> Path:
    """Write atomically: a `.parquet` path gets one Parquet file, any other path a `save_to_disk` folder.

    The data is written next to `out` under a temporary name and renamed into place, so a crash never leaves a
    half-written dataset at `out`; an existing `out` is replaced.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        from trl_vlprm.utils.resume import atomic_write

        return atomic_write(out, dataset.to_parquet)
    tmp_dir = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    old = None
    try:
        dataset.save_to_disk(str(tmp_dir / "data"))
        if out.exists():  # a folder cannot be replaced in one rename: move the old one aside first
            old = tmp_dir / "old"
            os.replace(out, old)
        os.replace(tmp_dir / "data", out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out
