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
from trl_vlprm.testbed import PUZZLE_FAMILIES, TIERS

# command -> (YAML lines, extra flags, (dataclass index, field, value the flag or file must have set))
CONFIGS = {
    "puzzles": ("out: a.parquet\nn: 7\n", ["--seed", "3"], [(0, "n", 7), (0, "seed", 3), (0, "out", "a.parquet")]),
    "label": ("num_questions: 5\nrule: consensus\n", ["--num_questions", "9"], [(0, "num_questions", 9),
                                                                              (0, "rule", "consensus")]),
    "train": ("dataset_name: d\nlearning_rate: 0.5\noutput_dir: o\n", ["--lora_r", "4"],
              [(0, "dataset_name", "d"), (1, "learning_rate", 0.5), (2, "lora_r", 4)]),
    "grpo": ("prm_model_path: p\nprm_aggregation: mean\nuse_cpu: true\n", ["--num_generations", "4"],
             [(0, "prm_model_path", "p"), (0, "prm_aggregation", "mean"), (1, "num_generations", 4)]),
    "tts": ("strategy: best_of_n\nn: 3\n", ["--n", "5"], [(0, "strategy", "best_of_n"), (1, "n", 5)]),
    "eval": ("n_values: [1, 2]\nseed: 4\n", ["--seed", "6"], [(0, "n_values", [1, 2]), (0, "seed", 6)]),
    "check": ("prm: some/folder\nlimit: 3\n", ["--strict"], [(0, "prm", "some/folder"), (0, "limit", 3),
                                                            (0, "strict", True)]),
    "view": ("inputs: [a.jsonl]\nselection: majority\n", ["--page_size", "7"], [(0, "inputs", ["a.jsonl"]),
                                                                           (0, "selection", "majority"),
                                                                           (0, "page_size", 7)]),
}  # fmt: skip


def test_every_command_is_tested_here():
    assert set(CONFIGS) == set(COMMANDS) == {"puzzles", "label", "train", "grpo", "tts", "eval", "check", "view"}


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
    assert callable(module.main)


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
                            ("build_dataset.py", "label"), ("grpo.py", "grpo")]:  # fmt: skip
        text = (root / recipe).read_text()
        assert f"from trl_vlprm.scripts.{command} import" in text and f'run("{command}"' in text, recipe
        assert len(text.splitlines()) < 25, recipe


