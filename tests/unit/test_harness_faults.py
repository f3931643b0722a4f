"""Faults a real server can't produce on demand, against the stub."""

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.helpers import SIGINT_DEFAULT
from tests.helpers.harness_fixtures import ROOT, cli, records, run_inproc, stub

SMALL = ["--num-prompts", "6", "--input-len", "32", "--output-len", "5", "--warmup", "0",
         "--vocab-size", "512"]


def test_server_not_up_is_a_clear_error(tmp_path):
    p = cli("run", "--url", "http://127.0.0.1:9", "--profile", "cpu-smoke", "--out", str(tmp_path / "r"))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: server not reachable at http://127.0.0.1:9")
    assert not (tmp_path / "r").exists()  # nothing created


@pytest.mark.parametrize("fault,error", [
    ("http500", "HTTP 500: stub: injected 500"),
    ("drop", "ClientPayloadError"),
    ("error", "server error in stream: stub: injected error"),
])
def test_failed_requests_are_recorded_and_the_run_goes_on(tmp_path, fault, error):
    with stub("--fault", fault, "--fault-every", "3") as (url, _):
        p = cli("run", "--url", url, *SMALL, "--concurrency", "1,2", "--out", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr
    recs = records(tmp_path / "r")
    assert len(recs) == 12  # every request of both levels was sent and recorded
    bad = [r for r in recs if not r["ok"]]
    assert len(bad) == 4 and all(error in r["error"] for r in bad)  # every 3rd request
    s = pd.read_csv(tmp_path / "r" / "summary.csv")
    assert s["failed"].tolist() == [2, 2] and s["ok"].tolist() == [4, 4]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Failures (4)" in md and error.split(":")[0] in md


def test_stalled_stream_times_out(tmp_path):
    with stub("--fault", "stall", "--fault-every", "2", "--fault-after", "1") as (url, _):
        d = run_inproc(url, tmp_path / "r", num_prompts=4, concurrency=[4], timeout=0.5)
    recs = records(d)
    bad = [r for r in recs if not r["ok"]]
    assert len(recs) == 4 and len(bad) == 2
    for r in bad:
        assert r["error"] == "timeout: no end of stream after 0.5 s"
        assert r["stream_tokens"] == 1 and r["first"] is not None  # it did start streaming


def test_sigint_keeps_partial_results_and_report_works(tmp_path):
    out = tmp_path / "r"
    with stub("--token-delay", "0.02") as (url, _):
        p = subprocess.Popen([*SIGINT_DEFAULT, sys.executable, "-m", "harness", "run", "--url", url, *SMALL,
                              "--num-prompts", "200", "--concurrency", "4", "--out", str(out)],
                             cwd=ROOT, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        jsonl = out / "requests.jsonl"
        while not (jsonl.exists() and len(jsonl.read_text().splitlines()) >= 8):
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err
    assert json.loads((out / "meta.json").read_text())["status"] == "interrupted"
    recs = records(out)
    done = [r for r in recs if r["ok"]]
    cancelled = [r for r in recs if r["cancelled"]]
    assert len(done) >= 8 and 1 <= len(cancelled) <= 4 and len(recs) < 200
    q = cli("report", str(out), "--out", str(tmp_path / "rep"))
    assert q.returncode == 0, q.stderr
    s = pd.read_csv(tmp_path / "rep" / "summary.csv").iloc[0]
    assert (s["ok"], s["cancelled"], s["failed"]) == (len(done), len(cancelled), 0)
    assert s["output_tok_per_s"] > 0


def test_server_dying_mid_run(tmp_path):
    """Levels 1, 2, 4 of 6 requests; the server dies after 8 have finished (all of level
    1, two of level 2). The run keeps every record, names what each failed request's
    connection did, and stops at the next cache flush (a flush that fails is an error:
    the next level would not be measured on what the report claims), exit 1, report kept."""
    with stub("--die-after", "8", "--token-delay", "0.01") as (url, proc):
        p = cli("run", "--url", url, *SMALL, "--concurrency", "1,2,4", "--out", str(tmp_path / "r"))
        assert proc.wait(timeout=10) == 1  # it did die
    assert p.returncode == 1 and "flush_cache" in p.stderr, p.stderr
    recs = records(tmp_path / "r")
    assert len(recs) == 12  # levels 1 and 2; level 4 never started
    ok = [r for r in recs if r["ok"]]
    assert len(ok) == 8  # everything that finished before the crash is kept
    bad = [r for r in recs if not r["ok"]]
    # named by what the connection did: cut mid-stream (payload error, reset, disconnected)
    # for those in flight, refused for those sent after the crash
    kinds = ("ClientPayloadError", "ClientOSError", "ServerDisconnectedError", "ClientConnectorError")
    assert all(r["error"].startswith(kinds) for r in bad), [r["error"] for r in bad]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Failures (4)" in md
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["flush"] == {"1": "ok", "2": "ok"}


def test_server_without_flush_cache(tmp_path):
    with stub("--no-flush") as (url, _):
        d = run_inproc(url, tmp_path / "r", concurrency=[1, 2])
    meta = json.loads((d / "meta.json").read_text())
    assert meta["flush"] == {"1": "unsupported", "2": "unsupported"}
    assert all(r["ok"] for r in records(d))


def test_refuses_to_overwrite_a_run(tmp_path):
    with stub() as (url, _):
        run_inproc(url, tmp_path / "r")
        p = cli("run", "--url", url, *SMALL, "--out", str(tmp_path / "r"))
    assert p.returncode == 2 and "exists" in p.stderr
