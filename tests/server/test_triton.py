"""The GPU default attention backend, run for real on CPU: SGLang's triton kernels under
Triton's interpreter (``TRITON_INTERPRET=1``) in the real server, against the reference.

Same checks as ``test_serving`` on the presets a GPU user is most likely to serve plus
an all-local plan. The interpreter costs ~0.1 s per kernel launch, so the model keeps
the tiny size's 12 layers (presets keep their shape) with a window of 8 tokens and
32-token chunks: every check still crosses the window (prefill and decode) and the
chunk boundary, with a few dozen tokens instead of hundreds. Two KV splits per decode
request (``--triton-attention-num-kv-splits``, 8 on a GPU) exercise the same
split-and-merge kernel code with a quarter of the launches' programs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from sglang_mixkv.plan import resolve
from mixkv_bench.reference import Reference
from sglang_mixkv.model_folder import SIZES, write_model_folder
from tests.helpers.serving import Pipeline, Prestarted, start_server
from tests.server.test_serving import check, fast_lines, prompt

pytestmark = pytest.mark.server

SIZE = SIZES["tiny"]
WINDOW, CHUNK, MAX_RUNNING = 8, 32, 4
PLANS = ["standard", "ma-offset", "ma-pairs", "cla2", "LlLlLlLlLlLl"]
TRITON = ["--attention-backend", "triton", "--disable-cuda-graph",
          "--triton-attention-num-kv-splits", "2"]
INTERPRET = {"TRITON_INTERPRET": "1", "MIXKV_FAST_PREFILL_LOG": "1"}


def server_args(model_dir, extra=()) -> list[str]:
    return ["--model-path", str(model_dir), "--kv-budget", "8MiB", "--max-running-requests",
            str(MAX_RUNNING), "--chunked-prefill-size", str(CHUNK), *TRITON, *extra]


def serve_triton(model_dir, log, extra=()):
    return start_server(server_args(model_dir, extra), log=log, env=INTERPRET)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Each plan's server, started while the previous plan's tests run."""
    root = tmp_path_factory.mktemp("triton")

    def make(spec: str) -> Prestarted:
        model_dir = write_model_folder(root / spec, SIZE, spec, weights=True, seed=1,
                                       window=WINDOW)
        return Prestarted(server_args(model_dir), model_dir / "server.log", env=INTERPRET)

    pipe = Pipeline(PLANS, make)
    yield pipe, root
    pipe.close()


@pytest.fixture(scope="module", params=PLANS)
def served(request, pipeline):
    pipe, root = pipeline
    server = pipe.take(request.param)
    yield request.param, server, Reference(root / request.param)
    server.stop()


def test_backend_is_our_triton_with_the_right_window(served):
    """The server runs our triton subclass; decode lists hold W keys for plans with
    local producers and no window lists exist for plans without."""
    spec, server, _ = served
    assert server.get("/server_info").json()["attention_backend"] == "triton"
    log = server.log_text()
    if resolve(spec, SIZE.num_layers).local_producers:
        assert f"mixkv triton: decode attends over the last {WINDOW} keys" in log
    else:
        assert "mixkv triton: no local layers, no window index lists" in log


def test_short_prompt(served):
    _, server, ref = served
    ids = prompt(10, 5)
    check(server.generate(ids, 6), ref, ids, 6)


def test_prompt_of_several_windows_and_decode_past_window(served):
    _, server, ref = served
    ids = prompt(11, 3 * WINDOW + 5)  # decode a full window more: its last W keys all new
    check(server.generate(ids, WINDOW + 2), ref, ids, WINDOW + 2)


def test_chunked_prefill(served):
    _, server, ref = served
    ids = prompt(12, 3 * CHUNK + 7)  # four chunks, each several windows long
    check(server.generate(ids, 4), ref, ids, 4)


def test_radix_cache_hit(served):
    _, server, ref = served
    server.flush()
    first = prompt(13, 50)
    check(server.generate(first, 3), ref, first, 3)
    second = first + prompt(14, 13)
    out = server.generate(second, 5, logprob_start_len=len(second) - 1)
    assert not server.get("/server_info").json()["disable_radix_cache"]  # all-local plans too
    assert out["meta_info"]["cached_tokens"] >= len(first) - WINDOW, \
        "same prefix twice should hit the radix cache"
    check(out, ref, second, 5, prompt_logprobs=False)


def test_fast_prefill(served):
    """No prompt logprobs: the consumer-only tail attends for one row per chunk, through
    triton's extend kernel with a narrowed batch (prefix = the rows before it)."""
    spec, server, ref = served
    if not resolve(spec, SIZE.num_layers).tail:
        pytest.skip(f"{spec} ends with a producer: no tail to skip")
    ids = prompt(15, 2 * CHUNK + 7)
    mark = len(server.log_text())
    check(server.generate(ids, 4, logprob_start_len=-1), ref, ids, 4, prompt_logprobs=False)
    assert fast_lines(server, mark)[:3] == [(1, CHUNK), (1, CHUNK), (1, 7)]


def test_concurrent_requests_of_different_lengths(served):
    _, server, ref = served
    cases = [(prompt(20 + i, n), m) for i, (n, m) in enumerate([(5, 6), (13, 4), (40, 5), (70, 3)])]
    with ThreadPoolExecutor(len(cases)) as pool:
        outs = list(pool.map(lambda c: server.generate(*c), cases))
    for (ids, m), out in zip(cases, outs):
        check(out, ref, ids, m)