def _console(*argv, cwd):
    script = Path(sys.executable).with_name("trl-vlprm")  # the installed console script, as a user runs it
    return subprocess.run([str(script), *argv], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_a_bad_setting_is_one_line_naming_it_through_the_console_script(tmp_path):
    """A typo'd name (checked by a config's `__post_init__` while parsing, or by a registry while running), an
    unknown YAML field and a missing config file: one line naming the field or file and what is available, exit 1.
    These printed a traceback before (the parse ran outside the CLI's error handling)."""
    (tmp_path / "typo.yaml").write_text("out: p.parquet\nn: 2\nfamilies: color_grid\nimage_sise: 64\n")
    cases = [
        (["tts", "--dataset", "puzzles", "--strategy", "beam_serch"],
         "trl-vlprm tts: TTSArguments.strategy='beam_serch': unknown strategy 'beam_serch'; available: beam_search, "
         "best_of_n, dvts, greedy, majority, step_selection, weighted_vote; did you mean 'beam_search'?"),
        (["puzzles", "--config", "typo.yaml"],
         "trl-vlprm puzzles: typo.yaml: unknown field 'image_sise' (did you mean image_size?); "
         "`trl-vlprm puzzles --help` lists every field"),
        (["puzzles", "--out", "p.parquet", "--families", "color_grid,mazes"],
         f"trl-vlprm puzzles: unknown puzzle family 'mazes'; available: {', '.join(sorted(PUZZLE_FAMILIES.names()))} "
         f"(or a tier: {', '.join(TIERS)})"),
        (["puzzles", "--config", "missing.yaml"], "trl-vlprm puzzles: no such file or folder: missing.yaml"),
    ]  # fmt: skip
    for argv, expected in cases:
        result = _console(*argv, cwd=tmp_path)
        assert (result.returncode, result.stderr.strip()) == (1, expected), result.stderr
    assert not (tmp_path / "p.parquet").exists()


def test_a_bug_keeps_its_traceback_and_the_variable_shows_a_users_one(monkeypatch, capsys):
    """Only a user's mistakes are shortened: a ValueError raised by a command's code (a bug) propagates, and
    TRL_VLPRM_TRACEBACK=1 re-raises a user's mistake too."""
    import types

    from trl import TrlParser

    from trl_vlprm.registry import UnknownNameError

    def make_parser(prog=None):
        return TrlParser((), prog=prog)

    def main():
        raise ValueError("an internal invariant broke")

    fake = types.ModuleType("trl_vlprm.scripts.fake")
    fake.make_parser, fake.main = make_parser, main
    monkeypatch.setitem(sys.modules, "trl_vlprm.scripts.fake", fake)
    with pytest.raises(ValueError, match="an internal invariant broke"):
        cli.run("fake", [])

    def main():
        raise UnknownNameError("unknown thing 'x'; available: y")

    fake.main = main
    with pytest.raises(SystemExit):
        cli.run("fake", [])
    assert capsys.readouterr().err == "trl-vlprm fake: unknown thing 'x'; available: y\n"
    monkeypatch.setenv("TRL_VLPRM_TRACEBACK", "1")
    with pytest.raises(UnknownNameError):
        cli.run("fake", [])


def test_missing_inputs_are_one_line_naming_them(tmp_path):
    """A PRM folder and a dataset that are not there, and a record without its labels: named, exit 1 (each printed
    a traceback before; the dataset's message named neither the setting's meaning nor the formats read)."""
    from trl_vlprm.data.loading import load_records

    result = _console("check", "--prm", "./no-such-prm", cwd=tmp_path)  # a path, not a repo id
    assert result.returncode == 1 and result.stderr.startswith(
        f"trl-vlprm check: model './no-such-prm': no such folder ({tmp_path.resolve() / 'no-such-prm'})"
    ), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # and no testbed was sampled before the PRM was looked for
    with pytest.raises(FileNotFoundError, match=r"dataset '\S+no-such-data': no such local folder or file \(a saved"):
        load_records(str(tmp_path / "no-such-data"))


def test_every_recipe_config_names_only_fields_of_its_command(tmp_path):
    """Each YAML in recipes/configs passes the CLI's field check and parses (GPU ones with CPU overrides), so a
    renamed field cannot leave a config that fails only when a user runs it."""
    from trl_vlprm.cli import check_config_fields

    commands = {"eval_tts_": "eval", "grpo_": "grpo", "label_": "label", "tts_": "tts", "vlprm_": "train"}
    configs = sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").glob("*.yaml"))
    assert len(configs) >= 13
    for config in configs:
        command = next(c for prefix, c in commands.items() if config.name.startswith(prefix))
        parser = importlib.import_module(f"trl_vlprm.scripts.{command}").make_parser(prog=command)
        check_config_fields(parser, ["--config", str(config)], command)
        cpu = ["--use_cpu", "true", "--bf16", "false"] if command in ("train", "grpo") else []
        parsed = parser.parse_args_and_config(["--config", str(config), *cpu])
        assert parsed and all(p is not None for p in parsed), config.name
    typo = tmp_path / "typo.yaml"
    typo.write_text("n_value: [1, 2]\n")
    with pytest.raises(ValueError, match=r"typo.yaml: unknown field 'n_value' \(did you mean n_values\?\)"):
        check_config_fields(
            importlib.import_module("trl_vlprm.scripts.eval").make_parser(), ["--config", str(typo)], "eval"
        )
