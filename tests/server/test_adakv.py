"""Ada-KV on the real server (torch_native, CPU) against the reference's independent
selection (``mixkv_bench.reference``): kept sets per layer and KV head, and outputs with
the server's kept sets injected into the reference (so near-ties cannot flip them).

Main server: tiny ``ma`` (window W = 32), budget B = 48 with a different observation
window w = 8 (the two windows cannot be confused), 32-token chunks, the radix cache on,
SGLang's strict per-step pool check. Others: ``cla2`` with alpha = 1 (SnapKV's uniform
budget), ``readers`` scoring and 16-token pages, ``cla2`` with the seeded random
baseline; ``standard`` with one KV head (MQA) and ``ma`` with both pools small, each
forcing retractions.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest
import requests
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mixkv_bench.reference import AdaBudget, Reference
from mixkv_bench.soak import STRICT_MEM_CHECK
from sglang_mixkv.model_folder import SIZES, write_model_folder
from tests.helpers.adakv import (assert_kept_match, planted_prompt, random_prompt,
                                 server_kept)
from tests.helpers.serving import Pipeline, Prestarted

pytestmark = pytest.mark.server
SIZE = SIZES["tiny"]
B, WIN, CHUNK = 48, 8, 32
PAGE = 16  # the "uniform" server's KV page (SGLang's paged allocator, in Triton's interpreter)
CFG = AdaBudget(budget=B, window=WIN)
LOGPROB_TOL = 2e-3  # float32 on both sides, as tests/server/test_serving.py


def prestart(tmp, spec: str, flags: list[str], *, kv_heads: int | None = None, env=None):
    """(the server, started now, awaited at first use; the reference; the kept-set log)."""
    model = tmp / spec
    size = SIZE if kv_heads is None else __import__("dataclasses").replace(SIZE, kv_heads=kv_heads)
    write_model_folder(model, size, spec, weights=True, seed=1)
    debug = tmp / "kept.jsonl"
    started = Prestarted(
        ["--model-path", str(model), "--kv-budget", "16MiB", "--max-running-requests", "8",
         "--chunked-prefill-size", str(CHUNK), "--enable-metrics", "--decode-log-interval", "2",
         *flags],
        log=tmp / "server.log", env={"MIXKV_ADAKV_DEBUG_JSONL": str(debug), **(env or {})})
    return started, model, debug


#: the module's servers, in the order its tests first use them (each started one ahead)
TIGHT_ADMISSION = {"SGLANG_INIT_NEW_TOKEN_RATIO": "0.01", "SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION": "1"}
SERVERS = {
    "ma": ("ma", ["--adakv-budget", str(B), "--adakv-window", str(WIN),
                  "--enable-return-hidden-states"], None, STRICT_MEM_CHECK),  # the fuzz asks for them
    "uniform": ("cla2", ["--adakv-budget", "40", "--adakv-window", "4", "--adakv-alpha", "1",
                         "--adakv-scoring", "readers", "--page-size", str(PAGE)], None, None),
    "random": ("cla2", ["--adakv-budget", "40", "--adakv-window", "4", "--adakv-rule", "random",
                        "--adakv-seed", "3", "--disable-radix-cache"], None, None),  # input_embeds
    "mqa": ("standard", ["--adakv-budget", "32", "--adakv-window", "8", "--max-total-tokens",
                         "400"], 1, {**STRICT_MEM_CHECK, **TIGHT_ADMISSION}),
    "ma_tight": ("ma", ["--adakv-budget", "40", "--adakv-window", "8", "--max-total-tokens",
                        "400"], None, {**STRICT_MEM_CHECK, **TIGHT_ADMISSION,
                                       "MIXKV_POOL_MAX_RUNNING": "2"}),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    debugs = {}

    def make(key):
        spec, flags, kv_heads, env = SERVERS[key]
        started, model, debug = prestart(tmp_path_factory.mktemp(key), spec, flags,
                                         kv_heads=kv_heads, env=env)
        debugs[key] = (model, debug)
        return started

    pipe = Pipeline(list(SERVERS), make)
    yield lambda key: (pipe.take(key), *debugs[key])
    pipe.close()


def serve_fixture(servers, key):
    server, model, debug = servers(key)
    return server, Reference(model), debug


@pytest.fixture(scope="module")
def ma(servers):
    server, ref, debug = serve_fixture(servers, "ma")
    yield server, ref, debug
    server.stop()


def generate(server, ids, n, rid, **extra) -> dict:
    return server.generate(ids, n, rid=rid, logprob_start_len=-1, **extra)


def check(server, ref, debug, ids, n, rid, cfg=CFG, tp=1) -> dict:
    """The server's kept sets match the reference's; its output equals the reference's
    greedy continuation with those kept sets."""
    out = generate(server, ids, n, rid)
    kept = server_kept(debug, rid)
    assert_kept_match(kept, ref, ids, cfg, tp=tp)
    meta = out["meta_info"]
    tokens = [t[1] for t in meta["output_token_logprobs"]]
    gen = ref.teacher_forced(ids, tokens, kept=kept or None)[0]  # = ref.generate(...)
    assert tokens == gen.tokens, f"greedy tokens differ ({len(ids)}-token prompt)"
    lps = [t[0] for t in meta["output_token_logprobs"]]
    assert max(abs(a - b) for a, b in zip(lps, gen.logprobs)) < LOGPROB_TOL
    return out


@pytest.mark.parametrize("n", [B - 1, B, B + 1, B + WIN])
def test_budget_boundaries(ma, n):
    """Compressed iff P >= B: P = B - 1 keeps everything, B on compress."""
    server, ref, debug = ma
    check(server, ref, debug, random_prompt(n, n, SIZE.vocab), 10, f"edge{n}")
    assert bool(server_kept(debug, f"edge{n}")) == (n >= B)


def test_planted_tokens_are_kept(ma):
    """A prompt with a planted token its window attends to: the kept sets, decided clear of
    any near-tie, are the reference's exactly, planted copies included."""
    server, ref, debug = ma
    ids, planted = planted_prompt(ref, 7, 160, CFG)
    check(server, ref, debug, ids, 8, "planted")
    kept = server_kept(debug, "planted")
    assert kept == ref.adakv_kept(ids, CFG)
    assert planted & {p for heads in kept.values() for h in heads for p in h}


