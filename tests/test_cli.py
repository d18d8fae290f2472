"""One command line: every `trl-vlprm` command reads `--config file.yaml` and flags into its dataclasses (a flag
overriding the file), answers `--help`, and reports a user's mistake as one line with exit status 1."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from trl_vlprm import cli
from trl_vlprm.scripts import COMMANDS

# command -> (YAML lines, extra flags, (dataclass index, field, value the flag or file must have set))
CONFIGS = {
    "puzzles": ("out: a.parquet\nn: 7\n", ["--seed", "3"], [(0, "n", 7), (0, "seed", 3), (0, "out", "a.parquet")]),
    "label": ("num_questions: 5\nrule: consensus\n", ["--num_questions", "9"], [(0, "num_questions", 9),
                                                                              (0, "rule", "consensus")]),
    "train": ("dataset_name: d\nlearning_rate: 0.5\noutput_dir: o\n", ["--lora_r", "4"],
              [(0, "dataset_name", "d"), (1, "learning_rate", 0.5), (2, "lora_r", 4)]),
    "tts": ("strategy: best_of_n\nn: 3\n", ["--n", "5"], [(0, "strategy", "best_of_n"), (1, "n", 5)]),
    "eval": ("n_values: [1, 2]\nseed: 4\n", ["--seed", "6"], [(0, "n_values", [1, 2]), (0, "seed", 6)]),
    "check": ("prm: some/folder\nlimit: 3\n", ["--strict"], [(0, "prm", "some/folder"), (0, "limit", 3),
                                                            (0, "strict", True)]),
}  # fmt: skip


def test_every_command_is_tested_here():
    assert set(CONFIGS) == set(COMMANDS) == {"puzzles", "label", "train", "tts", "eval", "check"}


@pytest.mark.parametrize("command", list(CONFIGS))
def test_config_file_and_flags_reach_the_dataclasses(command, tmp_path):
    text, flags, expected = CONFIGS[command]
    config = tmp_path / f"{command}.yaml"
    config.write_text(text)
    module = importlib.import_module(f"trl_vlprm.scripts.{command}")
    parsed = module.make_parser(prog=f"trl-vlprm {command}").parse_args_and_config(["--config", str(config), *flags])
    assert len(expected) >= 2
    for index, name, value in expected:
        assert getattr(parsed[index], name) == value, (command, name)
    assert callable(module.main) and isinstance(module.EXPECTED_ERRORS, tuple)


@pytest.mark.parametrize("command", list(CONFIGS))
def test_make_parser_composes_under_one_top_level_parser(command):
    """TRL's `make_parser(subparsers)`: the command's parser can also be a subparser of another TrlParser."""
    from trl import TrlParser

    top = TrlParser(prog="x")
    module = importlib.import_module(f"trl_vlprm.scripts.{command}")
    sub = module.make_parser(top.add_subparsers(dest="command"))
    assert isinstance(sub, TrlParser) and sub.dataclass_types


def test_puzzles_with_solutions_says_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "s.parquet"
    assert cli.main(["puzzles", "--n", "4", "--solutions", "3", "--families", "learnable", "--out", str(out)]) == 0
    assert "wrote 12 solutions of 4 puzzles ({'shape_sides': 6, 'shape_colour': 6})" in capsys.readouterr().out


def test_help_of_a_command_lists_its_fields_in_snake_case():
    result = subprocess.run(
        [sys.executable, "-m", "trl_vlprm", "puzzles", "--help"], capture_output=True, text=True, check=True
    )
    assert "--perception_error_rate" in result.stdout and "--image_size" in result.stdout


def test_a_users_mistake_is_one_line_and_exit_status_1(tmp_path, capsys):
    argv = ["tts", "--dataset", "puzzles", "--num_questions", "2", "--policy", "scripted", "--scorer", "random",
            "--strategy", "best_of_n", "--n", "2", "--output_file", str(tmp_path / "out.jsonl")]  # fmt: skip
    assert cli.main(argv) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # the same file, other settings: refused, not mixed
        cli.main([*argv, "--perception_error_rate", "0.0"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trl-vlprm tts: ") and "perception_error_rate" in err[0], err


def test_recipes_are_thin_wrappers_around_the_same_main():
    root = Path(__file__).resolve().parents[1] / "recipes"
    for recipe, command in [("train.py", "train"), ("tts.py", "tts"), ("eval_tts.py", "eval"),
                            ("build_dataset.py", "label")]:  # fmt: skip
        text = (root / recipe).read_text()
        assert f"from trl_vlprm.scripts.{command} import" in text and f'run("{command}"' in text, recipe
        assert len(text.splitlines()) < 25, recipe
