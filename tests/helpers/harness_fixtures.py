"""Helpers for the harness tests: the stub server in a subprocess, the CLI, synthetic runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from harness import runner
from harness.workload import IdRange

ROOT = Path(__file__).resolve().parents[2]
STUB = Path(__file__).resolve().parent / "harness_stub.py"


@contextlib.contextmanager
def stub(*args: str):
    """Start ``tests/harness_stub.py ARGS`` on an ephemeral port; yield ``(url, proc)``."""
    proc = subprocess.Popen([sys.executable, str(STUB), "--port", "0", *args],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), f"stub did not start: {line!r}"
        yield f"http://127.0.0.1:{line.split()[1]}", proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_inproc(url: str, out: Path, loop_factory=None, **kw) -> Path:
    """Run the harness in this process (small defaults; ``kw`` overrides RunConfig fields).

    ``loop_factory`` picks the event loop (default: the current policy's, which is uvloop
    once any SGLang entrypoint module was imported in this process).
    """
    cfg = dict(url=url, out=out, label="t", num_prompts=6, input_len=32, output_len=5,
               concurrency=[2], warmup=0, timeout=30, id_range=IdRange(3, 512), progress=False)
    cfg.update(kw)
    with asyncio.Runner(loop_factory=loop_factory) as r:
        return r.run(runner.run(runner.RunConfig(**cfg), ["test"]))


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """``python -m harness ARGS`` in a subprocess, from the repo root."""
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, **kw)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "requests.jsonl").read_text().splitlines()]


def fake_record(**kw) -> dict:
    """A successful measured record (JSONL shape) with overridable fields."""
    r = dict(label="a", level=1, rate=None, index=0, warmup=False, api="generate",
             input_len=10, output_len=3, due=0.0, sent=0.0, first=0.1, done=0.3, ttft=0.1,
             ttft_from_due=0.1, e2e=0.3, e2e_from_due=0.3, prompt_tokens=10,
             completion_tokens=3, cached_tokens=0, stream_tokens=3, chunks=3,
             itl=[0.1, 0.1], ok=True, status=200, error=None, cancelled=False, mismatch=None)
    r.update(kw)
    return r


def write_run(d: Path, recs: list[dict], label: str = "a", status: str = "complete") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "meta.json").write_text(json.dumps({"label": label, "status": status, "config": {
        "api": "generate", "num_prompts": len(recs), "input_len": 10, "output_len": 3}}))
    return d