def test_several_windows_past_the_budget_and_decode_past_the_window(ma):
    server, ref, debug = ma
    ids = random_prompt(11, 5 * SIZE.window + 7, SIZE.vocab)
    check(server, ref, debug, ids, 2 * SIZE.window + 3, "long")
    assert not server.generate(ids, 1, logprob_start_len=-1, rid="long-again")["meta_info"][
        "cached_tokens"], "a compressing request must not match the radix tree"


def test_observation_window_spanning_two_chunks(ma):
    """P = 70 with 32-token chunks: the window [62, 70) spans the last two chunks."""
    server, ref, debug = ma
    check(server, ref, debug, random_prompt(70, 70, SIZE.vocab), 9, "span")


def test_concurrent_requests_of_mixed_lengths(ma):
    server, ref, debug = ma
    cases = [(random_prompt(100 + i, n, SIZE.vocab), m, f"mix{i}")
             for i, (n, m) in enumerate([(20, 10), (47, 8), (90, 12), (150, 6), (60, 9)])]
    with ThreadPoolExecutor(len(cases)) as pool:
        outs = list(pool.map(lambda c: generate(server, *c), cases))
    for (ids, m, rid), out in zip(cases, outs):
        kept = server_kept(debug, rid)
        assert bool(kept) == (len(ids) >= B)
        assert_kept_match(kept, ref, ids, CFG)
        tokens = [t[1] for t in out["meta_info"]["output_token_logprobs"]]
        assert tokens == ref.teacher_forced(ids, tokens, kept=kept or None)[0].tokens


def test_kept_counts_in_meta_info_and_metrics(ma):
    server, _, debug = ma
    before = metric(server, "mixkv:adakv_freed_slots_total")
    ids = random_prompt(21, 200, SIZE.vocab)
    out = server.generate(ids, 4, rid="meta", logprob_start_len=-1,
                          sampling_params={"max_new_tokens": 4, "temperature": 0,
                                           "ignore_eos": True, "custom_params": {"adakv_kept": True}})
    (info,) = out["meta_info"]["adakv"]
    kept = server_kept(debug, "meta")
    # cut = P - B - 1 = 151 (page 1): the slots of prompt positions [0, 151) were freed
    assert info["prompt_tokens"] == 200 and info["cut"] == 151
    assert info["kept"] == {str(layer): [len(h) for h in heads] for layer, heads in kept.items()}
    # ma at 12 layers has one global producer (layer 0) with 2 KV heads: 2 x 48 kept on
    # average, window included (alpha rounding may move one token between heads)
    assert abs(sum(info["kept"]["0"]) - 2 * B) <= 1
    assert metric(server, "mixkv:adakv_freed_slots_total") - before == 151
    assert "adakv" not in generate(server, ids, 2, "no-ask")["meta_info"]


