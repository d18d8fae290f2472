"""The rank protocol every scaled-out runner uses (`trl_vlprm.utils.ranks`), with real 2-process gloo groups.

The two processes are started here with the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT) but no
agent, so a rank that dies is not torn down for us: the survivor must notice by itself and say which rank failed.
The runners' own launches (`accelerate launch`) are tested in tests/test_scaleout.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trl_vlprm.utils.ranks import Ranks, merge_parts, part_files, part_path
from trl_vlprm.utils.resume import output_lock

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from trl_vlprm.utils.ranks import Ranks

    out, mode = Path(sys.argv[1]), sys.argv[2]
    ranks = Ranks.from_environment()
    try:
        with ranks.locked_plan(out / "output", lambda: list(range(7))) as plan:
            (out / f"share-{ranks.rank}.json").write_text(json.dumps(ranks.share(plan)))
            if ranks.rank == 1 and mode == "die":
                os._exit(9)
            if ranks.rank == 1 and mode == "hang":
                time.sleep(12)
            ranks.wait_for_all("the test run")
            (out / f"passed-{ranks.rank}").write_text("")
    except Exception as err:
        (out / f"error-{ranks.rank}.txt").write_text(f"{type(err).__name__}: {err}")
        sys.exit(1)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_ranks(tmp_path: Path, mode: str, timeout: float = 600) -> tuple[list[int], float]:
    """Start ranks 0 and 1 of a 2-process world; return their exit codes and the wall time."""
    port = free_port()
    procs = []
    start = time.monotonic()
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env["TRL_VLPRM_RANK_TIMEOUT"] = str(timeout)
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), mode], env=env))
    codes = [proc.wait(timeout=300) for proc in procs]
    return codes, time.monotonic() - start


def test_share_is_disjoint_and_covers_the_plan():
    plan = list(range(11))
    shares = [Ranks(rank, 3).share(plan) for rank in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(shares, [])) == plan
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        Ranks(2, 2)


def test_merge_parts_moves_each_record_once_and_drops_a_cut_short_line(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text('{"id": "a", "x": 1}\n')
    part_path(out, 1).write_text('{"id": "b", "x": 2}\n{"id": "a", "x": 99}\n{"id": "c", "x"')  # killed mid-write
    part_path(out, 3).write_text('{"id": "d", "x": 0.1}\n')
    part_path(out, 3).with_name(part_path(out, 3).name + ".lock").write_text("123")
    assert [p.name for p in part_files(out)] == ["results.jsonl.rank-1", "results.jsonl.rank-3"]
    assert merge_parts(out) == 2
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records == [{"id": "a", "x": 1}, {"id": "b", "x": 2}, {"id": "d", "x": 0.1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]
    assert merge_parts(out) == 0 and out.read_text().count("\n") == 3


@pytest.mark.slow
def test_two_ranks_share_a_plan_and_meet_at_the_barrier(tmp_path):
    codes, _ = run_two_ranks(tmp_path, "ok")
    assert codes == [0, 0]
    shares = [json.loads((tmp_path / f"share-{rank}.json").read_text()) for rank in (0, 1)]
    assert shares == [[0, 2, 4, 6], [1, 3, 5]]
    assert (tmp_path / "passed-0").exists() and (tmp_path / "passed-1").exists()


@pytest.mark.slow
def test_a_rank_that_dies_is_named_at_once(tmp_path):
    codes, seconds = run_two_ranks(tmp_path, "die")
    assert codes == [1, 9]
    error = (tmp_path / "error-0.txt").read_text()
    assert error.startswith("RankFailedError: the test run: not every rank finished") and "Ranks 1 failed" in error
    assert "rerun with any number of processes" in error
    assert seconds < 120  # not the 600 s timeout: the dead peer's closed connection is seen at once


@pytest.mark.slow
def test_a_rank_that_hangs_times_out_with_a_clear_message(tmp_path):
    codes, seconds = run_two_ranks(tmp_path, "hang", timeout=3)
    assert codes[0] == 1
    error = (tmp_path / "error-0.txt").read_text()
    assert "Ranks 1 failed to pass monitoredBarrier" in error and "within 3 s (TRL_VLPRM_RANK_TIMEOUT)" in error
    assert not (tmp_path / "passed-0").exists()


@pytest.mark.slow
def test_a_locked_output_stops_every_rank_before_any_work(tmp_path):
    with output_lock(tmp_path / "output"):  # another run holds the output
        codes, _ = run_two_ranks(tmp_path, "ok")
    assert codes == [1, 1]
    assert (tmp_path / "error-0.txt").read_text().startswith("OutputLockedError:")
    follower = (tmp_path / "error-1.txt").read_text()
    assert follower.startswith("RankFailedError: rank 0 stopped before any work was shared: OutputLockedError:")
    assert not list(tmp_path.glob("share-*.json"))
