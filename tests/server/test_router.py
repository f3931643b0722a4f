"""Data parallelism through SGLang's router: two of our servers behind ``sglang-router``
(``python -m sglang_mixkv.router``), every request checked against the reference, the
keys' reach through the router, and the harness run through it."""

from __future__ import annotations

import json
import os
import random
import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest

from mixkv_bench.reference import Reference
from sglang_mixkv.model_folder import SIZES, write_model_folder
from sglang_mixkv.router import check_keys
from harness.server import router_ready
from tests.helpers.harness_fixtures import cli, records
from tests.helpers.serving import start_server

pytestmark = pytest.mark.server
SIZE = SIZES["tiny"]
KEY, ADMIN = "user-" + secrets.token_hex(12), "admin-" + secrets.token_hex(12)
USER, ADMIN_H = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {ADMIN}"}
ENV = {"MIXKV_API_KEY": KEY, "MIXKV_ADMIN_API_KEY": ADMIN}


@pytest.fixture(scope="module")
def dp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp")
    model = write_model_folder(tmp / "ma", SIZE, "ma", weights=True, seed=1)
    with ThreadPoolExecutor(2) as pool:  # start both at once
        starts = [pool.submit(start_server, ["--model-path", str(model), "--kv-budget", "16MiB",
                                             "--max-running-requests", "8"],
                              log=tmp / f"server{i}.log", env=ENV) for i in range(2)]
    servers = [f.result() for f in starts if f.exception() is None]
    router = None
    try:
        if len(servers) < 2:
            raise next(f.exception() for f in starts if f.exception() is not None)
        router = start_server(["--workers", *(s.url for s in servers)], log=tmp / "router.log",
                              env=ENV, module="sglang_mixkv.router", ready=router_ready(2))
        yield router, servers, Reference(model)
    finally:
        for s in [router, *servers]:
            if s is not None:
                s.stop()


def served_generates(s) -> int:
    return s.log_text().count("POST /generate HTTP")


def test_requests_reach_both_servers_and_match_the_reference(dp):
    router, servers, ref = dp
    readiness = router.get("/readiness").json()  # what the fixture waited for
    assert (readiness["healthy_workers"], readiness["total_workers"]) == (2, 2), readiness
    before = [served_generates(s) for s in servers]
    rng = random.Random(3)
    prompts = [[rng.randrange(3, SIZE.vocab) for _ in range(rng.randrange(20, 90))] for _ in range(8)]

    def one(ids):
        r = router.post("/generate", {"input_ids": ids, "sampling_params": {
            "max_new_tokens": 6, "temperature": 0, "ignore_eos": True}}, headers=USER)
        assert r.status_code == 200, r.text
        return r.json()["output_ids"]

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(one, prompts))
    for ids, out in zip(prompts, outs):
        assert out == ref.generate(ids, 6).tokens
    reached = [served_generates(s) - b for s, b in zip(servers, before)]
    assert sum(reached) == len(prompts) and min(reached) > 0, reached
    chat = router.post("/v1/chat/completions", {"model": "default", "max_tokens": 3, "messages": [
        {"role": "user", "content": "t5 t6 t7"}]}, headers=USER)
    assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 3


def test_the_users_key_cannot_reconfigure_through_the_router(dp):
    router, servers, _ = dp
    body = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 2}}
    assert router.post("/generate", body).status_code == 401
    assert router.post("/generate", body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    # worker management and the router's flush take the admin key only
    assert router.get("/workers", headers=USER).status_code == 401
    assert router.post("/workers", {"url": "http://127.0.0.1:9"}, headers=USER).status_code == 401
    assert router.post("/flush_cache", {}, headers=USER).status_code == 401
    assert router.get("/workers", headers=ADMIN_H).json()["total"] == 2
    # SGLang's admin routes are not forwarded at all
    for path in ("/pause_generation", "/update_weights_from_disk", "/configure_logging"):
        assert router.post(path, {}, headers=USER).status_code == 404
        assert router.post(path, {}, headers=ADMIN_H).status_code == 404
    assert all(s.alive() for s in servers)
    for s in [router, *servers]:
        assert KEY not in s.log_text() and ADMIN not in s.log_text()


def test_harness_through_the_router_flushes_each_server(dp, tmp_path):
    router, servers, _ = dp
    out = tmp_path / "run"
    p = cli("run", "--url", router.url, *[x for s in servers for x in ("--backend", s.url)],
            "--num-prompts", "6", "--input-len", "48", "--output-len", "4", "--concurrency", "2,4",
            "--warmup", "1", "--out", str(out), "--no-report", "--api", "chat",
            env={**os.environ, **ENV})
    assert p.returncode == 0, p.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["flush"] == {"2": "ok", "4": "ok"}
    assert meta["config"]["backends"] == [s.url for s in servers]
    assert all(r["ok"] and r["completion_tokens"] == 4 for r in records(out))
    assert json.loads((out / "server_info.json").read_text())["version"] == "0.5.17"
    assert KEY not in (out / "meta.json").read_text()


def test_a_router_with_a_users_key_needs_the_admin_key():
    with pytest.raises(ValueError, match="add and remove servers"):
        check_keys("127.0.0.1", "k", None, False)
    with pytest.raises(ValueError, match="without"):
        check_keys("0.0.0.0", None, None, False)
    check_keys("127.0.0.1", None, None, False)
    check_keys("0.0.0.0", "k", "a", False)


def test_router_refuses_to_start_with_only_a_users_key():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "sglang_mixkv.router", "--workers", "http://x:1"],
                       env={**os.environ, "MIXKV_API_KEY": KEY, "MIXKV_ADMIN_API_KEY": ""},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "add and remove servers" in p.stderr and KEY not in p.stderr
