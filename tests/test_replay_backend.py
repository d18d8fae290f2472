"""The `replay` policy backend: another system's samples, scored and re-ranked by the sweep with no generation."""

import json

import pytest

from trl_vlprm.data.schema import RecordError
from trl_vlprm.eval.eval_tts import EvalTTSConfig, run
from trl_vlprm.guidance.backends import build_policy
from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles

SELECTIONS = ["first", "majority", "best_of_n:min", "weighted_vote:min", "pass@n"]


def _write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_the_sweep_reads_replayed_samples_as_it_reads_the_policy_that_made_them(tmp_path):
    # The scripted policy samples 8 solutions per question; written out, then replayed, the sweep must see the very
    # same solutions: every accuracy equal to the sweep's over the live policy (same seed, same question order).
    questions = generate_puzzles(6, seed=4)
    live = ScriptedPolicy(0.4, 0.3, seed=0)
    lines = []
    for k, question in enumerate(questions):
        solutions = [c.steps for c in live.sample_solutions(question, 8)]
        if k == 0:  # a solution given as one text is split at the step separator
            solutions[0] = "\n\n".join(solutions[0])
        lines.append({"id": question["id"], "solutions": solutions})
    samples = _write(tmp_path / "samples.jsonl", lines)

    def sweep(policy: str, where: str):
        config = EvalTTSConfig(
            benchmarks=["testbed:4,limit=6"], policies=[policy], scorers=["random:seed=3"], selections=SELECTIONS,
            n_values=[1, 4, 8], num_subsamples=3, seed=0, output_dir=str(tmp_path / where),
        )  # fmt: skip
        return {(r["scorer"], r["selection"], r["n"]): r["accuracy"] for r in run(config)}

    replayed = sweep(f"replay:{samples}", "replay")
    assert replayed == sweep("scripted:perception_error_rate=0.4,reasoning_error_rate=0.3", "live")
    assert len(replayed) == 3 * len(SELECTIONS)
    assert replayed[("-", "pass@n", 8)] > replayed[("-", "first", 1)]  # the samples carry real information


def test_replay_refuses_what_it_cannot_serve(tmp_path):
    question = {"id": "q1", "prompt": "<image>\nQ?", "images": []}
    policy = build_policy(f"replay:{_write(tmp_path / 'ok.jsonl', [{'id': 'q1', 'solutions': [['a', 'b']] * 2}])}")
    assert [c.steps for c in policy.sample_solutions(question, 2)] == [["a", "b"], ["a", "b"]]
    assert policy.stats.sequences == 2
    with pytest.raises(ValueError, match="'q1' has 2 solutions in .*ok.jsonl, 3 asked"):
        policy.sample_solutions(question, 3)
    with pytest.raises(RecordError, match="question .q9. has no line"):
        policy.sample_solutions({**question, "id": "q9"}, 1)
    with pytest.raises(NotImplementedError, match="finished solutions only"):
        policy.sample_next_steps(question, ["a"], 2)

    repeated = _write(tmp_path / "twice.jsonl", [{"id": "q1", "solutions": ["x"]}, {"id": "q1", "solutions": ["y"]}])
    with pytest.raises(ValueError, match=r"twice.jsonl:2: field 'id': 'q1' repeats line 1"):
        build_policy(f"replay:{repeated}")
    empty = _write(tmp_path / "empty.jsonl", [{"id": "q1", "solutions": []}])
    with pytest.raises(ValueError, match=r"empty.jsonl:1: field 'solutions'"):
        build_policy(f"replay:{empty}")
    with pytest.raises(FileNotFoundError, match="no file"):
        build_policy(f"replay:{tmp_path / 'missing.jsonl'}")