def metric(server, name: str) -> float:
    text = server.get("/metrics").text
    return sum(float(m) for m in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def idle_pool_used(server) -> int:
    """Tokens held in the pool once the server is idle, read live from /v1/loads (the
    /metrics gauge is only published on logging steps, so it can lag one request)."""
    deadline = time.time() + 60
    while True:
        load = server.get("/v1/loads?include=core").json()["loads"][0]
        if load.get("num_running_reqs", 0) + load.get("num_waiting_reqs", 0) == 0:
            return load["num_used_tokens"]
        assert time.time() < deadline, load
        time.sleep(0.5)


def test_prompt_slots_go_back_to_the_pool_during_decode(ma):
    """While a 600-token prompt decodes, the global pool holds its last B + 1 prompt slots
    and the decoded tokens, not 600 (SGLang's own gauge, published every 2 decode steps,
    read mid-decode from a streamed request); the other 600 - (B + 1) slots went back to
    the allocator at compression (our counter). (Sampling the gauge on a timer instead
    failed under CI's load: the tiny model prefills 600 tokens in about 0.1 s.)"""
    server, _, _ = ma
    ids = random_prompt(31, 600, SIZE.vocab)
    freed = metric(server, "mixkv:adakv_freed_slots_total")
    body = {"input_ids": ids, "rid": "pool", "stream": True, "sampling_params": {
        "max_new_tokens": 60, "temperature": 0, "ignore_eos": True}}
    mid = None  # (tokens seen, the pool gauge then): surely past compression
    with server.post("/generate", body, stream=True) as r:
        for line in r.iter_lines():
            if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                continue
            n = json.loads(line[5:])["meta_info"]["completion_tokens"]
            if mid is None and n >= 20:
                mid = (n, metric(server, "sglang:num_used_tokens"))
    assert mid is not None
    assert mid[1] <= B + 1 + 60 + 5, mid  # kept slots + at most 60 decoded (+ slack)
    # cut = P - (B + 1) = 551 at page size 1: slots [0, cut) freed, the rest kept
    assert metric(server, "mixkv:adakv_freed_slots_total") - freed == 600 - (B + 1)


def test_a_burst_of_compressing_prompts_is_not_retracted(ma):
    """Eight 200-token prompts at once (the server's --max-running-requests): after
    compression each request keeps local (SWA) KV for its last window only, as the local
    pool, sized for one window per request, assumes; so none is retracted. (Measured
    before that fix: each held its B + 1 kept slots' local KV until its first decode
    eviction, this burst was retracted, and the strict pool check then stopped the
    scheduler, see :func:`test_retraction_recompresses_and_the_pool_ends_empty`.)"""
    server, _, _ = ma
    before = metric(server, "sglang:num_retracted_requests_total")
    cases = [(random_prompt(100 + i, 200, SIZE.vocab), 16, f"burst{i}") for i in range(8)]
    with ThreadPoolExecutor(len(cases)) as pool:
        outs = list(pool.map(lambda c: generate(server, *c), cases))
    assert all(o["meta_info"]["completion_tokens"] == 16 for o in outs)
    assert metric(server, "sglang:num_retracted_requests_total") - before == 0


def test_shared_prefix_requests_are_each_compressed(ma):
    """Two prompts sharing 150 tokens, both compressed: no radix hit (compressing requests
    are private), each equal to the reference; shorter requests still hit the tree."""
    server, ref, debug = ma
    prefix = random_prompt(41, 150, SIZE.vocab)
    for i, tail in enumerate((random_prompt(42, 20, SIZE.vocab), random_prompt(43, 25, SIZE.vocab))):
        out = check(server, ref, debug, prefix + tail, 6, f"shared{i}")
        assert out["meta_info"]["cached_tokens"] == 0
    short = random_prompt(44, 40, SIZE.vocab)
    generate(server, short, 2, "short0")
    assert generate(server, short + [5], 2, "short1")["meta_info"]["cached_tokens"] > 0


def test_aborts_mid_prefill_and_mid_decode_leave_the_pool_empty(ma):
    """Strict per-step pool check on: a client that leaves during a long chunked prefill,
    and one that leaves mid-decode after compression; then the pools are empty."""
    server, _, _ = ma

    async def leave(ids, after_events: int | None, wait: float | None):
        body = {"input_ids": ids, "stream": True, "sampling_params": {
            "max_new_tokens": 200, "ignore_eos": True, "temperature": 0}}
        async with aiohttp.ClientSession() as s:
            async with s.post(server.url + "/generate", json=body) as r:
                if wait is not None:
                    await asyncio.sleep(wait)
                    return
                n = 0
                async for line in r.content:
                    if line.startswith(b"data:"):
                        n += 1
                        if n >= after_events:
                            return

    asyncio.run(leave(random_prompt(51, 900, SIZE.vocab), None, 0.3))  # ~28 chunks
    asyncio.run(leave(random_prompt(52, 300, SIZE.vocab), 5, None))
    generate(server, random_prompt(53, 10, SIZE.vocab), 2, "after-aborts")
    assert server.alive() and idle_pool_used(server) == 0
    assert "leak" not in server.log_text().lower()


# ---- other settings -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_rule(servers):
    """cla2 (2 KV heads) with the seeded random baseline: a selection rule of the same
    code path (the same budget accounting, compaction, freeing and attention); without
    the radix cache, which SGLang requires for ``input_embeds``."""
    server, ref, debug = serve_fixture(servers, "random")
    yield server, ref, debug
    server.stop()


def test_a_baseline_rule_keeps_the_references_choice(random_rule):
    server, ref, debug = random_rule
    cfg = AdaBudget(budget=40, window=4, rule="random", seed=3)
    ids = random_prompt(71, 130, SIZE.vocab)
    check(server, ref, debug, ids, 8, "random", cfg=cfg)
    kept = server_kept(debug, "random")
    assert kept == ref.adakv_kept(ids, cfg)  # exactly: no scores, no near-ties
    heads = [h for layer in kept.values() for h in layer]
    assert {len(h) for h in heads} == {40} and len({tuple(h) for h in heads}) == len(heads)
    rules = {json.loads(line)["rule"] for line in debug.read_text().splitlines()}
    assert rules == {"random"}


def test_input_embeds_are_served_as_the_tokens_they_embed(random_rule):
    """A prompt given as its embedding rows answers as its token ids do: SGLang hands the
    rows over as bfloat16 (our float32 model raised on them, in the scheduler, and the
    server exited), and rows of the wrong width are a 400, not a crash."""
    server, ref, _ = random_rule
    ids = random_prompt(73, 30, SIZE.vocab)  # below the budget: no selection to differ
    table = ref.w["model.embed_tokens.weight"]
    rows = table[ids].to(torch.bfloat16).float().tolist()
    want = ref.generate(ids, 6).tokens
    assert generate(server, ids, 6, "by-ids")["output_ids"] == want
    out = server.post("/generate", {"input_embeds": rows, "sampling_params": {
        "max_new_tokens": 6, "temperature": 0, "ignore_eos": True}})
    assert out.status_code == 200, out.text
    assert out.json()["output_ids"] == want
    bad = server.post("/generate", {"input_embeds": [r[:8] for r in rows],
                                    "sampling_params": {"max_new_tokens": 2}})
    assert bad.status_code == 400 and "hidden size" in bad.text
    assert server.alive()


@pytest.fixture(scope="module")
def uniform(servers):
    """cla2 (6 global producers, each read by one consumer) with 2 KV heads, alpha = 1
    (SnapKV's uniform budget) and readers scoring (producer and consumer queries), with
    KV pages of 16 tokens (``serve`` runs SGLang's paged allocator in Triton's
    interpreter on a CPU)."""
    server, ref, debug = serve_fixture(servers, "uniform")
    yield server, ref, debug
    server.stop()


def test_alpha_one_gives_every_head_the_same_budget_with_readers_scoring(uniform):
    server, ref, debug = uniform
    cfg = AdaBudget(budget=40, window=4, alpha=1.0, scoring="readers")
    ids = random_prompt(61, 130, SIZE.vocab)
    check(server, ref, debug, ids, 8, "uniform", cfg=cfg)
    kept = server_kept(debug, "uniform")
    assert sorted(kept) == [0, 2, 4, 6, 8, 10]
    assert {len(h) for heads in kept.values() for h in heads} == {40}  # B per head exactly
    # and readers scoring is not producer scoring: some head keeps something else
    producer = ref.adakv_kept(ids, AdaBudget(budget=40, window=4, alpha=1.0))
    assert producer != kept
    # paged: the kept region starts on a page (page 1 would cut at P - B - 1 = 89)
    out = server.generate(ids, 2, rid="uniform-paged", logprob_start_len=-1, sampling_params={
        "max_new_tokens": 2, "temperature": 0, "ignore_eos": True,
        "custom_params": {"adakv_kept": True}})
    assert [info["cut"] for info in out["meta_info"]["adakv"]] == [(130 - 40 - 1) // PAGE * PAGE]


@pytest.fixture(scope="module")
def mqa(servers):
    """standard with one KV head (MQA) and a global pool of 400 tokens; SGLang's admission
    told to reserve one output token per new request and 1% of a running one's
    (SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION, SGLANG_INIT_NEW_TOKEN_RATIO), so eight requests
    of 100 + 80 tokens outgrow the pool while decoding and some are retracted."""
    server, ref, debug = serve_fixture(servers, "mqa")
    yield server, ref, debug
    server.stop()


@pytest.fixture(scope="module")
def ma_tight(servers):
    """``ma`` (local layers: a retraction also frees local KV) with the admission settings
    of :func:`mqa`, a global pool of 400 tokens and a local pool sized for 2 of its 8
    running requests (``MIXKV_POOL_MAX_RUNNING``), so both pools run out: requests are
    retracted, and some wait between prompt chunks while others decode."""
    server, ref, debug = serve_fixture(servers, "ma_tight")
    yield server, ref, debug
    server.stop()


def test_mqa_matches_the_reference(mqa):
    server, ref, debug = mqa
    check(server, ref, debug, random_prompt(71, 120, SIZE.vocab), 12, "mqa",
          cfg=AdaBudget(budget=32, window=8))


@pytest.mark.parametrize("fixture", ["mqa", "ma_tight"])
def test_retraction_recompresses_and_the_pool_ends_empty(fixture, request):
    """Defined behaviour: a retracted request is prefilled again (prompt + output so far)
    and compressed again at the end of that prefill; every request completes, and the
    pools end empty under the strict check (with and without local layers)."""
    server, _, debug = request.getfixturevalue(fixture)
    before = metric(server, "sglang:num_retracted_requests_total")
    cases = [(random_prompt(80 + i, 100, SIZE.vocab), 80, f"retract{i}") for i in range(8)]
    with ThreadPoolExecutor(len(cases)) as pool:
        outs = list(pool.map(lambda c: generate(server, *c), cases))
    assert all(o["meta_info"]["completion_tokens"] == 80 for o in outs)
    retracted = metric(server, "sglang:num_retracted_requests_total") - before
    assert retracted > 0, "the pool was meant to force a retraction"
    lengths = {}
    for line in debug.read_text().splitlines():
        row = json.loads(line)
        if row["rid"].startswith("retract"):
            lengths.setdefault(row["rid"], set()).add(row["prompt_len"])
    # a retracted request compressed twice: at 100 and at 100 + its output so far
    assert any(len(v) > 1 and min(v) == 100 for v in lengths.values()), lengths
    generate(server, random_prompt(90, 10, SIZE.vocab), 2, "after-retract")
    assert idle_pool_used(server) == 0 and "leak" not in server.log_text().lower()


def test_bad_settings_fail_at_startup_with_the_bound(tmp_path):
    import subprocess
    import sys

    def serve_dry(*args):
        return subprocess.run([sys.executable, "-m", "sglang_mixkv.serve", "--dry-run", *args],
                              capture_output=True, text=True, timeout=120,
                              env={**__import__("os").environ, "MIXKV_MODELS": str(tmp_path)})

    for args, says in (
            (["--plan", "ma", "--adakv-budget", "32", "--adakv-window", "32"], "must be above"),
            (["--plan", "ma", "--adakv-budget", "24", "--adakv-window", "8"], "below the sliding window"),
            (["--plan", "LlLlLlLlLlLl", "--adakv-budget", "64"], "no global producer"),
            (["--plan", "ma", "--adakv-budget", "64", "--adakv-alpha", "1.5"], "[0, 1]"),
            (["--plan", "ma", "--adakv-budget", "64", "--adakv-kernel", "6"], "odd"),
            (["--plan", "ma", "--adakv-budget", "64", "--attention-backend", "flashinfer"],
             "torch_native and triton"),
            (["--plan", "ma", "--adakv-budget", "64", "--enable-mixed-chunk"], "never extend"),
            # SGLang features that reuse a request's prompt slots after compression
            (["--plan", "ma", "--adakv-budget", "64", "--enable-streaming-session",
              "--disable-radix-cache"], "--enable-streaming-session is not supported"),
            (["--plan", "ma", "--adakv-budget", "64", "--disaggregation-mode", "prefill"],
             "--disaggregation-mode prefill is not supported"),
    ):
        r = serve_dry(*args)
        assert r.returncode == 2 and says in r.stderr, (args, r.stderr)
    r = serve_dry("--plan", "ma", "--adakv-budget", "6.5")
    assert r.returncode == 2 and "invalid int value" in r.stderr


def test_prompt_logprobs_of_a_compressed_request_are_the_full_models(ma):
    """No per-request opt-out is needed for prompt logprobs (or hidden states): they are
    computed during the prefill, before compression, over the whole prompt."""
    server, ref, debug = ma
    ids = random_prompt(91, 120, SIZE.vocab)
    out = server.generate(ids, 3, rid="plp")  # logprob_start_len 0: every prompt position
    assert server_kept(debug, "plp"), "the request was meant to compress"
    have = [t[0] for t in out["meta_info"]["input_token_logprobs"]][1:]
    assert max(abs(a - b) for a, b in zip(have, ref.prompt_logprobs(ids))) < LOGPROB_TOL


# ---- fuzzing the Ada-KV server (issue 31) ---------------------------------------------------

#: any JSON value, for any field
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) |
                    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) |
                    st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
