"""Provenance for every results file: command, git commit, versions, hardware.

Versions are read from package metadata (``importlib.metadata``), never by importing
the packages, so the harness stays free of sglang/torch imports. GPUs come from
``sglang_mixkv.device.nvidia_smi`` (the one nvidia-smi query; standard library only).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from sglang_mixkv.device import nvidia_smi

PACKAGES = ("sglang", "vllm", "torch", "aiohttp", "numpy", "pandas", "orjson", "matplotlib")


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


#: The commit of a copy without git metadata (a GPU host's), set by whoever copied it.
COMMIT_ENV = "MIXKV_COMMIT"


def git_info(cwd: Path | None = None) -> dict:
    """The checkout's commit and whether tracked files differ from it; ``$MIXKV_COMMIT``
    (a copy of a clean checkout made elsewhere) names the commit where git cannot."""
    if os.environ.get(COMMIT_ENV):
        return {"commit": os.environ[COMMIT_ENV], "dirty": False, "source": COMMIT_ENV}
    root = cwd or Path(__file__).resolve().parent.parent
    commit = _run(["git", "-C", str(root), "rev-parse", "HEAD"])
    dirty = _run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit or "unknown (no commit yet)", "dirty": bool(dirty)}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    hw = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        hw["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    smi = nvidia_smi()
    hw["gpus"] = smi.gpus if smi else []
    return hw


def collect(argv: list[str] | None = None) -> dict:
    argv = sys.argv if argv is None else argv
    return {"command": shlex.join([Path(sys.executable).name, "-m", "harness", *argv[1:]])
            if argv and argv[0].endswith("__main__.py") else shlex.join(argv),
            "argv": list(argv), "cwd": os.getcwd(), "git": git_info(),
            "versions": versions(), "hardware": hardware()}


def provenance_lines(meta: dict) -> list[str]:
    """A report's header bullets from :func:`collect`'s record: the command, the commit
    (marked when the tree was dirty), package versions and hardware."""
    git = meta.get("git", {})
    return [f"- command: `{meta.get('command')}`",
            f"- commit: `{git.get('commit')}`" + (" (dirty)" if git.get("dirty") else ""),
            f"- versions: {json.dumps(meta.get('versions'))}",
            f"- hardware: {json.dumps(meta.get('hardware'))}"]
