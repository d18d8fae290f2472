"""Where a model loaded for inference (the transformers policy, a PRM scorer) is placed, and in which dtype.

`resolve_device("auto")` is the process's accelerator, the device accelerate's `PartialState().device` gives, read
from the launcher's environment without starting a process group: under `accelerate launch` / `torchrun` (one
process per GPU) `cuda:$LOCAL_RANK`; without a launcher cuda:0, else mps, else xpu:0; else the CPU. A rank that
sees one GPU only (`recipes/slurm/one_gpu_per_rank.sh` sets `CUDA_VISIBLE_DEVICES=$LOCAL_RANK`) gets that GPU.
"""

from __future__ import annotations

import os

import torch

AUTO = "auto"


def _local_rank() -> int:
    """This process's index on its node, as the launcher exports it (0 without a launcher)."""
    value = os.environ.get("LOCAL_RANK", "0")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable LOCAL_RANK={value!r} is not an integer") from None


def _indexed(kind: str, count: int, local_rank: int) -> torch.device:
    """`kind:local_rank`, or `kind:0` when the process sees a single device of that kind (a per-rank
    `CUDA_VISIBLE_DEVICES`)."""
    if local_rank < count:
        return torch.device(kind, local_rank)
    if count == 1:
        return torch.device(kind, 0)
    raise ValueError(
        f"device='auto': LOCAL_RANK={local_rank} but this process sees only {count} {kind} device(s); "
        "start one process per device, or pass device explicitly (e.g. device=cuda:0)"
    )


def _xpu_available() -> bool:
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def accelerator_device() -> torch.device:
    """The device of this process: its GPU under a launcher (`cuda:$LOCAL_RANK`), cuda:0 / mps / xpu:0 without one,
    else the CPU; the CPU under `accelerate launch --cpu` (ACCELERATE_USE_CPU)."""
    if os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes", "y", "on", "t"):
        return torch.device("cpu")  # `accelerate launch --cpu`: its processes run on the CPU, as AcceleratorState does
    local_rank = _local_rank()
    if torch.cuda.is_available():
        return _indexed("cuda", torch.cuda.device_count(), local_rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    if _xpu_available():
        return _indexed("xpu", torch.xpu.device_count(), local_rank)
    return torch.device("cpu")


def resolve_device(device: str | int | torch.device | None = AUTO, argument: str = "device") -> torch.device:
    """The torch device `device` names: "auto" (or None) is `accelerator_device()`; "cpu", "cuda", "cuda:1", "mps",
    "xpu:0" or a CUDA index name one explicitly. Raises ValueError naming `argument` when the name is not a device
    or names one this machine does not have (rather than failing later, deep in a forward pass)."""
    if device is None or device == AUTO:
        return accelerator_device()
    if isinstance(device, int) and not isinstance(device, bool):  # a spec's "device=1" arrives as an int
        device = f"cuda:{device}"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(
            f"{argument}={device!r} is not a device ({error}); use auto, cpu, cuda, cuda:<index>, mps or xpu"
        ) from None
    available = {
        "cpu": lambda: 1,
        "cuda": lambda: torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "mps": lambda: 1 if torch.backends.mps.is_available() else 0,
        "xpu": lambda: torch.xpu.device_count() if _xpu_available() else 0,
    }
    if resolved.type not in available:
        raise ValueError(
            f"{argument}={device!r}: unsupported device type {resolved.type!r} (use {', '.join(available)})"
        )
    count = available[resolved.type]()
    if count == 0:
        raise ValueError(f"{argument}={device!r}: this machine has no {resolved.type} device")
    if resolved.type in ("cuda", "xpu"):
        index = resolved.index or 0  # "cuda" alone is the first device, as torch reads it
        if index >= count:
            raise ValueError(f"{argument}={device!r}: this process sees {count} {resolved.type} device(s)")
        resolved = torch.device(resolved.type, index)
    return resolved


def inference_dtype(dtype: str | torch.dtype | None, device: torch.device) -> str | torch.dtype:
    """The dtype to load an inference model in: `dtype` when given ("auto": the checkpoint's own, "bfloat16", ...);
    by default float32 on the CPU (bfloat16 matmuls there are slow on most CPUs and change scores) and the
    checkpoint's dtype on an accelerator."""
    if dtype is not None:
        return dtype
    return torch.float32 if device.type == "cpu" else AUTO


def load_kwargs(device: torch.device) -> dict[str, object]:
    """`from_pretrained` keywords placing the weights on `device` as they load (no full copy in CPU memory first, which
    K ranks of a node would each make); none on the CPU, where transformers loads anyway."""
    return {} if device.type == "cpu" else {"device_map": {"": device}}