#: prompt lengths around the observation window (8) and the budget (48), and far past it
LENGTHS = [1, WIN - 1, WIN, WIN + 1, B - 1, B, B + 1, 3 * B, 6 * B]
#: fields a request may carry (dotted: inside sampling_params) that get any JSON value
FIELDS = ["input_ids", "sampling_params", "sampling_params.max_new_tokens",
          "sampling_params.n", "sampling_params.custom_params",
          "sampling_params.custom_params.adakv_kept", "return_logprob", "logprob_start_len",
          "top_logprobs_num", "return_hidden_states", "rid", "stream", "session_params",
          "session_params.id"]
GOOD_IDS, GOOD_N = random_prompt(999, 2 * B, SIZE.vocab), 4


@st.composite
def adakv_requests(draw):
    """(body, how the client leaves: None, ("events", k) or ("seconds", t))."""
    prompts = [random_prompt(draw(st.integers(0, 10**6)), n, SIZE.vocab)
               for n in draw(st.lists(st.sampled_from(LENGTHS), min_size=1, max_size=3))]
    sp = {"max_new_tokens": draw(st.integers(1, 8)), "temperature": 0, "ignore_eos": True}
    if draw(st.booleans()):
        sp["n"] = draw(st.integers(1, 2))
    custom = draw(st.sampled_from(["none", "none", "ask", "ask", "json", "json-ask"]))
    if custom != "none":
        sp["custom_params"] = {"ask": {"adakv_kept": True}, "json": draw(JSON),
                               "json-ask": {"adakv_kept": draw(JSON)}}[custom]
    body = {"input_ids": prompts if len(prompts) > 1 else prompts[0], "sampling_params": sp,
            "stream": draw(st.booleans())}
    if draw(st.booleans()):
        body.update(return_logprob=True, logprob_start_len=draw(st.sampled_from([-1, 0])),
                    top_logprobs_num=draw(st.integers(0, 3)))
    if draw(st.booleans()):
        body["return_hidden_states"] = True
    junk = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2, unique=True))
    for field in junk if draw(st.integers(0, 9)) < 3 else []:  # most requests are valid
        if field == "session_params.id":
            body["session_params"] = {"id": draw(JSON)}
            continue
        where, key = (body["sampling_params"], field.split(".", 1)[1]) if field.startswith(
            "sampling_params.") and isinstance(body.get("sampling_params"), dict) else (body, field)
        if "." in key:  # custom_params.adakv_kept
            if not isinstance(where.get("custom_params"), dict):
                where["custom_params"] = {}
            where, key = where["custom_params"], "adakv_kept"
        where[key] = draw(JSON)
    leave = draw(st.sampled_from([None, "events", "seconds"]))
    if leave == "events":
        return body, ("events", draw(st.integers(0, 3)))
    if leave == "seconds":
        return body, ("seconds", draw(st.floats(0.02, 0.4)))
    return body, None


