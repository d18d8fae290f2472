"""Failures a user causes end as one line naming the file and what to do, not a traceback (issue 19, item 12).

A bad replay file, a dead server, a YAML `!!python` tag, a full disk and a read-only one. The disks are real: a
64 KiB tmpfs (full) and a tmpfs remounted read-only, mounted in a private mount namespace (`unshare -rm`) so nothing
outside the test sees them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from trl_vlprm.cli import run as cli_run
from trl_vlprm.testbed import generate_puzzles

DEAD_URL = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there


def one_line_failure(capsys, command: str, args: list[str]) -> str:
    """Run `trl-vlprm <command> args` in process; it must exit 1 with one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as exit_info:
        cli_run(command, args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    lines = message_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"trl-vlprm {command}: "), err[-3000:]
    return lines[0]


def message_lines(stderr: str) -> list[str]:
    """The CLI's messages and traceback starts on stderr (progress bars share it)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("trl-vlprm")]


def tts_args(tmp_path, policy: str) -> list[str]:
    return ["--dataset", "puzzles", "--num_questions", "2", "--policy", policy, "--scorer", "oracle",
            "--strategy", "best_of_n", "--n", "2", "--output_file", str(tmp_path / "tts.jsonl")]  # fmt: skip


def test_a_bad_replay_file_is_one_line_naming_file_and_line(tmp_path, capsys):
    ids = [q["id"] for q in generate_puzzles(2, seed=0)]
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"id": ids[0], "solutions": [["Answer: A"]] * 2}) + "\n{not json\n")
    line = one_line_failure(capsys, "tts", tts_args(tmp_path, f"replay:{samples}"))
    assert f"{samples}:2" in line and "not a JSON object" in line


def test_a_dead_server_is_one_line_naming_it(tmp_path, capsys):
    policy = f"server:{DEAD_URL},model=m,max_retries=1,backoff=0.01"
    line = one_line_failure(capsys, "tts", tts_args(tmp_path, policy))
    assert DEAD_URL in line and "no answer after 2 attempt(s)" in line and "check that the server is up" in line


def test_a_dead_server_without_a_model_name_is_one_line_too(tmp_path, capsys):
    line = one_line_failure(capsys, "tts", tts_args(tmp_path, f"server:{DEAD_URL}"))
    assert DEAD_URL in line and "/models" in line


def test_a_yaml_python_tag_is_refused_in_one_line_and_never_run(tmp_path, capsys):
    marker = tmp_path / "RAN"
    config = tmp_path / "puzzles.yaml"
    config.write_text(f"n: 4\nout: !!python/object/apply:os.system ['touch {marker}']\n")
    line = one_line_failure(capsys, "puzzles", ["--config", str(config)])
    assert str(config) in line and "python/object/apply" in line and not marker.exists()


def run_on_small_disk(tmp_path, script: str) -> subprocess.CompletedProcess:
    """`script` (sh) in a private mount namespace where $DISK is a fresh 64 KiB tmpfs."""
    # util-linux is part of every Debian base system; a machine without it cannot run this check at all.
    assert shutil.which("unshare"), "needs util-linux `unshare` to mount a private tmpfs"
    disk = tmp_path / "disk"
    disk.mkdir(exist_ok=True)
    command = f"mount -t tmpfs -o size=64k tmpfs {disk} && DISK={disk} && {script}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=120)


def test_a_full_or_read_only_disk_is_one_line_naming_the_file(tmp_path):
    cli = f"{sys.executable} -m trl_vlprm puzzles --n 40 --out"
    full = run_on_small_disk(tmp_path, f"{cli} $DISK/puzzles.parquet")
    mount_failed = "mount" in full.stderr and full.returncode != 1
    assert not mount_failed, f"cannot mount a tmpfs here (needs root or user namespaces): {full.stderr}"
    lines = message_lines(full.stderr)
    assert full.returncode == 1 and len(lines) == 1, full.stderr[-3000:]
    assert "No space left on device" in lines[0] and "disk" in lines[0] and "free space" in lines[0]
    read_only = run_on_small_disk(tmp_path, f"mount -o remount,ro $DISK && {cli} $DISK/puzzles.parquet")
    lines = message_lines(read_only.stderr)
    assert read_only.returncode == 1 and len(lines) == 1, read_only.stderr[-3000:]
    assert "Read-only file system" in lines[0] and "disk" in lines[0]
