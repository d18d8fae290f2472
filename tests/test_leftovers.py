"""Leftovers a rerun must not trust (issue 19, minor cases): a tts part file whose output the user deleted, and a
labelling shard replaced by another with the same row count."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trl_vlprm.cli import run as cli_run
from trl_vlprm.labeling.shards import ShardError, load_labelled, shard_files, verify_shard
from trl_vlprm.scripts.tts import main as tts_main
from trl_vlprm.scripts.tts import make_parser
from trl_vlprm.utils.ranks import OrphanPartsError, part_path
from trl_vlprm.utils.resume import read_results

REPO = Path(__file__).resolve().parents[1]
TTS = ["--dataset", "puzzles", "--num_questions", "6", "--policy", "scripted", "--scorer", "oracle",
       "--strategy", "best_of_n", "--n", "2"]  # fmt: skip


def test_a_part_file_whose_output_was_deleted_is_not_merged_into_a_new_run(tmp_path, capsys):
    output = tmp_path / "tts.jsonl"
    assert cli_run("tts", [*TTS, "--output_file", str(output)]) == 0
    # What a killed 2-process run leaves: rank 1's part file; then the user deletes the output to start anew.
    part_path(output, 1).write_text("".join(line for line in output.open() if line.strip()))
    output.unlink()
    with pytest.raises(OrphanPartsError, match=r"tts.jsonl.rank-1.*tts.jsonl does not exist"):
        tts_main(*make_parser().parse_args_and_config([*TTS, "--output_file", str(output)]))
    with pytest.raises(SystemExit):  # the CLI says it in one line
        cli_run("tts", [*TTS, "--output_file", str(output)])
    assert "remove the part files to start anew" in capsys.readouterr().err
    assert not output.exists() or not read_results(output)  # nothing of the old run came back


def test_a_shard_replaced_with_the_same_row_count_is_not_trusted(tmp_path):
    args = ["--config", str(REPO / "recipes/configs/label_testbed.yaml"), "--num_questions", "4", "--shard_size", "2",
            "--show_progress", "false", "--output_dir", str(tmp_path)]  # fmt: skip
    assert cli_run("label", args) == 0
    before = load_labelled(tmp_path)
    first = shard_files(tmp_path)[0]
    table = pq.read_table(first)
    # Same rows, same schema, other content: every step label inverted.
    labels = [[not label for label in row] for row in table["labels"].to_pylist()]
    column = table.schema.get_field_index("labels")
    pq.write_table(table.set_column(column, "labels", pa.array(labels, table.schema.field("labels").type)), first)
    assert pq.read_metadata(first).num_rows == table.num_rows > 0
    with pytest.raises(ShardError, match=r"shard-00000.parquet: its content differs from what its sidecar records"):
        verify_shard(first)
    with pytest.warns(UserWarning, match="moved aside"):
        assert cli_run("label", args) == 0  # the rerun labels its questions again
    assert (tmp_path / "shard-00000.parquet.rejected").exists()
    after = load_labelled(tmp_path)
    assert sorted(after["question_id"]) == sorted(before["question_id"])
    # The scripted policy and judge are seeded: relabelled, the questions get their first labels back, not the flip.
    key = lambda d: sorted(zip(d["question_id"], map(str, d["completions"]), map(str, d["labels"])))  # noqa: E731
    assert key(after) == key(before)
