"""The server at its limits: a local pool smaller than one request, bad input, aborts."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys

import aiohttp
import pytest

from mixkv_bench.reference import Reference
from sglang_mixkv.model_folder import SIZES, write_model_folder
from tests.helpers.serving import REPO, free_port, start_server
from tests.server.test_serving import check, prompt

pytestmark = pytest.mark.server
SIZE = SIZES["tiny"]


@pytest.fixture(scope="module")
def ma_model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("m") / "ma", SIZE, "ma", weights=True, seed=3)


def test_local_pool_smaller_than_one_request(ma_model, tmp_path):
    """One running request: the local pool holds window + eviction slack + two chunks
    (~300 tokens), far less than the 1,000-token prompt and 60 decoded tokens. It only
    works if out-of-window local KV is freed during chunked prefill and decode."""
    server = start_server(["--model-path", str(ma_model), "--kv-budget", "16MiB",
                           "--max-running-requests", "1", "--chunked-prefill-size", "128"],
                          log=tmp_path / "server.log")
    try:
        local = server.get("/server_info").json()["internal_states"][0]["memory_usage"]["token_capacity_swa"]
        ids = prompt(40, 1000)
        assert 3 * local < len(ids)  # the local pool holds under a third of the prompt
        check(server.generate(ids, 60, logprob_start_len=len(ids) - 1), Reference(ma_model),
              ids, 60, prompt_logprobs=False)
    finally:
        server.stop()


def test_invalid_plan_fails_at_startup(ma_model, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ma_model.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["mixkv_plan"] = "GlLlLlLlLlLl"[:1] + "x" + cfg["mixkv_plan"][2:]
    (bad / "config.json").write_text(json.dumps(cfg))
    # our serve command refuses before starting SGLang ...
    r = subprocess.run([sys.executable, "-m", "sglang_mixkv.serve", "--model-path", str(bad)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "layer 1: unknown letter 'x'" in r.stderr
    # ... and plain sglang.launch_server dies at model construction with the same error.
    r = subprocess.run(
        [sys.executable, "-m", "sglang.launch_server", "--model-path", str(bad), "--device", "cpu",
         "--attention-backend", "torch_native", "--max-running-requests", "4",
         "--max-total-tokens", "4096", "--port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=240, start_new_session=True,
    )
    assert r.returncode != 0 and "layer 1: unknown letter 'x'" in r.stdout + r.stderr


@pytest.fixture(scope="module")
def leak_checked_server(ma_model, tmp_path_factory):
    """SGLang's own pool invariant check after every step (it raises, and the server
    dies, if a KV slot is lost or freed twice)."""
    server = start_server(
        ["--model-path", str(ma_model), "--kv-budget", "16MiB", "--max-running-requests", "8",
         "--chunked-prefill-size", "128", "--enable-metrics"],
        log=tmp_path_factory.mktemp("logs") / "server.log",
        env={"SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY": "1"},
    )
    yield server
    server.stop()


def test_prompt_longer_than_context_is_a_4xx(leak_checked_server):
    s = leak_checked_server
    r = s.post("/generate", {"input_ids": prompt(1, SIZE.max_position + 10),
                             "sampling_params": {"max_new_tokens": 4}})
    assert 400 <= r.status_code < 500
    assert "context length" in r.text.lower() or "longer than" in r.text.lower(), r.text
    r = s.post("/v1/completions", {"model": "default", "prompt": prompt(2, SIZE.max_position + 10),
                                   "max_tokens": 4})
    assert 400 <= r.status_code < 500
    assert s.generate(prompt(3, 20), 4)["meta_info"]["completion_tokens"] == 4  # still serving


def metric(text: str, name: str) -> float:
    vals = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")]
    assert vals, f"{name} not in /metrics"
    return sum(vals)


def test_mixed_requests_with_aborts_leave_pool_free(leak_checked_server):
    s = leak_checked_server
    rng = random.Random(7)
    done = {"ok": 0, "aborted": 0}

    async def one(session, i):
        ids = [rng.randrange(3, SIZE.vocab) for _ in range(rng.randrange(5, 250))]
        body = {"input_ids": ids, "stream": True,
                "sampling_params": {"max_new_tokens": rng.randrange(1, 40), "ignore_eos": True}}
        async with session.post(s.url + "/generate", json=body) as r:
            assert r.status == 200
            if i % 4 == 3:  # client walks away mid-stream; the server must abort and free
                await r.content.readline()
                r.close()
                done["aborted"] += 1
                return
            async for _ in r.content:
                pass
            done["ok"] += 1

    async def run():
        sem = asyncio.Semaphore(12)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            async def guarded(i):
                async with sem:
                    await one(session, i)
            await asyncio.gather(*(guarded(i) for i in range(160)))

    asyncio.run(run())
    assert done == {"ok": 120, "aborted": 40}
    assert s.alive(), "the strict per-step memory check stopped the server"
    s.flush()  # SGLang flushes once the aborted requests have drained
    m = s.get("/metrics").text
    assert metric(m, "sglang:num_used_tokens") == 0
    assert metric(m, "sglang:swa_token_usage") == 0
    assert s.generate(prompt(4, 50), 5)["meta_info"]["completion_tokens"] == 5
    assert "leak" not in s.log_text().lower()
