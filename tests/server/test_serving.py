"""The real SGLang server with our model, on CPU, against the plain-PyTorch reference.

One server per plan (module-scoped); every preset plus an all-local plan. Each check
compares greedy tokens exactly and logprobs within LOGPROB_TOL, for the prompt (every
position's next-token logprob, which covers prefill across window and chunk
boundaries) and for the generated tokens (decode past the window, where local KV has
been evicted from the windowed pool)."""

from __future__ import annotations

import json
import random
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from sglang_mixkv.plan import PRESET_NAMES, resolve
from mixkv_bench.reference import Reference
from sglang_mixkv.model_folder import SIZES, write_model_folder
from tests.helpers.serving import Pipeline, Prestarted, start_server

pytestmark = pytest.mark.server

SIZE = SIZES["tiny"]  # 12 layers, window 32, float32
BUDGET = 16 << 20  # --kv-budget: same KV budget on any machine
MAX_RUNNING, CHUNK = 8, 128
# float32 on both sides; the server sums attention in a different order (chunks,
# windowed gathers), so allow ~100x the 1e-5 noise we observe.
LOGPROB_TOL = 2e-3
# + all-local, + a consumer-only tail that mixes local and global consumers (layers 8-11)
PLANS = list(PRESET_NAMES) + ["LlLlLlLlLlLl", "GLlLlLlLlglg"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Each plan's server, started while the previous plan's tests run."""
    root = tmp_path_factory.mktemp("models")

    def make(spec: str) -> Prestarted:
        model_dir = write_model_folder(root / spec, SIZE, spec, weights=True, seed=1)
        return Prestarted(
            ["--model-path", str(model_dir), "--kv-budget", str(BUDGET),
             "--max-running-requests", str(MAX_RUNNING), "--chunked-prefill-size", str(CHUNK)],
            log=model_dir / "server.log", env={"MIXKV_FAST_PREFILL_LOG": "1"})

    pipe = Pipeline(PLANS, make)
    yield pipe, root
    pipe.close()


@pytest.fixture(scope="module", params=PLANS)
def served(request, pipeline):
    pipe, root = pipeline
    spec = request.param
    server = pipe.take(spec)
    yield spec, server, Reference(root / spec)
    server.stop()


def prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, SIZE.vocab) for _ in range(n)]


def check(server_out: dict, ref: Reference, ids: list[int], max_new: int,
          prompt_logprobs: bool = True) -> None:
    meta = server_out["meta_info"]
    out = [t[1] for t in meta["output_token_logprobs"]]
    out_lp = [t[0] for t in meta["output_token_logprobs"]]
    gen, want = ref.teacher_forced(ids, out)  # = ref.generate(ids, max_new), one forward
    assert out == gen.tokens, f"greedy tokens differ for a {len(ids)}-token prompt"
    assert max(abs(a - b) for a, b in zip(out_lp, gen.logprobs)) < LOGPROB_TOL
    if prompt_logprobs:
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
    _, server, ref = served
    server.flush()
    first = prompt(13, 150)
    check(server.generate(first, 4), ref, first, 4)
    second = first + prompt(14, 45)
    # Prompt logprobs from position 0 would force a recompute; ask for the last one only.
    out = server.generate(second, 8, logprob_start_len=len(second) - 1)
    assert out["meta_info"]["cached_tokens"] >= len(first) - SIZE.window, \
        "same prefix twice should hit the radix cache (all-local plans too)"
    check(out, ref, second, 8, prompt_logprobs=False)


def test_concurrent_requests_of_different_lengths(served):
    _, server, ref = served
    cases = [(prompt(20 + i, n), m) for i, (n, m) in enumerate([(5, 40), (33, 20), (90, 35), (260, 10), (400, 5)])]
    with ThreadPoolExecutor(len(cases)) as pool:
        outs = list(pool.map(lambda c: server.generate(*c), cases))
    for (ids, m), out in zip(cases, outs):
        check(out, ref, ids, m)


def test_chat_completion_is_the_template_then_the_reference(served):
    """/v1/chat/completions on every plan: the ids the server ran are the tokenizer's
    ``apply_chat_template`` of the messages, and the streamed reply is the reference's
    greedy continuation of those ids (the words t{id} of the tokens, as decoded)."""
    from transformers import AutoTokenizer

    spec, server, ref = served
    messages = [{"role": "system", "content": " ".join(f"t{i}" for i in prompt(20, 9))},
                {"role": "user", "content": " ".join(f"t{i}" for i in prompt(21, 50))}]
    want = list(AutoTokenizer.from_pretrained(ref.model_dir).apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=False))
    assert want[:2] == [1, 3] and want[-1] == 5 and len(want) == 9 + 50 + 4
    body = {"model": "default", "messages": messages, "max_tokens": 10, "temperature": 0,
            "ignore_eos": True}
    plain = server.post("/v1/chat/completions", {**body, "return_prompt_token_ids": True,
                                                  "return_token_ids": True}).json()
    choice = plain["choices"][0]
    assert choice["prompt_token_ids"] == want
    assert choice["token_ids"] == ref.generate(want, 10).tokens
    streamed = server.post("/v1/chat/completions", {**body, "stream": True}, stream=True)
    deltas = [json.loads(line[5:]) for line in streamed.iter_lines()
              if line.startswith(b"data:") and line != b"data: [DONE]"]
    text = "".join(c["delta"].get("content") or "" for d in deltas for c in d["choices"])
    assert text == choice["message"]["content"]
    specials = set(range(3))  # not shown as text: compare the words against the ids
    assert text.split() == [f"t{i}" for i in choice["token_ids"] if i not in specials]


@pytest.mark.parametrize("served", ["standard"], indirect=True)
def test_standard_plan_serves_like_stock_sglang_llama(served, tmp_path):
    """The same weights as a Llama, served by stock SGLang (plain ``sglang.launch_server``:
    its own ``LlamaForCausalLM``, RoPE and attention; only our plugin's generic patches
    load): the same greedy tokens and logprobs as our model. An oracle on the serving
    side that shares none of our model code."""
    _, ours, _ = served
    llama = write_model_folder(tmp_path / "llama", SIZE, "standard", weights=True, seed=1,
                               architecture="LlamaForCausalLM")
    stock = start_server(
        ["--model-path", str(llama), "--device", "cpu", "--attention-backend", "torch_native",
         "--dtype", "float32", "--max-total-tokens", "8192", "--max-running-requests",
         str(MAX_RUNNING), "--chunked-prefill-size", str(CHUNK), "--sleep-on-idle"],
        log=tmp_path / "stock.log", env={"OMP_NUM_THREADS": "1"}, module="sglang.launch_server")
    try:
        for ids, m in ((prompt(30, 9), 8), (prompt(31, 3 * CHUNK + 17), 2 * SIZE.window + 3)):
            a, b = ours.generate(ids, m), stock.generate(ids, m)
            for key in ("output_token_logprobs", "input_token_logprobs"):
                mine = [t for t in a["meta_info"][key] if t[0] is not None]
                theirs = [t for t in b["meta_info"][key] if t[0] is not None]
                assert [t[1] for t in mine] == [t[1] for t in theirs], key
                assert max(abs(x[0] - y[0]) for x, y in zip(mine, theirs)) < LOGPROB_TOL, key
    finally:
        stock.stop()


# What each plan's pools must hold, derived by hand (not with kv_math): the tiny size's K+V
# of one layer-token is 2 x 2 KV heads x 32 dims x 4 B = 512 B. The local pool is sized
# for MAX_RUNNING = 8 requests of one window (32) + the eviction interval (32 / 16 = 2) +
# 2 pages each, plus two prefill chunks in flight and a page: 36 x 8 + 2 x 128 + 1 = 545
# tokens; the global pool gets the rest of BUDGET = 16,777,216 B. Per plan: (global
# producers G, local producers L) and the token counts that gives, e.g. ma (1, 4):
# (16,777,216 - 545 x 4 x 512) / (1 x 512) = 30,588. A plan without local layers gives the
# budget to the global pool; an all-local one to the local pool.
POOLS = {  # spec: (G, L, global tokens, local tokens)
    "standard": (12, 0, 2_730, None),  # 16,777,216 // 6,144
    "swa": (2, 10, 13_659, 545),  # GLLLLLLLLLLG
    "ma": (1, 4, 30_588, 545),
    "ma-offset": (1, 4, 30_588, 545),
    "ma-endslide": (1, 4, 30_588, 545),
    "ma-pairs": (2, 4, 15_294, 545),  # GLlLllLlLllG at 12 layers
    "ma-successive": (1, 4, 30_588, 545),
    "ma-noshare": (2, 4, 15_294, 545),
    "yoco": (1, 6, 29_498, 545),  # LLLLLLGggggg
    "cla2": (6, 0, 5_461, 5_461),  # consumers: hybrid pool, local mirrors global at 0 B
    "cla3": (4, 0, 8_192, 8_192),
    # all-local: 16,777,216 // 3,072 local tokens; the global pool is token ids only,
    # (8 + 1) x 4,096 (context) = 36,864 (sglang_seams/mixkv/pools.py)
    "LlLlLlLlLlLl": (0, 6, 36_864, 5_461),
    "GLlLlLlLlglg": (1, 4, 30_588, 545),
}


def test_pool_is_what_the_hand_computation_says(served):
    """/server_info token capacities are the numbers above; the KV bytes SGLang allocated
    are those of producer layers only (a buffer per consumer would multiply them)."""
    spec, server, _ = served
    n_global, n_local, global_tokens, local_tokens = POOLS[spec]
    plan = resolve(spec, SIZE.num_layers)
    assert (len(plan.global_producers), len(plan.local_producers)) == (n_global, n_local)
    usage = server.get("/server_info").json()["internal_states"][0]["memory_usage"]
    assert usage["token_capacity"] == global_tokens
    if local_tokens is not None:
        assert usage["token_capacity_swa"] == local_tokens
    # Bytes: SGLang pads each pool by one page (one token) and reports GiB rounded to 3
    # decimals, so allow 0.0005 GiB.
    expected = (global_tokens + 1) * n_global * 512 + ((local_tokens or 0) + 1) * n_local * 512
    assert abs(usage["kvcache"] * 2**30 - expected) <= 0.0005 * 2**30


# ---- fast prefill ------------------------------------------------------------------------
# The checks above ask for every prompt logprob, which reads every row: the full path.
# These ask for none (logprob_start_len=-1), which puts a prefill on the fast path: the
# consumer-only tail runs on the rows whose logits are read. The server logs every
# fast-path forward (MIXKV_FAST_PREFILL_LOG=1): that proves it ran, and on how many rows.
FAST = re.compile(r"mixkv fast prefill: tail layers (\d+)-(\d+) ran on (\d+) of (\d+) rows")


def fast_lines(server, since: int) -> list[tuple[int, int]]:
    """(rows the tail computed, rows in the batch) of each fast-path forward logged after
    character ``since`` of the server log."""
    return [(int(m[2]), int(m[3])) for m in FAST.findall(server.log_text()[since:])]


def chunks(n: int) -> list[int]:
    return [CHUNK] * ((n - 1) // CHUNK) + [n - CHUNK * ((n - 1) // CHUNK)]


@pytest.fixture
def tailed(served):
    """Plans whose last layers are consumers only (others have nothing to skip)."""
    spec, server, ref = served
    if not resolve(spec, SIZE.num_layers).tail:
        pytest.skip(f"{spec} ends with a producer: no tail to skip")
    return served


def test_fast_prefill_is_exact(tailed):
    spec, server, ref = tailed
    for n, m in ((7, 6), (3 * CHUNK + 17, 2 * SIZE.window + 3)):
        ids = prompt(50 + n, n)
        mark = len(server.log_text())
        check(server.generate(ids, m, logprob_start_len=-1), ref, ids, m, prompt_logprobs=False)
        # output logprobs asked: one row per chunk, the one it samples from
        assert fast_lines(server, mark)[:len(chunks(n))] == [(1, c) for c in chunks(n)], \
            "the prefill did not take the fast path"
    tail = resolve(spec, SIZE.num_layers).tail
    assert f"tail layers {tail[0]}-{tail[-1]} ran" in server.log_text()


def test_fast_prefill_skips_the_tail_for_middle_chunks(tailed):
    """No logprobs at all: a middle chunk's sample is thrown away, so the tail runs on no
    row of it, and on one row of the last chunk."""
    _, server, ref = tailed
    ids = prompt(60, 3 * CHUNK + 17)
    mark = len(server.log_text())
    r = server.post("/generate", {"input_ids": ids, "sampling_params": {
        "max_new_tokens": 6, "temperature": 0, "ignore_eos": True}})
    r.raise_for_status()
    assert r.json()["output_ids"] == ref.generate(ids, 6).tokens
    assert fast_lines(server, mark)[:4] == [(0, c) for c in chunks(len(ids))[:-1]] + [(1, 17)]


def test_fast_prefill_keeps_prompt_logprobs_exact(tailed):
    """The last five prompt logprobs: the tail runs on those five rows only. (All of
    them: every row, the full path; the checks above cover it.)"""
    _, server, ref = tailed
    server.flush()  # a cached prompt would shorten the extend
    ids = prompt(61, CHUNK + 40)
    mark = len(server.log_text())
    out = server.generate(ids, 4, logprob_start_len=len(ids) - 5)
    have = [t[0] for t in out["meta_info"]["input_token_logprobs"]]
    want = ref.prompt_logprobs(ids)[-4:]  # the first of the five has no logprob
    assert max(abs(a - b) for a, b in zip(have[1:], want)) < LOGPROB_TOL
    assert (5, 40) in fast_lines(server, mark)


def test_fast_prefill_radix_hit_and_concurrent_requests(tailed):
    _, server, ref = tailed
    server.flush()
    first = prompt(62, 150)
    check(server.generate(first, 3, logprob_start_len=-1), ref, first, 3, prompt_logprobs=False)
    second = first + prompt(63, 45)
    mark = len(server.log_text())
    out = server.generate(second, 5, logprob_start_len=-1)
    assert out["meta_info"]["cached_tokens"] > 0 and fast_lines(server, mark)
    check(out, ref, second, 5, prompt_logprobs=False)
    cases = [(prompt(70 + i, n), m) for i, (n, m) in enumerate([(5, 12), (40, 7), (300, 4)])]
    with ThreadPoolExecutor(len(cases)) as pool:
        outs = list(pool.map(lambda c: server.generate(*c, logprob_start_len=-1), cases))
    for (ids, m), out in zip(cases, outs):
        check(out, ref, ids, m, prompt_logprobs=False)
