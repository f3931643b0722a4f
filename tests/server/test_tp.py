"""Tensor parallelism: SGLang's own TP on the CPU (two ranks, gloo), our model sharded.

Users who outgrow one GPU use SGLang's TP/DP; this is how we know our model shards
right: the TP=2 server matches the single-process reference, and each rank's pools
hold only that rank's KV heads (the pool split with ``kv_heads / tp``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from mixkv_bench.reference import Reference
from sglang_mixkv.model_folder import SIZES, write_model_folder
from tests.helpers.serving import start_server
from tests.server.test_serving import check, prompt

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
    """Each rank holds one of the two KV heads: 2 x 1 x 32 x 4 B = 256 B per layer-token,
    half of the single-process figure, so each rank's global pool holds about twice the
    tokens. By hand for ma-pairs (2 global, 4 local producers), 16 MiB per rank: local
    pool (32 + 2 + 2) x 8 + 2 x 128 + 1 = 545 tokens (545 x 4 x 256 B), global
    (16,777,216 - 558,080) / (2 x 256) = 31,678 tokens (15,294 at one process)."""
    server, _ = served
    info = server.get("/server_info").json()
    assert info["tp_size"] == TP
    usage = info["internal_states"][0]["memory_usage"]
    assert usage["token_capacity"] == 31_678
    assert usage["token_capacity_swa"] == 545


def test_adakv_at_tp2_allocates_within_each_rank(tmp_path):
    """Ada-KV with tensor parallelism: 4 KV heads (MHA on the tiny size), two per rank.
    Each rank scores its own heads with its own query heads and spreads the budget among
    them (per-rank allocation: no scores cross ranks); the reference allocates the same
    way (``tp=2``), and the outputs match it with the server's kept sets."""
    from dataclasses import replace

    from mixkv_bench.reference import AdaBudget
    from tests.helpers.adakv import assert_kept_match, server_kept

    model_dir = write_model_folder(tmp_path / "ma", replace(SIZE, kv_heads=4), "ma", weights=True,
                                   seed=1)
    debug = tmp_path / "kept.jsonl"
    server = start_server(
        ["--model-path", str(model_dir), "--kv-budget", str(BUDGET), "--tp-size", str(TP),
         "--max-running-requests", str(MAX_RUNNING), "--chunked-prefill-size", str(CHUNK),
         "--adakv-budget", "48", "--adakv-window", "8"],
        log=tmp_path / "server.log", env={"MIXKV_ADAKV_DEBUG_JSONL": str(debug)})
    ref, cfg = Reference(model_dir), AdaBudget(budget=48, window=8)
    try:
        ids = prompt(31, 160)
        out = server.generate(ids, 10, rid="tp", logprob_start_len=-1)
        kept = server_kept(debug, "tp")
        assert sorted(kept) == [0] and len(kept[0]) == 4  # one global producer, 4 heads
        assert_kept_match(kept, ref, ids, cfg, tp=TP)
        # per rank: each rank's two heads keep 2 x 48 in all (one token of rounding)
        for rank in range(TP):
            assert abs(sum(len(h) for h in kept[0][2 * rank: 2 * rank + 2]) - 96) <= 1
        tokens = [t[1] for t in out["meta_info"]["output_token_logprobs"]]
        assert tokens == ref.teacher_forced(ids, tokens, kept=kept)[0].tokens
    finally:
        server.stop()
