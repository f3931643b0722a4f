"""The real SGLang server with our model, on CPU, against the plain-PyTorch reference.

One server per plan (module-scoped); every preset plus an all-local plan. Each check
compares greedy tokens exactly and logprobs within LOGPROB_TOL, for the prompt (every
position's next-token logprob, which covers prefill across window and chunk
boundaries) and for the generated tokens (decode past the window, where local KV has
been evicted from the windowed pool)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from sglang_mixkv import capacity as cap
from sglang_mixkv.plan import PRESET_NAMES, resolve
from sglang_mixkv.reference import Reference
from sglang_mixkv.serve import eviction_interval
from sglang_mixkv.sizes import SIZES, write_model_folder
from tests.serving import start_server

pytestmark = pytest.mark.server

SIZE = SIZES["tiny"]  # 12 layers, window 32, float32
BUDGET = 16 << 20  # --kv-budget: same KV budget on any machine
MAX_RUNNING, CHUNK = 8, 128
# float32 on both sides; the server sums attention in a different order (chunks,
# windowed gathers), so allow ~100x the 1e-5 noise we observe.
LOGPROB_TOL = 2e-3
PLANS = list(PRESET_NAMES) + ["LlLlLlLlLlLl"]  # + all-local


@pytest.fixture(scope="module", params=PLANS)
def served(request, tmp_path_factory):
    spec = request.param
    model_dir = tmp_path_factory.mktemp("models") / spec
    write_model_folder(model_dir, SIZE, spec, weights=True, seed=1)
    server = start_server(
        ["--model-path", str(model_dir), "--kv-budget", str(BUDGET),
         "--max-running-requests", str(MAX_RUNNING), "--chunked-prefill-size", str(CHUNK)],
        log=model_dir / "server.log",
    )
    yield spec, server, Reference(model_dir)
    server.stop()


def prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, SIZE.vocab) for _ in range(n)]


def check(server_out: dict, ref: Reference, ids: list[int], max_new: int,
          prompt_logprobs: bool = True) -> None:
    meta = server_out["meta_info"]
    out = [t[1] for t in meta["output_token_logprobs"]]
    out_lp = [t[0] for t in meta["output_token_logprobs"]]
    gen = ref.generate(ids, max_new)
    assert out == gen.tokens, f"greedy tokens differ for a {len(ids)}-token prompt"
    assert max(abs(a - b) for a, b in zip(out_lp, gen.logprobs)) < LOGPROB_TOL
    want = ref.prompt_logprobs(ids) if prompt_logprobs else []
    if want:
        in_lp = [t[0] for t in meta["input_token_logprobs"]][1:]
        assert max(abs(a - b) for a, b in zip(in_lp, want)) < LOGPROB_TOL
    assert meta["prompt_tokens"] == len(ids) and meta["completion_tokens"] == max_new


def test_logits_are_informative(served):
    """Guard against a vacuous comparison: the reference's logits depend on the prompt."""
    _, _, ref = served
    a, b = ref.logits(prompt(1, 40))[-1], ref.logits(prompt(2, 40))[-1]
    assert (a.softmax(-1).max() > 0.05) and (a.argmax() != b.argmax() or (a - b).abs().max() > 1)


def test_short_prompt(served):
    _, server, ref = served
    ids = prompt(10, 7)
    check(server.generate(ids, 12), ref, ids, 12)


def test_prompt_of_several_windows_and_decode_past_window(served):
    _, server, ref = served
    ids = prompt(11, 3 * SIZE.window + 5)
    check(server.generate(ids, 2 * SIZE.window + 3), ref, ids, 2 * SIZE.window + 3)


def test_chunked_prefill(served):
    _, server, ref = served
    ids = prompt(12, 3 * CHUNK + 17)  # four chunks
    check(server.generate(ids, 6), ref, ids, 6)


def test_radix_cache_hit(served):
    spec, server, ref = served
    all_local = not resolve(spec, SIZE.num_layers).global_producers
    server.post("/flush_cache", {})
    first = prompt(13, 150)
    check(server.generate(first, 4), ref, first, 4)
    second = first + prompt(14, 45)
    # Prompt logprobs from position 0 would force a recompute; ask for the last one only.
    out = server.generate(second, 8, logprob_start_len=len(second) - 1)
    if all_local:  # served with --disable-radix-cache, see sglang_seams
        assert out["meta_info"]["cached_tokens"] == 0
    else:
        assert out["meta_info"]["cached_tokens"] >= len(first) - SIZE.window, \
            "same prefix twice should hit the radix cache"
    check(out, ref, second, 8, prompt_logprobs=False)


def test_concurrent_requests_of_different_lengths(served):
    _, server, ref = served
    cases = [(prompt(20 + i, n), m) for i, (n, m) in enumerate([(5, 40), (33, 20), (90, 35), (260, 10), (400, 5)])]
    with ThreadPoolExecutor(len(cases)) as pool:
        outs = list(pool.map(lambda c: server.generate(*c), cases))
    for (ids, m), out in zip(cases, outs):
        check(out, ref, ids, m)


def test_pool_matches_capacity_model(served):
    """/server_info token capacities == capacity.pool_split for the same budget; the KV
    bytes SGLang allocated == producers only (a buffer per consumer would multiply it)."""
    spec, server, _ = served
    plan = resolve(spec, SIZE.num_layers)
    info = server.get("/server_info").json()
    usage = info["internal_states"][0]["memory_usage"]
    dims = cap.KVDims.of(SIZE)
    split = cap.pool_split(BUDGET, plan, dims, window=SIZE.window, max_running=MAX_RUNNING,
                           chunk=CHUNK, eviction_interval=eviction_interval(SIZE.window))
    hybrid = bool(plan.local_producers) or plan.has_consumers
    if plan.global_producers:
        assert usage["token_capacity"] == split.global_tokens
    if hybrid:
        assert usage["token_capacity_swa"] == split.local_tokens
    # Allocated bytes: SGLang pads each pool by one page (here one token) and reports
    # GiB rounded to 3 decimals, so allow 0.0005 GiB + the padding.
    pt = cap.bytes_per_token(plan, dims)
    expected = split.global_bytes + split.local_bytes + pt.global_bytes + pt.local_bytes
    assert abs(usage["kvcache"] * 2**30 - expected) <= 0.0005 * 2**30 + 1024
