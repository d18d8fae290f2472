"""`trl-vlprm puzzles` writes a dataset that loads back with an Image feature and the generator's rows."""

from __future__ import annotations

import subprocess
import sys

import pytest
from datasets import Image, List, load_dataset, load_from_disk

from trl_vlprm import cli
from trl_vlprm.testbed import generate_puzzles


def as_bytes(dataset):
    return [row["images"][0]["bytes"] for row in dataset.cast_column("images", List(Image(decode=False)))]


def same_rows(loaded, expected):
    assert loaded.remove_columns("images").to_list() == expected.remove_columns("images").to_list()
    assert as_bytes(loaded) == as_bytes(expected)


def test_parquet_output_round_trips_with_image_feature(tmp_path, capsys):
    out = tmp_path / "sub" / "puzzles.parquet"
    assert cli.main(["puzzles", "--n", "12", "--seed", "1", "--out", str(out)]) == 0
    assert "wrote 12 puzzles" in capsys.readouterr().out
    loaded = load_dataset("parquet", data_files=str(out), split="train")
    assert loaded.features["images"] == List(Image())
    same_rows(loaded, generate_puzzles(12, seed=1))
    assert sorted(p.name for p in out.parent.iterdir()) == ["puzzles.parquet"]  # no temporary file left


def test_folder_output_is_replaced_atomically(tmp_path):
    out = tmp_path / "puzzles"
    cli.main(["puzzles", "--n", "6", "--seed", "0", "--out", str(out), "--families", "clock,counting"])
    cli.main(["puzzles", "--n", "8", "--seed", "2", "--out", str(out), "--image_size", "112"])
    loaded = load_from_disk(str(out))
    assert loaded.features["images"] == List(Image())
    same_rows(loaded, generate_puzzles(8, seed=2, image_size=112))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["puzzles"]


def test_label_forwards_its_arguments(monkeypatch, tmp_path):
    import trl_vlprm.scripts.label as label

    config = tmp_path / "x.yaml"
    config.write_text("num_questions: 2\nrule: consensus\n")
    seen = []
    monkeypatch.setattr(label, "main", lambda config, judge_config=None: seen.append(config))
    assert cli.main(["label", "--config", str(config), "--num_questions", "4"]) == 0
    # the YAML file sets the defaults, a flag overrides them
    assert [(c.num_questions, c.rule) for c in seen] == [(4, "consensus")]


def test_bad_arguments_exit_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["puzzles", "--n", "3"])  # --out is required
    with pytest.raises(SystemExit):
        cli.main([])


def test_python_dash_m_entry_point(tmp_path):
    out = tmp_path / "p.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "trl_vlprm", "puzzles", "--n", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 3 puzzles" in result.stdout
    assert load_dataset("parquet", data_files=str(out), split="train").num_rows == 3
