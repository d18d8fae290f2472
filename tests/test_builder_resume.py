"""Labelling never drops, mixes or trusts bad work: growing runs, changed inputs, bad shards, a failing judge."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import fields
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_builder import NUM_ROLLOUTS, expected_ids, toy_config
from test_mc import ToyPolicy, exact_grader, toy_questions

from trl_vlprm.data.schema import RecordError
from trl_vlprm.labeling.builder import build_dataset
from trl_vlprm.labeling.config import LabelConfig
from trl_vlprm.labeling.judge import JudgeConfig
from trl_vlprm.labeling.labeler import JudgeFailureError

JUDGE_FIELDS = {f.name for f in fields(JudgeConfig)}
from trl_vlprm.labeling.shards import CONFIG_FILE, ShardError, load_labelled  # noqa: E402
from trl_vlprm.testbed.judge_server import JudgeServer  # noqa: E402
from trl_vlprm.utils.resume import OutputLockedError, output_lock  # noqa: E402


def covered_ids(output_dir: Path) -> list[str]:
    ids = []
    for sidecar in sorted(output_dir.glob("shard-*.json")):
        ids += json.loads(sidecar.read_text())["question_ids"]
    return ids


def build(questions, output_dir, policy=None, **overrides):
    policy = policy or ToyPolicy(seed=1)
    stats = build_dataset(questions, policy, toy_config(output_dir, **overrides), grader=exact_grader)
    return stats, policy


def test_growing_a_run_labels_every_new_question(tmp_path):
    build(toy_questions(5), tmp_path)  # shards of 2, 2 and a partial 1
    stats, policy = build(toy_questions(9), tmp_path)
    assert policy.stats.calls == 4 * (1 + NUM_ROLLOUTS * 5)  # only q5..q8: one rollout call + 5 MC calls a solution
    dataset = load_labelled(tmp_path)
    assert sorted(dataset["id"]) == sorted(expected_ids(9)) and stats.records == 9 * NUM_ROLLOUTS
    assert sorted(covered_ids(tmp_path)) == sorted(f"q{i}" for i in range(9))  # each question in exactly one shard


def test_reordered_inputs_reuse_shards_and_changed_inputs_are_refused(tmp_path):
    build(toy_questions(6), tmp_path)
    _, policy = build(list(reversed(toy_questions(6))), tmp_path)
    assert policy.stats.calls == 0 and sorted(load_labelled(tmp_path)["id"]) == sorted(expected_ids(6))
    _, policy = build(toy_questions(3), tmp_path)  # a subset is already covered
    assert policy.stats.calls == 0
    edited = toy_questions(6)
    edited[2]["answer"] = "41"
    with pytest.raises(RecordError, match="q2.*content changed"):
        build(edited, tmp_path)
    repainted = toy_questions(6)
    repainted[4]["images"][0].putpixel((0, 0), (0, 0, 0))  # one pixel of an image is a change too
    with pytest.raises(RecordError, match="q4.*content changed"):
        build(repainted, tmp_path)


def test_truncated_shard_is_named_on_load_and_labelled_again(tmp_path):
    build(toy_questions(6), tmp_path)
    shard = tmp_path / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ShardError, match=r"shard-00001\.parquet: unreadable Parquet shard"):
        load_labelled(tmp_path)
    with pytest.warns(UserWarning, match=r"shard-00001\.parquet.*labelled again"):
        _, policy = build(toy_questions(6), tmp_path)
    assert policy.stats.calls == 2 * (1 + NUM_ROLLOUTS * 5)  # the two questions of the bad shard, no more
    ids = load_labelled(tmp_path)["id"]
    assert len(ids) == len(set(ids)) and set(ids) == expected_ids(6)
    assert (tmp_path / "shard-00001.parquet.rejected").exists()
    sidecar = tmp_path / "shard-00000.json"  # a shard whose rows differ from its sidecar's count is not trusted
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "num_rows": 3}))
    with pytest.raises(ShardError, match=r"shard-00000\.parquet: 4 rows but its sidecar records 3"):
        load_labelled(tmp_path)


def test_a_folder_of_an_older_version_loads_but_is_not_resumed_into(tmp_path):
    build(toy_questions(4), tmp_path)
    for sidecar in tmp_path.glob("shard-*.json"):  # the sidecar of older versions: the stats alone
        sidecar.write_text(json.dumps(json.loads(sidecar.read_text())["stats"]))
    assert sorted(load_labelled(tmp_path)["id"]) == sorted(expected_ids(4))
    with pytest.raises(ShardError, match="older trl_vlprm"):
        build(toy_questions(4), tmp_path)
    assert not list(tmp_path.glob("*.rejected"))


def test_empty_shards_load_and_count_as_done(tmp_path):
    # a judge that contradicts every (exact) MC label: consensus drops every step, so no question yields a record
    contrary = dict(rule="consensus", judge="testbed", judge_flip_rate_perception=1.0, judge_flip_rate_reasoning=1.0)
    stats, _ = build(toy_questions(4), tmp_path / "empty", ToyPolicy(error_rate=0.0, seed=1), **contrary)
    assert stats.records == 0 and stats.solutions == 4 * NUM_ROLLOUTS
    assert len(load_labelled(tmp_path / "empty")) == 0
    _, policy = build(toy_questions(4), tmp_path / "empty", ToyPolicy(error_rate=0.0, seed=1), **contrary)
    assert policy.stats.calls == 0  # truly no records: the empty shards are done
    build(toy_questions(4), tmp_path / "full")
    for suffix in (".parquet", ".json"):  # one empty shard among full ones
        shutil.copy(tmp_path / "empty" / f"shard-00000{suffix}", tmp_path / "full" / f"shard-00099{suffix}")
    sidecar = tmp_path / "full" / "shard-00099.json"  # of other questions: one question in two shards is refused
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "question_ids": [f"e{i}" for i in range(len(record["question_ids"]))]}))
    assert sorted(load_labelled(tmp_path / "full")["id"]) == sorted(expected_ids(4))


def judge_config(output_dir, **overrides):
    """(LabelConfig, JudgeConfig) of a labelling run with a served judge; `overrides` go to the one holding them."""
    settings = dict(rule="vlprm", judge="server", mc_mode="binary_search", judge_timeout=2.0, judge_backoff=0.01)
    settings.update(overrides)
    judge = {name: settings.pop(name) for name in list(settings) if name in JUDGE_FIELDS}
    return toy_config(output_dir, **settings), JudgeConfig(**judge)


@pytest.mark.parametrize(
    "mode, status, reply",
    [
        ("401", "http 401", "Incorrect API key provided"),
        ("429", "http 429", "Rate limit reached"),
        ("malformed", "parse", "not JSON"),  # replies that never parse
    ],
)
def test_failing_judge_writes_nothing_and_a_fixed_judge_labels_everything(tmp_path, mode, status, reply):
    config, judge = judge_config(tmp_path, judge_max_retries=1)
    with JudgeServer({}, failures={"*": mode}, retry_after=0.01) as server:
        with pytest.raises(JudgeFailureError, match=f"failed on 4 of 4 solutions.*{status}") as error:
            build_dataset(
                toy_questions(4),
                ToyPolicy(seed=4),
                config,
                judge_server=server,
                grader=exact_grader,
                judge_config=judge,
            )
        assert reply in str(error.value)
        assert not list(tmp_path.glob("shard-*.parquet"))  # nothing marked done
    # the judge is fixed and comes back at another address, reached with other transport settings
    config, judge = judge_config(
        tmp_path, judge_max_retries=3, judge_timeout=5.0, judge_base_url="http://127.0.0.1:1/v1"
    )
    with JudgeServer({}) as server:
        stats = build_dataset(
            toy_questions(4), ToyPolicy(seed=4), config, judge_server=server, grader=exact_grader, judge_config=judge
        )
    assert stats.judge["failed_solutions"] == 0 and stats.records == 4 * NUM_ROLLOUTS
    assert sorted(load_labelled(tmp_path)["id"]) == sorted(expected_ids(4))


def test_judge_failing_on_more_than_the_allowed_share_stops_the_run(tmp_path):
    failures = {"q2": "500", "q3": "500"}  # the second shard: 2 of its 2 questions fail
    config, judge = judge_config(tmp_path, judge_max_retries=0, judge_max_failed_share=0.5)
    with JudgeServer({}, failures=failures) as server:
        with pytest.raises(JudgeFailureError, match=r"q2\.\.q3.*http 500"):
            build_dataset(
                toy_questions(6),
                ToyPolicy(seed=4),
                config,
                judge_server=server,
                grader=exact_grader,
                judge_config=judge,
            )
    assert [p.name for p in tmp_path.glob("shard-*.parquet")] == ["shard-00000.parquet"]  # finished shards stay


def test_label_cli_exits_non_zero_naming_the_judge_error(tmp_path, capsys):
    from trl_vlprm.cli import run

    recipe = Path(__file__).parents[1] / "recipes" / "configs" / "label_testbed.yaml"
    with JudgeServer({}, failures={"*": "401"}) as server:
        argv = ["--config", str(recipe), "--num_questions", "2", "--shard_size", "2", "--output_dir", str(tmp_path)]
        argv += ["--judge", "server", "--judge_base_url", server.base_url, "--show_progress", "false"]
        with pytest.raises(SystemExit) as exit_info:
            run("label", argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "http 401" in err and "Incorrect API key provided" in err and "failed on 8 of 8 solutions" in err
    assert not list(tmp_path.glob("shard-*.parquet"))


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_questions", 0),
        ("judge_timeout", 0.0),
        ("judge_max_retries", -1),
        ("judge_max_concurrency", 0),
        ("judge_max_failed_share", 1.5),
    ],
)
def test_config_refuses_settings_that_lose_work(field, value):
    with pytest.raises(ValueError, match=field.removeprefix("judge_")):
        (JudgeConfig if field in JUDGE_FIELDS else LabelConfig)(**{field: value})


def test_a_second_builder_on_the_same_folder_is_refused(tmp_path):
    with output_lock(tmp_path / CONFIG_FILE):
        with pytest.raises(OutputLockedError, match="another process"):
            build(toy_questions(2), tmp_path)
    build(toy_questions(2), tmp_path)  # the lock is gone with its holder
    assert sorted(load_labelled(tmp_path)["id"]) == sorted(expected_ids(2))
