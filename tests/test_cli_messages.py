"""A newcomer's mistakes, each answered by one line that names the file / row / field and the fix; outputs of one
command fed to another are named for what they are; `--help` shows this library's fields first, the names a named
field takes, and blank or newline defaults readably.

Each test below failed on b146d26 (the message quoted in its docstring was what a user saw then).
"""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest

from trl_vlprm import cli
from trl_vlprm.utils.errors import UsageError


def _one_line_failure(argv, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 1
    # progress bars (a dataset's "Generating train split") may precede it; the failure is one line, the last
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "it/s]" not in line and "s/s]" not in line]
    assert len(err) == 1 or (len(err) > 1 and "examples" in " ".join(err[:-1])), err
    return err[-1]


@pytest.fixture(scope="module")
def saved_prms(tiny_qwen2_vl_path, tmp_path_factory):
    """A value-head and a generative-head PRM saved from the tiny base model (untrained: only their heads matter)."""
    from trl_vlprm.modeling.heads import load_prm

    folders = {}
    for head in ("value", "generative"):
        folder = tmp_path_factory.mktemp("prms") / f"prm-{head}"
        load_prm(str(tiny_qwen2_vl_path), head=head).save_pretrained(folder)
        for path in tiny_qwen2_vl_path.iterdir():  # the tokenizer and image processor, as a trained PRM has them
            if not (folder / path.name).exists():
                shutil.copy(path, folder / path.name)
        assert json.loads((folder / "config.json").read_text())["prm_head"] == head
        folders[head] = folder
    return folders


@pytest.mark.parametrize("saved, asked", [("generative", "value"), ("value", "generative")])
def test_a_head_contradicting_the_checkpoint_is_refused_naming_both(saved_prms, saved, asked):
    """Before: a generative PRM loaded with head='value' scored with a new random value head (no error), and a value
    PRM loaded with head='generative' failed with `BackboneNotLoadedError: 1 backbone tensor(s) ... ['lm_head.weight']`
    without naming the checkpoint's head."""
    from trl_vlprm.modeling.heads import load_prm

    with pytest.raises(UsageError) as err:
        load_prm(str(saved_prms[saved]), head=asked)
    assert str(err.value) == (
        f"{saved_prms[saved]} is a {saved}-head PRM (its config.json records prm_head={saved!r}) but head={asked!r} "
        f"was asked for; leave the head unset (or set head={saved!r}) to score with the head it was trained"
    )
    assert load_prm(str(saved_prms[saved]), head=saved).config.prm_head == saved  # the agreeing head still loads


def test_through_the_cli_a_contradicting_head_is_one_line(saved_prms, tmp_path, capsys):
    spec = f"prm:{saved_prms['generative']},head=value"
    argv = ["tts", "--dataset", "puzzles", "--num_questions", "1", "--n", "2", "--scorer", spec,
            "--output_file", str(tmp_path / "out.jsonl")]  # fmt: skip
    line = _one_line_failure(argv, capsys)
    assert line.startswith("trl-vlprm tts: ") and "is a generative-head PRM" in line and "head='value'" in line
    assert not (tmp_path / "out.jsonl").exists()


def test_a_new_value_head_explains_the_load_report(tiny_qwen2_vl_path, capfd, caplog):
    """Before: transformers' LOAD REPORT table (`lm_head.weight | UNEXPECTED`, `score.weight | MISSING`) with no word
    that this is what starting a value head from a base model means."""
    from trl_vlprm.modeling.heads import load_prm

    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="trl_vlprm"):
        model = load_prm(str(tiny_qwen2_vl_path), head="value")
    err = capfd.readouterr().err  # transformers' own handler writes to stderr
    assert model.config.prm_head == "value"
    assert "LOAD REPORT" not in err and "UNEXPECTED" not in err, err
    explained = f"load_prm: {tiny_qwen2_vl_path} is a base model: its LM head (lm_head.weight) is left out"
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith(explained)], caplog.text


def test_a_misspelt_local_model_folder_says_no_such_folder(tmp_path, monkeypatch):
    """Before: `model 'outputs/prm-valu' (revision main): no config.json in the Hub cache ... (HF_HUB_OFFLINE=1)`."""
    from trl_vlprm.modeling.hub import require_model

    (tmp_path / "outputs" / "prm-value").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cases = {
        "outputs/prm-valu": f"model 'outputs/prm-valu': no such folder ({tmp_path / 'outputs/prm-valu'}); did you "
        "mean outputs/prm-value?",
        "./outputs/nothing-like-it": f"model './outputs/nothing-like-it': no such folder "
        f"({tmp_path / 'outputs/nothing-like-it'})",
        "/no-such-root/a/b": "model '/no-such-root/a/b': no such folder (/no-such-root/a/b); the nearest existing "
        "folder is /",
    }
    for name, message in cases.items():
        with pytest.raises(FileNotFoundError) as err:
            require_model(name)
        assert str(err.value) == message
    with pytest.raises(FileNotFoundError, match="Hub"):  # an "org/name" that is no folder here is a repo id
        require_model("some-org/some-model")


