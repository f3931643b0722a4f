"""make bench / make capacity: end to end on CPU, interrupted half way, probe arithmetic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mixkv_bench.probe import peak_overlap
from tests.helpers import SIGINT_DEFAULT
from tests.helpers.serving import REPO, free_port


def test_peak_overlap():
    assert peak_overlap([]) == 0
    assert peak_overlap([(0, 2), (1, 3), (2, 4)]) == 2  # an end and a start at t=2 don't overlap
    assert peak_overlap([(0, 10), (1, 9), (2, 8)]) == 3
    assert peak_overlap([(0, 10), (1, 9), (5, 8)], before=4) == 2  # ignores starts after a retraction


def _server_processes(port: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"--port {port}" in line and "ps -eo" not in line]


@pytest.mark.server
def test_bench_runs_and_an_interrupt_keeps_finished_variants(tmp_path):
    port = free_port()
    run = tmp_path / "run"
    cmd = [*SIGINT_DEFAULT, sys.executable, "-m", "sglang_mixkv.bench", "--plans", "standard,ma,ma-offset",
           "--num-prompts", "6", "--input-len", "96", "--output-len", "8", "--concurrency", "1,3",
           "--warmup", "1", "--repeats", "1", "--port", str(port), "--out", str(run)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # wait until the second variant's server is up, then stop the bench like Ctrl-C would
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (run / "ma" / "server_info.json").exists():
            break
        time.sleep(1)
    assert proc.poll() is None, proc.stdout.read()
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert _server_processes(port) == [], "the bench left a server running"

    report = (run / "report.md").read_text()
    assert "| standard |" in report and "Not measured" in report and "ma-offset" in report
    meta = json.loads((run / "meta.json").read_text())
    assert meta["settings"]["plans"] == ["standard", "ma", "ma-offset"] and meta["git"]["commit"]
    recs = [json.loads(x) for x in (run / "standard" / "harness" / "requests.jsonl").read_text().splitlines()]
    measured = [r for r in recs if not r["warmup"]]
    assert len(measured) == 12 and all(r["ok"] for r in measured)
    assert all(r["completion_tokens"] == 8 and r["prompt_tokens"] == 96 for r in measured)

    # the report can be rebuilt from what is there
    subprocess.run([sys.executable, "-m", "sglang_mixkv.bench", "--report-only", str(run)],
                   cwd=REPO, check=True, capture_output=True)
    assert (run / "capacity.csv").read_text().count("\n") == 4


def test_bench_rejects_a_bad_plan_before_starting_anything(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sglang_mixkv.bench", "--plans", "standard,GLq",
                        "--out", str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown letter 'q'" in r.stderr
    assert not (tmp_path / "x").exists()