def send_and_maybe_leave(server, body, leave) -> str | None:
    """Send ``body``; None if the answer keeps the rules (2xx or 4xx, no 5xx error event),
    else what broke them. The client may leave early (a disconnect the server must
    absorb)."""
    timeout = (10, leave[1]) if leave and leave[0] == "seconds" else (10, 300)
    try:
        with requests.post(server.url + "/generate", json=body, stream=True,
                           timeout=timeout) as r:
            if r.status_code >= 500:
                return f"HTTP {r.status_code}: {r.text[:300]}"
            events = 0
            for line in r.iter_lines():
                if leave and leave[0] == "events" and events >= leave[1]:
                    return None  # the client walks away
                if line.startswith(b"data:") and line.strip() != b"data: [DONE]":
                    events += 1
                    err = json.loads(line[5:]).get("error")
                    code = err.get("code", 500) if isinstance(err, dict) else 500 if err else 0
                    if isinstance(code, int) and code >= 500:
                        return f"error event {err}"
    except requests.exceptions.Timeout:
        if not (leave and leave[0] == "seconds"):
            return "no answer in 300 s"
    return None


@pytest.fixture(scope="module")
def good_answer(ma):
    """The reference's tokens for the good request (with the server's kept sets)."""
    server, ref, debug = ma
    generate(server, GOOD_IDS, GOOD_N, "good-0")
    return ref.generate(GOOD_IDS, GOOD_N, kept=server_kept(debug, "good-0")).tokens


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=adakv_requests())
# issue 31: a string custom_params stopped the scheduler (AttributeError in Ada-KV's hook)
@example(case=({"input_ids": random_prompt(5, 3 * B, SIZE.vocab), "sampling_params": {
    "max_new_tokens": 4, "custom_params": "adakv_kept"}}, None))
