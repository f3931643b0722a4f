"""Tensor parallelism: SGLang's own TP on the CPU (two ranks, gloo), our model sharded.

Users who outgrow one GPU use SGLang's TP/DP; this is how we know our model shards
right: the TP=2 server matches the single-process reference, and each rank's pools
hold only that rank's KV heads (the pool split with ``kv_heads / tp``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from sglang_mixkv import capacity as cap
from sglang_mixkv.plan import resolve
from sglang_mixkv.reference import Reference
from sglang_mixkv.serve import eviction_interval
from sglang_mixkv.sizes import SIZES, write_model_folder
from tests.serving import start_server
from tests.test_serving import check, prompt

pytestmark = pytest.mark.server

SIZE = SIZES["tiny"]  # 4 query heads, 2 KV heads: one KV head per rank
BUDGET, MAX_RUNNING, CHUNK, TP = 16 << 20, 8, 128, 2
SPEC = "ma-pairs"  # two global producers, local producers, consumers of both kinds


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("tp") / SPEC
    write_model_folder(model_dir, SIZE, SPEC, weights=True, seed=1)
    server = start_server(
        ["--model-path", str(model_dir), "--kv-budget", str(BUDGET), "--tp-size", str(TP),
         "--max-running-requests", str(MAX_RUNNING), "--chunked-prefill-size", str(CHUNK)],
        log=model_dir / "server.log",
    )
    yield server, Reference(model_dir)
    server.stop()


def test_tp2_matches_the_reference(served):
    server, ref = served
    ids = prompt(11, 3 * SIZE.window + 5)  # decode past the window too
    check(server.generate(ids, 2 * SIZE.window + 3), ref, ids, 2 * SIZE.window + 3)
    cases = [(prompt(20 + i, n), m) for i, (n, m) in enumerate([(5, 20), (90, 12), (300, 4)])]
    with ThreadPoolExecutor(len(cases)) as pool:
        outs = list(pool.map(lambda c: server.generate(*c), cases))
    for (ids, m), out in zip(cases, outs):
        check(out, ref, ids, m)


def test_each_rank_pools_only_its_kv_heads(served):
    server, _ = served
    info = server.get("/server_info").json()
    assert info["tp_size"] == TP
    usage = info["internal_states"][0]["memory_usage"]
    plan = resolve(SPEC, SIZE.num_layers)
    per_rank = cap.KVDims(SIZE.kv_heads // TP, SIZE.head_dim, SIZE.dtype_bytes)
    split = cap.pool_split(BUDGET, plan, per_rank, window=SIZE.window, max_running=MAX_RUNNING,
                           chunk=CHUNK, eviction_interval=eviction_interval(SIZE.window))
    assert usage["token_capacity"] == split.global_tokens
    assert usage["token_capacity_swa"] == split.local_tokens
    whole = cap.pool_split(BUDGET, plan, cap.KVDims.of(SIZE), window=SIZE.window,
                           max_running=MAX_RUNNING, chunk=CHUNK,
                           eviction_interval=eviction_interval(SIZE.window))
    assert split.global_tokens > 1.9 * whole.global_tokens  # half the bytes per token
