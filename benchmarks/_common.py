"""What every benchmark script prints with its table: the machine it ran on, so a figure is never read without it.

Not a benchmark itself (the leading underscore keeps it out of `make bench` and of the smoke tests' list).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine() -> str:
    """One line: CPU, cores, RAM, GPU (if any), torch version and threads, load average at the time of the run."""
    import torch

    memory = _memory_gib()
    parts = [f"{_cpu_name()}, {os.cpu_count()} cores"]
    if memory is not None:
        parts.append(f"{memory:.0f} GiB RAM")
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    else:
        parts.append("no GPU")
    parts.append(f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)")
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f}")
    return "Machine: " + "; ".join(parts)


if __name__ == "__main__":
    print(machine())
