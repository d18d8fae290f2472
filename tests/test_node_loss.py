"""Multi-node labelling after a lost node (issue 19, item 1): a rank that lost its group never writes again.

Two `accelerate launch --num_machines 2` launches on this machine play two nodes of one run (one process each, so
node 0 holds rank 0 and its launcher, node 1 rank 1). Node 0 is SIGKILLed (its launcher and rank 0 together, as
when a machine is lost) while rank 1, on the other node, is still labelling: nothing stops rank 1 (its own launcher
does not notice, and gloo only notices at the next collective). The rerun starts at once and labels what is
missing; then rank 1 reaches its next shard. Rank 1 must stop before writing it: the rerun planned those questions
too, and under the old code rank 1's shard lands on an index the rerun's plan also used, so questions end up
labelled twice while others are lost.

The gates are real: a wrapper holds each rank inside its scripted policy (rank 0 forever, rank 1 until the test
lets it go) once it has written the shards the scenario needs, so the interleaving is the same on every run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from test_launch import free_port, launch_env
from test_scaleout import LABEL_ARGS, covered

from trl_vlprm.cli import run as cli_run
from trl_vlprm.labeling.shards import load_labelled
from trl_vlprm.testbed import generate_puzzles
from trl_vlprm.utils.ranks import SINGLE, LostGroupError, Ranks, RunClaim

REPO = Path(__file__).resolve().parents[1]

# Rank r, once its first FINISH[r] questions are labelled (their shards written), holds on the next question:
# rank 0 forever (it is killed there), rank 1 until the file `go` appears in the gate folder.
GATE = textwrap.dedent(
    """
    import os, pathlib, runpy, sys, time
    from trl_vlprm.testbed import ScriptedPolicy

    gate, finish, script = pathlib.Path(sys.argv[1]), [int(n) for n in sys.argv[2].split(",")], sys.argv[3]
    rank = int(os.environ["RANK"])
    seen, sample = [], ScriptedPolicy._sample

    def sample_or_hold(self, question, prefix, n, max_steps):
        if question["id"] not in seen:
            seen.append(question["id"])
        if len(seen) > finish[rank]:
            (gate / f"rank{rank}-holding").write_text(str(os.getpid()))
            while rank == 0 or not (gate / "go").exists():
                time.sleep(0.05)
        return sample(self, question, prefix, n, max_steps)

    ScriptedPolicy._sample = sample_or_hold
    sys.argv = sys.argv[3:]
    runpy.run_path(script, run_name="__main__")
    """
)


def start_node(machine_rank: int, port: int, gate: Path, args: list[str], log: Path) -> subprocess.Popen:
    """One node of a 2-node launch: its own launcher (in its own process group, so it can be killed whole)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
        "--num_processes", "2", "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
        "--no_python", sys.executable, "-c", GATE, str(gate), "2,4", str(REPO / "recipes" / "build_dataset.py"),
        *args,
    ]  # fmt: skip
    with log.open("w") as sink:
        return subprocess.Popen(command, cwd=REPO, env=launch_env(), stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def wait_for(condition, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what} did not happen in {timeout} s:\n" + "\n".join(p.read_text()[-3000:] for p in logs)
            )
        time.sleep(0.1)


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@pytest.mark.slow
def test_a_rank_that_lost_its_node_0_stops_before_writing_and_the_rerun_labels_exactly_the_rest(tmp_path):
    output, gate = tmp_path / "labels", tmp_path / "gate"
    gate.mkdir()
    args = [*LABEL_ARGS, "--num_questions", "12", "--output_dir", str(output)]
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    port = free_port()
    nodes = [start_node(rank, port, gate, args, log) for rank, log in zip((0, 1), logs)]
    try:
        # 6 shards of 2 questions: rank 0 owns shards 0, 2, 4 and rank 1 shards 1, 3, 5. Rank 0 holds after shard 0,
        # rank 1 after shards 1 and 3.
        wait_for(lambda: (gate / "rank0-holding").exists() and (gate / "rank1-holding").exists(), 150,
                 "both ranks reaching their gate", logs)  # fmt: skip
        assert sorted(int(p.name[6:11]) for p in output.glob("shard-*.parquet")) == [0, 1, 3]
        # Node 0 lost: its launcher and rank 0 (torch's launcher starts each worker in a session of its own).
        os.kill(int((gate / "rank0-holding").read_text()), signal.SIGKILL)
        kill_group(nodes[0])

        assert cli_run("label", args) == 0  # the immediate rerun, one process
        (gate / "go").write_text("")  # now rank 1 reaches its next shard
        # Rank 1 labels its next shard, then stops (or, before the fix, writes it and fails at the final barrier).
        wait_for(lambda: "lost its group" in logs[1].read_text() or nodes[1].poll() is not None, 90,
                 "rank 1 stopping", logs)  # fmt: skip
    finally:
        for node in nodes:
            kill_group(node)
        for holder in gate.glob("rank*-holding"):  # a worker left behind by a failed assertion
            try:
                os.kill(int(holder.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    rank1 = logs[1].read_text()
    assert "[rank 1/2] labelling 6 questions in 3 shards" in rank1  # it really was rank 1 of a 2-process world
    assert "lost its group" in rank1 and "shard 5" in rank1, rank1[-3000:]

    ids = [str(q["id"]) for q in generate_puzzles(12, seed=0)]
    assert covered(output) == Counter(ids)  # every question exactly once: none twice, none missing
    rows = Counter(load_labelled(output)["question_id"])
    assert set(rows) <= set(ids) and max(rows.values()) <= 4  # never more rows than the 4 rollouts of a question
    assert cli_run("label", args) == 0  # the next rerun finds nothing to do and no conflict
    assert covered(output) == Counter(ids)
    claim = json.loads((output / "labelling_config.json.claim").read_text())
    assert claim["generation"] == 3  # the 2-node run, the rerun, the second rerun


def test_a_claim_is_lost_to_a_dead_rank_0_or_a_newer_generation(tmp_path):
    # The checks `RunClaim.writing` makes, in one process: rank 1's claim on generation 1 of a folder.
    lock = tmp_path / "labelling_config.json"
    with SINGLE.claimed_plan(lock, lambda: ["shard plan"]) as (plan, own):
        rank1 = RunClaim(Ranks(1, 2), lock, own.generation)
        with rank1.writing("shard 1"):  # rank 0 holds the lock, no newer run: allowed
            (tmp_path / "shard-00001").write_text("written")
    assert plan == ["shard plan"] and own.generation == 1
    with pytest.raises(LostGroupError, match=r"rank 1/2 lost its group before writing shard 3: rank 0 no longer"):
        rank1.ensure("shard 3")  # rank 0 is gone (its lock released), no rerun yet
    with SINGLE.claimed_plan(lock, lambda: []) as (_, rerun):
        assert rerun.generation == 2
        with pytest.raises(LostGroupError, match=r"a newer run \(generation 2, rank 0 pid \d+\) took over"):
            with rank1.writing("shard 3"):
                (tmp_path / "shard-00003").write_text("written")
    assert not (tmp_path / "shard-00003").exists()
    assert json.loads((tmp_path / "labelling_config.json.claim").read_text())["plan"] is not None
