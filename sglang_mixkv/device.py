"""Which device a command runs on, and the refusals that keep a GPU host honest.

``MIXKV_DEVICE`` (``cpu`` or ``gpu``) decides when set. Otherwise a GPU that torch can
use means ``gpu``, and no GPU at all means ``cpu``. The case in between is an error,
not a fallback: ``nvidia-smi`` lists a GPU but torch cannot use it. The usual cause is
a driver too old for torch's CUDA build (sglang 0.5.17 pins torch 2.11, a CUDA 13
build: NVIDIA driver 580 or newer); torch then reports ``cuda.is_available() ==
False`` without saying why, and a silent CPU fallback would serve at a thousandth of
the speed with a 1 GiB KV budget.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

DEVICE_ENV = "MIXKV_DEVICE"
#: Oldest NVIDIA driver for CUDA 13 builds of torch (sglang 0.5.17 pins torch 2.11+cu130).
MIN_DRIVER = 580


class DeviceError(RuntimeError):
    """The machine has a GPU we must not ignore, or MIXKV_DEVICE asks for the impossible."""


@dataclass(frozen=True)
class NvidiaSmi:
    """What ``nvidia-smi`` reports: one ``"name, memory"`` line per GPU (e.g.
    ``"NVIDIA H100 80GB HBM3, 81559 MiB"``) and the driver version (e.g. ``"580.65.06"``)."""

    gpus: list[str]
    driver: str | None

    @property
    def driver_major(self) -> int | None:
        return int(self.driver.split(".")[0]) if self.driver else None


def nvidia_smi() -> NvidiaSmi | None:
    """One ``nvidia-smi`` query; None if it is missing, fails or lists no GPU.

    The one place the project runs nvidia-smi: ``serve``'s device choice and the
    hardware recorded in results files (``harness.sysinfo``) both read it here."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [[c.strip() for c in line.split(",")] for line in r.stdout.splitlines()
            if line.count(",") >= 2]
    if r.returncode != 0 or not rows:
        return None
    m = re.match(r"\s*(\d+(?:\.\d+)*)", rows[0][-1])
    return NvidiaSmi([", ".join(row[:-1]) for row in rows], m.group(1) if m else None)


def _torch_cuda() -> tuple[bool, str]:
    import torch

    return torch.cuda.is_available(), f"torch {torch.__version__} (CUDA {torch.version.cuda})"


def resolve() -> str:
    """``"gpu"`` or ``"cpu"``; raises DeviceError instead of a silent fallback."""
    wanted = os.environ.get(DEVICE_ENV, "").strip().lower()
    if wanted not in ("", "cpu", "gpu"):
        raise DeviceError(f"{DEVICE_ENV}={wanted!r}: use cpu or gpu")
    if wanted == "cpu":
        return "cpu"
    usable, torch_desc = _torch_cuda()
    if usable:
        return "gpu"
    smi = nvidia_smi()
    if smi is None and wanted != "gpu":
        return "cpu"
    if smi is None:
        raise DeviceError(f"{DEVICE_ENV}=gpu but neither torch nor nvidia-smi sees a GPU")
    old = smi.driver_major is not None and smi.driver_major < MIN_DRIVER
    hint = (f"driver {smi.driver} is older than {MIN_DRIVER}, which CUDA 13 builds need; "
            "upgrade the NVIDIA driver" if old
            else f"check that the torch build matches CUDA driver {smi.driver or 'unknown'}")
    raise DeviceError(
        f"nvidia-smi lists {len(smi.gpus)} GPU(s) ({smi.gpus[0]}) but {torch_desc} cannot "
        f"use them: {hint}. Set {DEVICE_ENV}=cpu to run on the CPU anyway."
    )


@dataclass(frozen=True)
class GpuFacts:
    """What ``serve`` plans a GPU by: its streaming multiprocessors (the triton decode
    kernel's parallelism), its memory as ``nvidia-smi`` reports it (what SGLang sizes
    its reserve by) and as torch reports it (``total_memory``: what is free before the
    weights, less the CUDA context)."""

    name: str
    sm_count: int
    memory_mib: int
    torch_mib: int


#: GPUs ``serve --dry-run --gpu NAME`` can plan for without one (SXM parts). H200: as
#: the project's H200 host reported them (nvidia-smi 143,771 MiB; torch "a total
#: capacity of 139.80 GiB"); H100 80GB HBM3: nvidia-smi's 81,559 MiB, torch's 79.19 GiB.
KNOWN_GPUS: dict[str, GpuFacts] = {
    "H100": GpuFacts("NVIDIA H100 80GB HBM3", 132, 81_559, 81_090),
    "H200": GpuFacts("NVIDIA H200", 132, 143_771, 143_155),
}


def known_gpu(name: str) -> GpuFacts:
    """Facts of a GPU by its short name (``H100``, ``h200``); ValueError lists the names."""
    key = name.strip().upper()
    if key not in KNOWN_GPUS:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(KNOWN_GPUS)}")
    return KNOWN_GPUS[key]


def this_gpu() -> GpuFacts:
    """Facts of GPU 0 of this machine (torch must see it)."""
    import torch

    props = torch.cuda.get_device_properties(0)
    smi = nvidia_smi()
    m = re.search(r"(\d+) MiB", smi.gpus[0]) if smi is not None else None
    mib = props.total_memory >> 20
    return GpuFacts(props.name, props.multi_processor_count, int(m.group(1)) if m else mib, mib)
