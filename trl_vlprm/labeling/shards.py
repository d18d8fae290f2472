"""The labelled dataset on disk: Parquet shards, each with a JSON sidecar saying exactly what it holds.

A shard is `shard-{i:05d}.parquet` plus `shard-{i:05d}.json`. The sidecar is written first and records the ids of
the questions the shard covers, a content digest of each of those questions, the number of rows and the labelling
stats; the Parquet file is written second, and its presence marks the shard done. Both go through
`trl_vlprm.utils.resume.atomic_write`, so a crash leaves either a whole shard or none.

`verify_shard` is what a resumed run trusts a shard by: a readable Parquet footer whose row count equals the
sidecar's. `plan_shards` is how a run (sampled or imported) picks up a folder: it pins the settings in
`labelling_config.json`, moves untrusted shards aside and cuts the questions no shard covers into new shards.
`load_labelled` reads every shard, skips empty ones (a shard whose questions produced no record is legitimate) and
names the file in every error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl_vlprm.data.schema import RecordError, stepwise_features
from trl_vlprm.labeling.labeler import BatchStats
from trl_vlprm.utils.resume import atomic_write_text, pin_settings

SIDECAR_FORMAT = 2
SHARD_PATTERN = re.compile(r"shard-(\d{5,})\.parquet")
CONFIG_FILE = "labelling_config.json"  # the pinned settings of a folder's shards; a run with others is refused


class ShardError(ValueError):
    """A shard on disk cannot be trusted (unreadable footer, row count unlike its sidecar, missing sidecar)."""


class LegacyShardError(ShardError):
    """A shard written before sidecars recorded question ids: readable, but a resumed run cannot tell its coverage."""


@dataclass
class ShardInfo:
    """What a verified shard covers."""

    path: Path
    index: int
    question_ids: list[str]
    question_digests: list[str]
    num_rows: int
    stats: BatchStats


def output_features():
    """Stepwise-supervision features plus the labelling provenance columns."""
    from datasets import List, Value

    features = stepwise_features(with_types=True, soft_labels=False)
    features["question_id"] = Value("string")
    features["label_weights"] = List(Value("float32"))
    for name in ("rule", "rule_case", "rollout_answer", "mc", "judge", "gold_step_correct", "costs"):
        features[name] = Value("string")
    features["num_steps"] = Value("int32")
    features["rollout_correct"] = Value("bool")
    return features


def shard_path(output_dir: Path, index: int) -> Path:
    return output_dir / f"shard-{index:05d}.parquet"


def write_shard(
    output_dir: Path,
    index: int,
    rows: list[dict[str, Any]],
    stats: BatchStats,
    question_ids: Sequence[str],
    question_digests: Sequence[str],
) -> Path:
    """Write one shard's sidecar, then its Parquet file (its presence marks the shard done)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    features = output_features()
    columns = {name: [row[name] for row in rows] for name in features}
    dataset = Dataset.from_dict(columns, features=features)
    path = shard_path(output_dir, index)
    # pyarrow directly: the table carries the features in its schema metadata, and no progress bar per shard
    buffer = pa.BufferOutputStream()
    pq.write_table(dataset.data.table, buffer)
    data = buffer.getvalue().to_pybytes()
    sidecar = {
        "format": SIDECAR_FORMAT,
        "question_ids": list(question_ids),
        "question_digests": list(question_digests),
        "num_rows": len(rows),
        "stats": stats.as_dict(),
        # what the Parquet file holds, so a shard replaced by another of the same row count is not trusted
        "parquet_sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=1))
    atomic_write_text(path, data)
    return path


def parquet_rows(path: Path) -> int:
    """Rows in a Parquet file by its footer; a `ShardError` naming the file when the footer cannot be read."""
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError... for truncated or foreign files
        raise ShardError(f"{path}: unreadable Parquet shard ({type(err).__name__}: {err})") from err


def verify_shard(path: Path) -> ShardInfo:
    """The sidecar of a finished shard, checked against the Parquet footer; `ShardError` naming the file if not."""
    sidecar_path = path.with_suffix(".json")
    if not sidecar_path.exists():
        raise ShardError(f"{path}: no sidecar {sidecar_path.name}; cannot tell which questions it covers")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except ValueError as err:
        raise ShardError(f"{sidecar_path}: unreadable sidecar ({err})") from err
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise LegacyShardError(
            f"{sidecar_path}: written by an older trl_vlprm (no question ids); relabel into a new output_dir"
        )
    rows = parquet_rows(path)
    if rows != sidecar["num_rows"]:
        raise ShardError(f"{path}: {rows} rows but its sidecar records {sidecar['num_rows']} (truncated or replaced)")
    expected = sidecar.get("parquet_sha256")  # absent from shards written before it was recorded
    if expected is not None and _sha256(path) != expected:
        raise ShardError(f"{path}: its content differs from what its sidecar records (replaced by another shard?)")
    if len(sidecar["question_ids"]) != len(sidecar["question_digests"]):
        raise ShardError(f"{sidecar_path}: question_ids and question_digests differ in length")
    index = int(SHARD_PATTERN.fullmatch(path.name).group(1))
    return ShardInfo(
        path,
        index,
        [str(q) for q in sidecar["question_ids"]],
        list(sidecar["question_digests"]),
        rows,
        BatchStats.from_dict(sidecar["stats"]),
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shard_files(output_dir: str | Path) -> list[Path]:
    """The finished shards of a folder in index order."""
    files = [p for p in Path(output_dir).glob("shard-*.parquet") if SHARD_PATTERN.fullmatch(p.name)]
    return sorted(files, key=lambda p: int(SHARD_PATTERN.fullmatch(p.name).group(1)))


def trusted_shards(output_dir: Path) -> tuple[list[ShardInfo], int]:
    """Every finished shard that passes `verify_shard`, and the first free shard index.

    A shard that fails (a truncated or replaced Parquet file, a sidecar that disagrees) is moved aside as
    `*.rejected` with a warning naming it; its questions are then simply not covered and get labelled again.
    """
    trusted, next_index = [], 0
    for path in shard_files(output_dir):
        index = int(SHARD_PATTERN.fullmatch(path.name).group(1))
        next_index = max(next_index, index + 1)
        try:
            trusted.append(verify_shard(path))
        except LegacyShardError:
            raise  # readable work of an older version: refuse rather than move it aside and pay for it again
        except ShardError as err:
            for bad in (path, path.with_suffix(".json")):
                if bad.exists():
                    os.replace(bad, bad.with_name(bad.name + ".rejected"))
            warnings.warn(
                f"{err}; moved aside as {path.name}.rejected, its questions are labelled again", stacklevel=3
            )
    for rejected in output_dir.glob("shard-*.parquet.rejected"):  # never reuse the index of a rejected shard
        next_index = max(next_index, int(rejected.name.split("-")[1].split(".")[0]) + 1)
    return trusted, next_index


def covered_questions(shards: list[ShardInfo], ids: list[str], digests: list[str]) -> set[str]:
    """Ids already labelled; refuses a question whose content changed since (or that two shards both cover)."""
    covered: dict[str, tuple[str, Path]] = {}
    for shard in shards:
        for qid, digest in zip(shard.question_ids, shard.question_digests):
            if qid in covered:
                raise ShardError(f"question {qid!r} is covered by both {covered[qid][1]} and {shard.path}")
            covered[qid] = (digest, shard.path)
    for row, (qid, digest) in enumerate(zip(ids, digests)):
        if qid in covered and covered[qid][0] != digest:
            raise RecordError(
                row,
                qid,
                f"this question's content changed since {covered[qid][1].name} labelled it (digest "
                f"{covered[qid][0][:12]} -> {digest[:12]}); restore the old inputs or label into another output_dir",
            )
    return set(covered)


def plan_shards(
    output_dir: Path, pins: Mapping[str, Any], ids: list[str], digests: list[str], shard_size: int
) -> list[tuple[int, list[int]]]:
    """Pin the settings, drop what a killed run left half-written, verify the shards, and cut the questions not yet
    covered into new shards `(index, question positions)`. Run once per folder, under its lock (rank 0)."""
    pin_settings(output_dir / CONFIG_FILE, pins)
    for stale in output_dir.glob(".shard-*.tmp"):  # left by a run killed mid-write; never a finished shard
        stale.unlink()
    shards, next_index = trusted_shards(output_dir)
    covered = covered_questions(shards, ids, digests)
    todo = [j for j, qid in enumerate(ids) if qid not in covered]
    chunks = [todo[start : start + shard_size] for start in range(0, len(todo), shard_size)]
    return [(next_index + k, chunk) for k, chunk in enumerate(chunks)]


def folder_stats(output_dir: Path) -> BatchStats:
    """The labelling stats of every trusted shard of a folder: earlier runs' and every rank's."""
    total = BatchStats()
    for shard in trusted_shards(output_dir)[0]:
        total.add(shard.stats)
    return total


def load_labelled(output_dir: str | Path):
    """The labelled dataset of all shards in `output_dir`, in shard order.

    Empty shards (questions that produced no record) are skipped; an unreadable shard, one whose row count or
    content differs from its sidecar, or a question two shards cover raises a `ShardError` naming the files.
    """
    from datasets import Dataset, load_dataset

    files = shard_files(output_dir)
    if not files:
        raise FileNotFoundError(f"no shard-*.parquet in {output_dir}")
    non_empty, covered = [], {}
    for path in files:
        try:
            info = verify_shard(path) if path.with_suffix(".json").exists() else None
            rows = info.num_rows if info is not None else parquet_rows(path)
        except LegacyShardError:  # an older folder still loads; only resuming into it needs the ids
            info, rows = None, parquet_rows(path)
        for qid in info.question_ids if info is not None else ():
            if qid in covered:  # two runs wrote the same question: serving both would double its rows
                raise ShardError(f"question {qid!r} is covered by both {covered[qid]} and {path}")
            covered[qid] = path
        if rows:
            non_empty.append(path)
    features = output_features()
    if not non_empty:
        return Dataset.from_dict({name: [] for name in features}, features=features)
    try:
        return load_dataset("parquet", data_files=[str(p) for p in non_empty], split="train", features=features)
    except Exception as err:
        import pyarrow.parquet as pq

        for path in non_empty:  # find the shard to blame: the footer was fine, a row group is not
            try:
                pq.read_table(path)
            except Exception as shard_err:
                raise ShardError(f"{path}: unreadable Parquet shard ({shard_err})") from err
        raise