@pytest.fixture(scope="module")
def tts_results(tmp_path_factory):
    path = tmp_path_factory.mktemp("tts") / "results.jsonl"
    assert cli.main(["tts", "--dataset", "puzzles", "--num_questions", "2", "--scorer", "random", "--n", "2",
                     "--output_file", str(path)]) == 0  # fmt: skip
    return path


def test_a_tts_results_file_where_records_are_expected_is_named(tts_results, saved_prms, capsys):
    """Before: `train` ended in a traceback (`ValueError: Input column ['completions'] not in the dataset`), `check
    --data` in another, and `tts` read it as questions."""
    what = f"{tts_results} is a `trl-vlprm tts` results file (per question: candidates, chosen answer)"
    argv = ["train", "--dataset_name", str(tts_results), "--model_name_or_path", "unused", "--output_dir",
            str(tts_results.parent / "prm"), "--use_cpu", "true"]  # fmt: skip
    line = _one_line_failure(argv, capsys)
    assert line.startswith(f"trl-vlprm train: {what}, without column(s) [") and "'completions', 'labels']" in line
    assert line.endswith("; expected step-labelled records (prompt, images, completions, labels), as `trl-vlprm "
                         "label` writes")  # fmt: skip
    line = _one_line_failure(["check", "--prm", str(saved_prms["value"]), "--data", str(tts_results)], capsys)
    assert line.startswith(f"trl-vlprm check: {what}, without column(s) [") and "'completions', 'labels']" in line
    line = _one_line_failure(["tts", "--dataset", str(tts_results), "--output_file", str(tts_results) + "2"], capsys)
    assert line.startswith(f"trl-vlprm tts: {what}") and line.endswith(
        "; expected question records (id, prompt, images, answer), as `trl-vlprm puzzles` writes"
    )


def test_labeller_and_testbed_solution_ids_group_by_question(tmp_path):
    """Before: the labeller wrote `<question>/r<k>` ids while the guard-rails grouped by the id before '#', so `check
    --data <labels>` found no question with 2 solutions (a traceback after the image-swap pass)."""
    from trl_vlprm.data.schema import question_key
    from trl_vlprm.eval.guardrails import group_by_question
    from trl_vlprm.labeling import LabelConfig, build_dataset, load_labelled
    from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles, sample_supervision

    config = LabelConfig(output_dir=str(tmp_path / "labels"), num_rollouts=3, judge="none", rule="mc_only",
                         mc_mode="every_step", mc_num_completions=2, show_progress=False)  # fmt: skip
    questions = generate_puzzles(4, seed=3)
    build_dataset(questions, ScriptedPolicy(0.3, 0.3, seed=3), config)
    labelled = list(load_labelled(config.output_dir))
    assert {row["id"] for row in labelled} <= {f"{q}#{k}" for q in questions["id"] for k in range(3)}
    groups = group_by_question(labelled)
    assert len(groups) == len({row["question_id"] for row in labelled}) >= 3
    assert all(len({question_key(r) for r in g}) == 1 and len({r["question_id"] for r in g}) == 1 for g in groups)
    supervision = list(sample_supervision(3, 2, seed=0))
    assert sorted(len(g) for g in group_by_question(supervision)) == [2, 2, 2]
    # rows written before this change (`/r<k>` ids) still group, by their question_id column
    old = [{**row, "id": row["id"].replace("#", "/r")} for row in labelled]
    assert [len(g) for g in group_by_question(old)] == [len(g) for g in groups]


def test_help_shows_own_fields_first_named_choices_and_readable_defaults():
    """Before: `train --help` began with 150 usage lines and TRL's dataset fields, the PRM's fields sat among
    ~200 TrainingArguments ones, `--strategy` pointed at a Python registry, and `--step_separator` showed a blank
    default (a newline)."""
    import importlib

    from trl_vlprm.scripts import NAMED_CHOICES, named_choices

    text = importlib.import_module("trl_vlprm.scripts.train").make_parser(prog="trl-vlprm train").format_help()
    assert text.splitlines()[0] == "usage: trl-vlprm train [--config FILE.yaml] [--<field> VALUE ...]"
    order = [
        line.split(" (")[0]
        for line in text.splitlines()
        if re.fullmatch(r"\w+ \((this library|inherited from \w+)\):", line)
    ]
    assert order == ["PRMScriptArguments", "VLPRMConfig", "ScriptArguments", "ModelConfig", "TrainingArguments"]
    own = text.index("VLPRMConfig (this library):")
    assert own < text.index("--perception_loss_weight") < text.index("TrainingArguments (inherited from transformers)")
    assert own < text.index("--step_separator") and '(default: "\\n")' in text
    tts = importlib.import_module("trl_vlprm.scripts.tts").make_parser(prog="tts").format_help()
    strategies = named_choices(NAMED_CHOICES["strategy"])
    assert {"best_of_n", "beam_search", "dvts"} <= set(strategies)
    assert f"Names: {', '.join(strategies)}." in " ".join(tts.split())
    label = " ".join(importlib.import_module("trl_vlprm.scripts.label").make_parser(prog="l").format_help().split())
    assert f"Names: {', '.join(named_choices(NAMED_CHOICES['rule']))}." in label
    assert all(named_choices(target) for target in NAMED_CHOICES.values())  # every entry resolves (renames show here)
