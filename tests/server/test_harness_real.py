"""The harness against the real SGLang server with our tiny model on CPU (slow).

The server runs in its own process group (SGLang SIGKILLs its parent when its scheduler
dies, so never inside this process); teardown kills the whole group.
"""

import json
import os
import signal
import sys

import pytest

from harness import server

from tests.helpers.harness_fixtures import cli, records

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def sglang(tmp_path_factory):
    port = server.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "sglang_mixkv.serve", "--plan", "standard", "--size", "tiny",
           "--port", str(port)]
    log = tmp_path_factory.mktemp("server") / "server.log"
    with server.launched(cmd, url, log, timeout=600) as proc:
        yield url
    with pytest.raises(ProcessLookupError):  # the whole group is gone
        os.killpg(proc.pid, signal.SIG_DFL)


def run(url, out, *args):
    p = cli("run", "--url", url, "--num-prompts", "4", "--input-len", "64", "--output-len", "4",
            "--warmup", "1", "--out", str(out), "--no-report", *args)
    assert p.returncode == 0, p.stderr
    return [r for r in records(out) if not r["warmup"]]


@pytest.mark.parametrize("api", ["generate", "openai", "chat"])
def test_sweep_exact_lengths_no_failures(sglang, tmp_path, api):
    recs = run(sglang, tmp_path / "r", "--api", api, "--concurrency", "1,4")
    assert len(recs) == 8
    for r in recs:
        assert r["ok"] and r["error"] is None and r["mismatch"] is None, r
        template = 3 if api == "chat" else 0  # <s>, the user's and the assistant's role words
        assert (r["prompt_tokens"], r["completion_tokens"], r["stream_tokens"]) == (64 + template, 4, 4)
        # one ITL entry per token after the first chunk (harness/client.py): 3 when every
        # chunk carries one token; fewer when the server coalesced tokens into the first
        # chunk (seen for chat under CI's load); never fewer than the later chunks
        assert r["chunks"] - 1 <= len(r["itl"]) <= 4 - 1 and r["ttft"] > 0, r
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["status"] == "complete" and set(meta["flush"].values()) == {"ok"}
    assert meta["config"]["vocab_size"] == 512  # discovered from the model folder
    assert json.loads((tmp_path / "r" / "server_info.json").read_text())["version"] == "0.5.17"
    p = cli("report", str(tmp_path / "r"))
    assert p.returncode == 0 and (tmp_path / "r" / "summary.csv").is_file()


def test_same_prompt_twice_hits_the_cache(sglang, tmp_path):
    # two levels over the same prompts without a flush: the second level reuses the prefix
    recs = run(sglang, tmp_path / "a", "--concurrency", "1,1", "--no-flush", "--seed", "7")
    first = [r["cached_tokens"] for r in recs if r["level"] == 1][:4]
    second = [r["cached_tokens"] for r in recs if r["level"] == 1][4:]
    assert max(first) < 8 and min(second) >= 60, (first, second)
    # with the flush between levels, nothing is reused
    recs = run(sglang, tmp_path / "b", "--concurrency", "1,1", "--seed", "7")
    assert max(r["cached_tokens"] for r in recs) < 8
