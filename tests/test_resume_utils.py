"""The one resume toolkit (trl_vlprm.utils.resume): digests, fingerprints, pins, atomic writes, output locks."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from trl_vlprm.utils.resume import (
    OutputLockedError,
    SettingsMismatchError,
    atomic_write,
    atomic_write_text,
    check_settings,
    output_lock,
    path_fingerprint,
    pin_settings,
    question_digest,
    stable_digest,
)


def png_bytes(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_digest_sees_content_not_form():
    assert stable_digest({"a": 1, "b": [1, 2]}) == stable_digest({"b": (1, 2), "a": 1})
    assert stable_digest({"x": 0.1}) != stable_digest({"x": 0.1 + 1e-12})
    assert stable_digest({"x": 1}) != stable_digest({"x": "1"})
    image = Image.new("RGB", (4, 3), (10, 20, 30))
    question = {"id": "q", "prompt": "<image>?", "images": [image], "answer": "3"}
    same = {"answer": "3", "images": [image.copy()], "prompt": "<image>?", "id": "q"}
    assert question_digest(question) == question_digest(same)
    repainted = image.copy()
    repainted.putpixel((3, 2), (10, 20, 31))
    assert question_digest(question) != question_digest({**question, "images": [repainted]})
    # a `datasets` image cell is its bytes, wherever they come from
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"digest-{os.getpid()}.png")
    with open(path, "wb") as f:
        f.write(png_bytes((1, 2, 3)))
    try:
        assert stable_digest({"bytes": png_bytes((1, 2, 3)), "path": None}) == stable_digest({"path": path})
        assert stable_digest({"bytes": png_bytes((1, 2, 3))}) != stable_digest({"bytes": png_bytes((1, 2, 4))})
    finally:
        os.remove(path)
    with pytest.raises(TypeError, match="object"):
        stable_digest({"x": object()})


def test_fingerprint_changes_when_a_checkpoint_is_rewritten(tmp_path):
    assert path_fingerprint(None) is None and path_fingerprint(tmp_path / "nope") == "missing"
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"1234")
    (tmp_path / ".cache").mkdir()
    first = path_fingerprint(tmp_path)
    assert first["files"] == 2 and path_fingerprint(tmp_path) == first
    (tmp_path / ".cache" / "lock").write_text("x")  # hidden bookkeeping is not the model
    assert path_fingerprint(tmp_path) == first
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))  # same bytes, rewritten at another time
    assert path_fingerprint(tmp_path) != first


def test_pins_name_every_changed_field(tmp_path):
    pin = tmp_path / "pin.json"
    pin_settings(pin, {"a": 1, "nested": {"seed": 0, "spec": "x"}, "t": (1, 2)})
    pin_settings(pin, {"a": 1, "nested": {"seed": 0, "spec": "x"}, "t": [1, 2]})  # same settings: fine
    with pytest.raises(SettingsMismatchError, match=r"a: 1 -> 2; b: None -> 3; nested\.seed: 0 -> 1"):
        pin_settings(pin, {"a": 2, "b": 3, "nested": {"seed": 1, "spec": "x"}, "t": [1, 2]})
    with pytest.raises(SettingsMismatchError, match="where-it-is"):
        check_settings({"a": 1}, {}, "where-it-is")
    pin.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable settings pin"):
        pin_settings(pin, {"a": 1})


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    def fail(temp):
        with open(temp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_lock_refuses_a_second_holder_and_dies_with_its_holder(tmp_path):
    target = tmp_path / "results.jsonl"
    holder = textwrap.dedent(f"""
        import sys, time
        from trl_vlprm.utils.resume import output_lock
        with output_lock({str(target)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match=f"pid {process.pid}"):
            with output_lock(target):
                pass
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with output_lock(target) as lock_path:  # SIGKILL left no stale lock
        assert lock_path.read_text() == str(os.getpid())
