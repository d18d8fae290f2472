"""eval_tts never reuses samples or scores made by something else, and never folds two benchmarks into one row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trl_vlprm.data.schema import RecordError
from trl_vlprm.eval.eval_tts import EvalTTSConfig, policy_pins, run
from trl_vlprm.eval.specs import spec_pin
from trl_vlprm.eval.tts_sweep import run_sweep, sample_benchmark, samples_path
from trl_vlprm.guidance.backends import SCORER_BACKENDS, Backend, build_scorer
from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles
from trl_vlprm.utils.resume import OutputLockedError, SettingsMismatchError, output_lock

SELECTIONS = ["first", "best_of_n:min", "weighted_vote:min", "pass@n"]


def config(output_dir, **overrides):
    settings = dict(
        benchmarks=["testbed:0,limit=16"],
        policies=["p@scripted:perception_error_rate=0.35,reasoning_error_rate=0.25"],
        scorers=["s@oracle"],
        selections=SELECTIONS,
        n_values=[1, 4],
        num_subsamples=2,
        output_dir=str(output_dir),
    )
    settings.update(overrides)
    return EvalTTSConfig(**settings)


def table(rows):
    return {(r["benchmark"], r["policy"], r["scorer"], r["selection"], r["n"]): r["accuracy"] for r in rows}


def test_a_scorer_swapped_behind_its_label_is_scored_again(tmp_path):
    run(config(tmp_path / "run", scorers=["s@random:seed=1"]))
    rescored = table(run(config(tmp_path / "run", scorers=["s@oracle"])))
    fresh = table(run(config(tmp_path / "fresh", scorers=["s@oracle"])))
    assert rescored == fresh
    # and the oracle really differs from the random scorer it replaced: it picks an error-free solution when any
    key = ("testbed", "p", "s", "best_of_n:min", 4)
    assert rescored[key] == rescored[("testbed", "p", "-", "pass@n", 4)] > rescored[("testbed", "p", "-", "first", 1)]


class FolderScorer:
    """A 'checkpoint' folder holding one word: "oracle" scores steps by their gold, "inverse" by the opposite."""

    def __init__(self, folder):
        self.inverse = (Path(folder) / "weights.txt").read_text() == "inverse"

    def score(self, question, candidates):
        return [[float(g != self.inverse) for g in c.gold_correct] for c in candidates]


def test_a_scorer_retrained_into_the_same_folder_is_scored_again(tmp_path, monkeypatch):
    folder = Backend(lambda args, kwargs, seed: FolderScorer(args[0]), argument="model")
    monkeypatch.setitem(SCORER_BACKENDS._entries, "folder", folder)  # registered for this test only
    checkpoint = tmp_path / "prm"
    checkpoint.mkdir()
    (checkpoint / "weights.txt").write_text("inverse")
    before = spec_pin(f"folder:{checkpoint}", 0)
    worse = table(run(config(tmp_path / "run", scorers=[f"s@folder:{checkpoint}"])))
    (checkpoint / "weights.txt").write_text("oracle")  # retrained in place
    assert spec_pin(f"folder:{checkpoint}", 0) != before
    better = table(run(config(tmp_path / "run", scorers=[f"s@folder:{checkpoint}"])))
    assert better == table(run(config(tmp_path / "fresh", scorers=["s@oracle"])))
    key = ("testbed", "p", "s", "best_of_n:min", 4)
    assert worse[key] < better[key]


def test_a_policy_swapped_behind_its_label_is_refused(tmp_path):
    run(config(tmp_path))
    other = ["p@scripted:perception_error_rate=0.0,reasoning_error_rate=0.0"]
    with pytest.raises(
        SettingsMismatchError, match="policy.spec: .*perception_error_rate=0.35.* -> .*perception_error_rate=0.0"
    ):
        run(config(tmp_path, policies=other))
    with pytest.raises(SettingsMismatchError, match=r"samples/testbed__p\.jsonl .*policy\.seed: 0 -> 1"):
        run(config(tmp_path, seed=1))


def test_two_benchmarks_with_one_name_stay_apart(tmp_path):
    with pytest.raises(ValueError, match="share the label 'testbed'"):
        run(config(tmp_path, benchmarks=["testbed:0,limit=8", "testbed:2,limit=6"]))
    rows = run(config(tmp_path, benchmarks=["a@testbed:0,limit=8", "b@testbed:2,limit=6"]))
    assert {(r["benchmark"], r["num_questions"]) for r in rows} == {("a", 8), ("b", 6)}
    assert len(rows) == 2 * len(SELECTIONS) * 2  # both benchmarks, every selection, both N
    for label, seed, limit in (("a", 0, 8), ("b", 2, 6)):
        ids = [json.loads(line)["id"] for line in (tmp_path / "samples" / f"{label}__p.jsonl").open()]
        assert ids == list(generate_puzzles(limit, seed=seed, image_size=112)["id"])


def test_changed_questions_and_concurrent_writers_are_refused(tmp_path):
    questions = list(generate_puzzles(3, seed=0, image_size=112))
    path = tmp_path / "samples.jsonl"
    scorers = {"s": build_scorer("oracle", 0)}
    sample_benchmark(questions, ScriptedPolicy(seed=0), scorers, 2, path)
    questions[2] = {**questions[2], "prompt": questions[2]["prompt"] + " (edited)"}
    with pytest.raises(RecordError, match="content changed"):
        sample_benchmark(questions, ScriptedPolicy(seed=0), scorers, 2, path)
    with output_lock(path):
        with pytest.raises(OutputLockedError, match="another process"):
            sample_benchmark(questions[:2], ScriptedPolicy(seed=0), scorers, 2, path)


def test_a_sweep_never_rewrites_a_samples_file_another_process_is_writing(tmp_path):
    questions = list(generate_puzzles(4, seed=0, image_size=112))
    scorers = {"s": build_scorer("oracle", 0)}
    path = samples_path(tmp_path, "b", "p")
    sample_benchmark(questions[:2], ScriptedPolicy(seed=0), scorers, 2, path)
    with path.open("a") as f:
        f.write('{"id": "half a line')  # the other process is mid-write
    before = path.read_bytes()
    with output_lock(path):
        with pytest.raises(OutputLockedError):
            run_sweep({"b": questions}, {"p": ScriptedPolicy(seed=0)}, scorers, ["majority"], [1], tmp_path)
    assert path.read_bytes() == before


def test_recipe_exits_non_zero_with_the_reason(tmp_path, capsys):
    from trl_vlprm.cli import run

    argv = ["--benchmarks", "testbed:0,limit=4", "--scorers", "s@oracle", "--selections", "majority",
            "--n_values", "1", "2", "--num_subsamples", "1", "--output_dir", str(tmp_path)]  # fmt: skip
    run("eval", [*argv, "--policies", "p@scripted:perception_error_rate=0.1"])
    with pytest.raises(SystemExit) as exit_info:
        run("eval", [*argv, "--policies", "p@scripted:perception_error_rate=0.2"])
    assert exit_info.value.code == 1
    assert "perception_error_rate=0.1' -> 'scripted:perception_error_rate=0.2'" in capsys.readouterr().err


def test_what_a_model_policy_is_given_is_part_of_its_pin(tmp_path):
    specs = {"m": f"hf:{tmp_path}", "s": "scripted:perception_error_rate=0.1"}
    base = policy_pins(config(tmp_path), specs)
    for change in ({"max_new_tokens_cap": 8}, {"policy_backend": "vllm"}, {"system_prompt": "Be brief."}):
        changed = policy_pins(config(tmp_path, **change), specs)
        assert changed["m"] != base["m"] and changed["s"] == base["s"]  # a scripted policy is given none of them
    assert spec_pin("prm:org/not-cached-prm,revision=v2", 0)["files"] == {
        "org/not-cached-prm": {"repo_id": "org/not-cached-prm", "revision": "v2"}
    }


def test_a_vllm_served_prm_is_fingerprinted_by_its_folder(tmp_path):
    checkpoint = tmp_path / "prm"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_text("v1")
    before = spec_pin(f"prm:vllm:{checkpoint}", 0)
    same_model = spec_pin(f"prm:{checkpoint}", 0)["files"][str(checkpoint)]
    assert before["files"] == {f"vllm:{checkpoint}": same_model}
    (checkpoint / "model.safetensors").write_text("retrained")  # a PRM retrained in place is scored again
    assert spec_pin(f"prm:vllm:{checkpoint}", 0) != before
