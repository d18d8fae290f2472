"""Resumable outputs that never mix, drop or trust bad work; every stage writes its outputs with these.

* `atomic_write` / `atomic_write_text`: a file is written under a temporary name beside it, fsynced, then renamed
  into place, so a reader (or a resumed run) sees the old file or the new one, never half of one.
* `stable_digest` / `question_digest`: a content digest of any JSON-like value, images included (PIL images, image
  dicts with `bytes`/`path`), so a rerun can tell whether a question it already answered has changed.
* `path_fingerprint`: what a checkpoint folder or file looks like on disk (every file's size and mtime), so
  retraining a model into the same folder is seen as a different model.
* `pin_settings` / `check_settings`: the settings a finished piece of work was produced with; a resume with other
  values is refused with the names of the fields that differ.
* `output_lock`: an exclusive lock on an output, so two processes never append to the same file.
* `read_results`: the records of a JSONL output (one object with an "id" a line), its cut-short last line dropped.

The labelling builder, `recipes/tts.py` and the evaluation sweep all resume through these (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any


def atomic_write(path: str | Path, write: Callable[[str], None], mode: int = 0o644) -> Path:
    """Call `write(temp_path)` on a temporary file beside `path`, fsync it, then rename it to `path`.

    The temporary file is removed when `write` fails; `mode` replaces mkstemp's private 0o600 (outputs are shared).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:  # a read-only or full disk: name the output, not the temporary name
        raise OSError(err.errno, err.strerror, str(path)) from err
    os.close(handle)
    try:
        write(temp)
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except OSError as err:
        if err.errno is not None and err.filename is None:  # a write to a full disk names no file: name the output
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return path


def atomic_write_text(path: str | Path, data: str | bytes) -> Path:
    """Write a string or bytes to `path` atomically (see `atomic_write`)."""

    def write(temp: str) -> None:
        with open(temp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)

    return atomic_write(path, write)


def read_results(path: str | Path, repair: bool = True) -> list[dict[str, Any]]:
    """The results already in a JSONL file (none if it does not exist).

    A malformed last line is the trace of an interrupted write: it is dropped and, with `repair` (only by the holder
    of the file's `output_lock`: another process may be appending), the file rewritten atomically without it. A
    malformed line anywhere else raises a `ValueError` naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    results = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "id" not in record:
                raise ValueError("not an object with an 'id' field")
        except ValueError as err:
            if number == len(lines):
                if repair:
                    atomic_write_text(path, "".join(line + "\n" for line in lines[:-1]))
                break
            raise ValueError(f"{path}:{number}: malformed result line ({err})") from err
        results.append(record)
    return results


# An image file larger than this is refused before it is read: no image a processor could take is that large, and a
# path naming a huge file by mistake would otherwise be read whole (a digest is taken before any image check).
MAX_IMAGE_FILE_BYTES = 1 << 30


class ImageFileError(ValueError):
    """An image cell names a path that is no image file: not a regular file (a FIFO, a device), or too large."""


def _file_sha256(path: str | Path, limit: int | None = MAX_IMAGE_FILE_BYTES) -> str:
    """sha256 of an image file named by a record, read in chunks; refuses a path that is no regular file of sane size
    before reading it (a FIFO hangs a read, `/dev/zero` never ends)."""
    stat = os.stat(path)  # FileNotFoundError names the path
    if not S_ISREG(stat.st_mode):
        raise ImageFileError(
            f"image path {path}: not a regular file (a FIFO, a device or a socket); expected an image"
        )
    if limit is not None and stat.st_size > limit:
        raise ImageFileError(
            f"image path {path}: {stat.st_size / (1 << 30):.1f} GiB, over the {MAX_IMAGE_FILE_BYTES >> 30} GiB an "
            "image file may hold; expected an image"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    """A JSON-encodable stand-in for `value` that differs whenever the content differs (images by pixels)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)  # exact: 0.1 and 0.1000000001 must differ
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Mapping):
        if set(value) <= {"bytes", "path"} and (value.get("bytes") is not None or value.get("path")):
            # a `datasets` Image cell: the bytes are the image; a path-only cell is read from disk
            data = value.get("bytes")
            if data is None:
                return {"__bytes__": _file_sha256(value["path"])}
            return {"__bytes__": hashlib.sha256(data).hexdigest()}
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return _canonical(asdict(value))
    if hasattr(value, "tobytes") and hasattr(value, "size") and hasattr(value, "mode"):  # a PIL image
        digest = hashlib.sha256(value.tobytes()).hexdigest()
        return {"__image__": [value.mode, list(value.size), digest]}
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _canonical(value.tolist())
    raise TypeError(f"cannot digest a value of type {type(value).__name__}")