# ---- half precision ------------------------------------------------------------------------
def test_float16_matches_within_half_precision_error(tmp_path):
    """The paper size serves in bf16, but Triton's interpreter cannot compute in bf16: it
    stores it as raw uint16 and multiplies the bit patterns (triton-lang/triton#11584;
    measured here: logprobs off by ~9). float16 runs the same kernels, instantiated for
    a 16-bit float; only the rounding width differs from bf16.

    Tolerance, from the precision rather than tuned: a float16 forward of this model
    differs from its float32 forward by ``e`` = max |ref16 - ref32| over the checked
    logprobs (the model's own sensitivity to half-precision rounding, measured on the
    reference). The server is another float16 forward (fp16 KV cache, other summation
    order), so its distance to float32 must be of the same size: at most 3e. A greedy
    token may differ from float32's only where float32's top two are within 3e."""
    import torch

    spec = "ma-offset"
    model_dir = write_model_folder(tmp_path / spec, SIZE, spec, weights=True, seed=1, window=WINDOW)
    server = serve_triton(model_dir, tmp_path / "server.log", ["--dtype", "float16"])
    ref32, ref16 = Reference(model_dir), Reference(model_dir, dtype=torch.float16)
    try:
        for ids, max_new in ((prompt(31, 3 * WINDOW + 5), WINDOW + 2), (prompt(32, 3 * CHUNK + 7), 3)):
            meta = server.generate(ids, max_new)["meta_info"]
            out = [t[1] for t in meta["output_token_logprobs"]]
            seq = ids + out  # teacher-forced: every position the server computed
            lp32 = torch.log_softmax(ref32.logits(seq), -1)
            lp16 = torch.log_softmax(ref16.logits(seq), -1)
            pos = torch.arange(len(seq) - 1)
            nxt = torch.tensor(seq[1:])
            have = torch.tensor([t[0] for t in meta["input_token_logprobs"][1:]]
                                + [t[0] for t in meta["output_token_logprobs"]])
            e = (lp16[pos, nxt] - lp32[pos, nxt]).abs().max().item()
            err = (have - lp32[pos, nxt]).abs().max().item()
            assert 0 < e < 0.5 and err <= 3 * e, (err, e)
            best = lp32[len(ids) - 1: -1].max(-1).values
            chosen = lp32[torch.arange(len(ids) - 1, len(seq) - 1), torch.tensor(out)]
            assert ((best - chosen) <= 3 * e).all(), "a greedy flip larger than fp16 error"
    finally:
        server.stop()


# ---- Ada-KV -----------------------------------------------------------------------------------
def test_adakv_decode_over_per_head_cells(tmp_path):
    """Ada-KV on triton (``sglang_seams/mixkv/triton.py``): decode of a compressed request
    runs SGLang's own decode kernel over a batch expanded to (request, KV head) rows. One
    server (``ma``, B = 24 with w = 4 above the window of 8), three cases: a prompt whose
    observation window spans two chunks and decodes past the window; a compressed and an
    uncompressed request decoding in one batch; the kept sets (the reference's)."""
    from mixkv_bench.reference import AdaBudget
    from tests.helpers.adakv import assert_kept_match, server_kept

    spec, cfg = "ma", AdaBudget(budget=24, window=4)
    model_dir = write_model_folder(tmp_path / spec, SIZE, spec, weights=True, seed=1, window=WINDOW)
    debug = tmp_path / "kept.jsonl"
    server = start_server(
        ["--model-path", str(model_dir), "--kv-budget", "8MiB", "--max-running-requests",
         str(MAX_RUNNING), "--chunked-prefill-size", str(CHUNK), *TRITON,
         "--adakv-budget", "24", "--adakv-window", "4"],
        log=tmp_path / "server.log",
        env={**INTERPRET, "MIXKV_ADAKV_DEBUG_JSONL": str(debug),
             "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY": "1"})
    ref = Reference(model_dir)
    try:
        cases = [(prompt(41, CHUNK * 2 + 2), WINDOW + 2, "span"),  # window [62, 66) spans
                 (prompt(42, 50), 5, "long"), (prompt(43, 12), 5, "short")]
        outs = [server.generate(cases[0][0], cases[0][1], rid="span", logprob_start_len=-1)]
        with ThreadPoolExecutor(2) as pool:  # one batch: compressed + uncompressed
            outs += list(pool.map(lambda c: server.generate(c[0], c[1], rid=c[2],
                                                            logprob_start_len=-1), cases[1:]))
        for (ids, m, rid), out in zip(cases, outs):
            kept = server_kept(debug, rid)
            assert bool(kept) == (len(ids) >= 24)
            assert_kept_match(kept, ref, ids, cfg)
            got = out["meta_info"]["output_token_logprobs"]
            gen = ref.teacher_forced(ids, [t[1] for t in got], kept=kept or None)[0]
            assert [t[1] for t in got] == gen.tokens, rid
            assert max(abs(t[0] - b) for t, b in zip(got, gen.logprobs)) < 2e-3
    finally:
        server.stop()