@example(case=({"input_ids": random_prompt(6, 3 * B, SIZE.vocab), "sampling_params": {
    "max_new_tokens": 4, "custom_params": {"adakv_kept": "yes"}}}, ("events", 1)))
# a session id that is not a string stopped the scheduler (TypeError in SGLang's session
# lookup, scheduler.py:2394): the body a client sends after a failed /open_session
@example(case=({"input_ids": random_prompt(7, 3 * B, SIZE.vocab), "sampling_params": {
    "max_new_tokens": 4}, "session_params": {"id": {"error": {"message": "disabled"}}}}, None))
def test_fuzzed_requests_never_take_the_adakv_server_down(ma, good_answer, case):
    """Any body (every JSON type at every field, inside ``custom_params`` too; prompts
    around the observation window and the budget; batches mixing compressing and
    uncompressed prompts; ``n`` > 1, prompt logprobs, hidden states, streams) and clients
    that leave at random moments (prefill, compression, decode): the answer is 2xx or
    4xx, and then the server answers a good request with the reference's tokens."""
    server, _, _ = ma
    body, leave = case
    problem = send_and_maybe_leave(server, body, leave)
    assert problem is None, f"{problem}\nbody: {json.dumps(body)[:600]}, leave: {leave}"
    assert server.alive(), f"the server exited after {json.dumps(body)[:600]}"
    out = generate(server, GOOD_IDS, GOOD_N, "good")
    assert [t[1] for t in out["meta_info"]["output_token_logprobs"]] == good_answer


def test_after_the_fuzz_the_pools_are_empty_and_the_counters_add_up(ma):
    """Leak check once the fuzz is done: both pools hold nothing, and every compressed
    prompt's slots are accounted for: freed below its region + kept in it = its prompt."""
    server, _, _ = ma
    assert idle_pool_used(server) == 0
    state = asyncio.run(_pool_state(server.url))
    assert {name: p["used"] for name, p in state["pools"].items()} == {
        "global_tokens_used": 0, "local_token_usage": 0}, state
    freed, region, prompt = (metric(server, f"mixkv:adakv_{n}_slots_total")
                             for n in ("freed", "region", "prompt"))
    assert prompt > 0 and freed + region == prompt, (freed, region, prompt)
    assert "leak" not in server.log_text().lower()


async def _pool_state(url):
    from mixkv_bench.soak import pool_state

    async with aiohttp.ClientSession() as s:
        return await pool_state(s, url, None)