def stable_digest(value: Any) -> str:
    """sha256 (hex) of a canonical encoding of a JSON-like value; equal content gives equal digests."""
    return hashlib.sha256(json.dumps(_canonical(value), sort_keys=True).encode("utf-8")).hexdigest()


def question_digest(question: Mapping[str, Any]) -> str:
    """Digest of everything a question record holds (prompt, images by pixels, answer, options, ...).

    Raises `ImageFileError` naming the question when an image cell's path is no regular file of sane size."""
    try:
        return stable_digest(dict(question))
    except ImageFileError as err:
        raise ImageFileError(f"question {question.get('id', '?')}: field 'images': {err}") from err


def path_fingerprint(path: str | Path | None) -> Any:
    """What `path` looks like on disk: None for None, "missing" when absent, else every file's (name, size, mtime),
    and a single file's content digest too.

    A folder (a checkpoint) is walked; hidden files and `.cache` entries are left out. Retraining into the same
    folder rewrites its weights, which changes their mtime, so the fingerprint changes.
    """
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        return "missing"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    entries = []
    for file in files:
        relative = file.relative_to(path) if file != path else Path(file.name)
        if any(part.startswith(".") for part in relative.parts):
            continue
        stat = file.stat()
        entries.append([str(relative), stat.st_size, stat.st_mtime_ns])
    if (
        path.is_file()
    ):  # one file (a replay file, a questions file): rewritten with the same size and mtime, it differs
        entries[0].append(_file_sha256(path, limit=None))
    return {"path": str(path.resolve()), "digest": stable_digest(entries), "files": len(entries)}


class SettingsMismatchError(ValueError):
    """A resumed run asks for other settings than the ones its output was produced with."""


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_settings(pinned: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    """Raise `SettingsMismatchError` naming every field whose pinned and current values differ (missing included);
    nested settings are compared field by field ("policy.seed: 0 -> 1")."""
    pinned, current = json.loads(json.dumps(pinned)), json.loads(json.dumps(current))  # tuples == lists
    pinned, current = _flatten(pinned), _flatten(current)
    changed = {k: (pinned.get(k), current.get(k)) for k in sorted(set(pinned) | set(current))}
    changed = {k: v for k, v in changed.items() if v[0] != v[1]}
    if changed:
        described = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise SettingsMismatchError(
            f"{where} was produced with other settings ({described}); rerun with the old values or write to "
            "another output"
        )


def pin_settings(path: str | Path, settings: Mapping[str, Any], where: str | None = None) -> None:
    """Write `settings` to `path` (JSON) the first time; afterwards refuse any other settings (`check_settings`).

    `where` names the pinned output in the error (default: the folder holding `path`).
    """
    path = Path(path)
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(
                f"{path}: unreadable settings pin ({err}); remove it only if the outputs beside it "
                "are to be thrown away"
            ) from err
        check_settings(previous, settings, where or str(path.parent))
        return
    atomic_write_text(path, json.dumps(dict(settings), indent=1, sort_keys=True))


def dataclass_settings(config: Any, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The fields of a config dataclass minus `exclude` (those that cannot change a result: paths, progress...)."""
    settings = asdict(config)
    for name in exclude:
        settings.pop(name)
    return settings


class OutputLockedError(RuntimeError):
    """Another process is writing the same output."""


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on `<path>.lock` (created beside `path`) or raise `OutputLockedError` at once.

    The lock is an advisory `flock`: the kernel drops it when its holder exits, even on SIGKILL, so a crash leaves
    no stale lock behind. The file keeps the pid of the last holder for the error message.
    """
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise OutputLockedError(
                f"{path} is being written by another process (pid {holder}, lock {lock_path}); wait for it to "
                "finish or write to another output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield lock_path
    finally:
        handle.close()  # closing the descriptor releases the flock
