"""Inputs checked before they can hang, exhaust memory or be silently reused (issue 19, items 4, 7, 10).

An image cell naming a FIFO or a device, a replay file with blank steps or list answers, a replay file rewritten
with the same size and mtime, and an evaluation run where matplotlib cannot be imported.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import warnings

import pytest

from trl_vlprm.cli import run as cli_run
from trl_vlprm.data.schema import RecordError
from trl_vlprm.eval.specs import spec_pin
from trl_vlprm.guidance.backends import build_policy
from trl_vlprm.utils.resume import ImageFileError, question_digest


def digest_within(question, seconds: float):
    """`question_digest(question)` in a daemon thread: (finished, result or exception); a hang leaves it behind."""
    box = {}

    def digest():
        try:
            box["value"] = question_digest(question)
        except Exception as err:
            box["value"] = err

    thread = threading.Thread(target=digest, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box.get("value")


def test_an_image_path_naming_a_fifo_a_device_or_a_huge_file_is_refused_before_reading(tmp_path):
    fifo = tmp_path / "image.fifo"
    os.mkfifo(fifo)
    # A FIFO nobody writes to: reading it waits forever. (Checked first: the old code reads /dev/zero until OOM.)
    finished, result = digest_within({"id": "q7", "images": [{"path": str(fifo), "bytes": None}]}, 5)
    assert finished, "question_digest hangs on a FIFO"
    assert isinstance(result, ImageFileError) and "q7" in str(result) and "not a regular file" in str(result)
    finished, result = digest_within({"id": "q8", "images": [{"path": "/dev/zero", "bytes": None}]}, 5)
    assert finished and isinstance(result, ImageFileError) and "/dev/zero" in str(result)
    huge = tmp_path / "huge.png"
    with huge.open("wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB by its size, no disk used
    finished, result = digest_within({"id": "q9", "images": [{"path": str(huge), "bytes": None}]}, 5)
    assert finished and isinstance(result, ImageFileError) and "3.0 GiB" in str(result)
    # A real image file still digests, by content.
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG not really")
    assert question_digest({"id": "q", "images": [{"path": str(image), "bytes": None}]}) == question_digest(
        {"id": "q", "images": [{"path": None, "bytes": b"\x89PNG not really"}]}
    )


def write_lines(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("solution", "problem"),
    [
        (["The grid holds 4.", "   "], r"solutions\[0\]': step 1 is blank"),
        (["", " "], r"solutions\[0\]': step 0 is blank"),
        ({"steps": ["Answer: B"], "answer": ["B"]}, r"solutions\[0\].answer': a list, expected a string"),
        ({"steps": ["Answer: 4"], "answer": 4.0}, r"solutions\[0\].answer': a float, expected a string"),
    ],
)
def test_replay_refuses_blank_steps_and_answers_that_are_not_text(tmp_path, solution, problem):
    path = write_lines(tmp_path / "samples.jsonl", [{"id": "q1", "solutions": [solution]}])
    with pytest.raises(RecordError, match=rf"samples.jsonl:1: field '{problem}"):
        build_policy(f"replay:{path}")


def test_a_replay_file_rewritten_with_the_same_size_and_mtime_gets_another_pin(tmp_path):
    path = write_lines(tmp_path / "samples.jsonl", [{"id": "q1", "solutions": [["Answer: A"]]}])
    stat = path.stat()
    before = spec_pin(f"replay:{path}", 0)
    write_lines(path, [{"id": "q1", "solutions": [["Answer: B"]]}])  # same length, other answer
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert spec_pin(f"replay:{path}", 0) != before


def test_eval_without_matplotlib_skips_the_plot_and_writes_everything_else(tmp_path, monkeypatch):
    # matplotlib is installed here; a None entry in sys.modules makes `import matplotlib` raise ImportError, as in an
    # environment without the `plots` extra (the vLLM venv).
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    args = ["--benchmarks", "testbed:5,limit=6", "--policies", "scripted", "--scorers", "oracle",
            "--selections", "majority", "best_of_n:min", "--n_values", "1", "2", "--num_subsamples", "1",
            "--output_dir", str(tmp_path),
            "--process_benches", "testbed:num_questions=3,solutions_per_question=2"]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli_run("eval", args) == 0
    assert any("matplotlib" in str(w.message) and "accuracy_vs_n.png" in str(w.message) for w in caught)
    assert not (tmp_path / "accuracy_vs_n.png").exists()
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 2 * 2
    assert "| oracle | all |" in (tmp_path / "process_bench.md").read_text()
