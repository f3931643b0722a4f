"""Gemma 4 and Gemma 3n (SGLang's own model classes) served with our pools, against
transformers 5.12.1's forward of the same folder.

Tiny random text folders written by transformers (:func:`mixkv_bench.gemma.write_tiny`):
6 layers, window W = 8, the last two layers KV-shared (one sliding, one full), logit
soft-capping and per-layer inputs on; Gemma 4 with a global head dim twice the sliding
one and proportional partial RoPE on full layers, Gemma 3n with AltUp, LAuReL and
activation sparsity on layer 0. Gemma 4 runs on triton through Triton's interpreter
(SGLang allows no other backend for it), Gemma 3n on torch_native. A multimodal Gemma 4
checkpoint (``Gemma4ForConditionalGeneration``, the class of the published downloads)
is served through the text folder ``python -m sglang_mixkv.gemma`` writes, against
transformers' multimodal model.

Tolerance: both sides compute in float32 and differ only in kernels and reduction order,
measured at most 1.4e-6 on every logprob; 1e-4 keeps room for that and still catches a
window one token off (measured up to 0.2 on Gemma 3n before ``patches/gemma.py``) or the
stock triton decode window (0.13 on Gemma 4).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mixkv_bench import gemma
from sglang_mixkv import gemma as sglang_gemma
from sglang_mixkv import kv_math
from tests.helpers.serving import start_server

pytestmark = pytest.mark.server

FAMILIES = ["gemma4", "gemma3n"]
#: a multimodal Gemma 4 checkpoint (the published class) through ``python -m sglang_mixkv.gemma``
MULTIMODAL = "gemma4-multimodal"
W, CHUNK, RUNNING, BUDGET = 8, 32, 4, 64 * 2**20
ARGS = ["--kv-budget", str(BUDGET), "--max-running-requests", str(RUNNING),
        "--chunked-prefill-size", str(CHUNK)]
TOL = 1e-4

# Hand-derived pools at 64 MiB, float32 (4 bytes). Gemma 4: full layers 1 KV head x 32 dims
# (global_head_dim) = 256 B/token, sliding 1 x 16 = 128 B; Gemma 3n: 2 x 16 = 256 B every
# layer. Producers: Gemma 4 LLGL|lg -> 1 full + 3 sliding, Gemma 3n LLLG|lg -> 1 + 3.
# Local pool: 4 requests x (W + eviction interval 1 + 2 pages) + 2 chunks + 1 page = 109.
LOCAL = 4 * (W + 1 + 2) + 2 * CHUNK + 1
OURS = {"gemma4": ((BUDGET - LOCAL * 3 * 128) // 256, LOCAL),
        "gemma3n": ((BUDGET - LOCAL * 3 * 256) // 256, LOCAL)}
# Stock: every layer a buffer. Gemma 4 (hybrid): 64 MiB / (2 full x 256 + 0.8 x 4 sliding
# x 128) full tokens, 0.8 of them SWA; Gemma 3n (one pool): 64 MiB / (6 x 256).
# Both fill the budget: the buffers SGLang allocated (``kvcache``, GiB) are 64 MiB either way.
STOCK = {"gemma4": (int(BUDGET / (2 * 256 + 0.8 * 4 * 128)), int(int(BUDGET / 921.6) * 0.8)),
         "gemma3n": (BUDGET // (6 * 256), None)}


@pytest.fixture(scope="class")
def served(request, tmp_path_factory):
    """``(family, server, reference)`` of the test class's folder; the multimodal
    checkpoint is served through its text folder and held to transformers'
    ``Gemma4ForConditionalGeneration`` on it."""
    family = request.cls.family
    root = tmp_path_factory.mktemp("gemma")
    if family == MULTIMODAL:
        checkpoint = gemma.write_tiny_multimodal(root / "checkpoint", seed=3)
        folder = sglang_gemma.write_text_folder(checkpoint, root / "text")
    else:
        checkpoint = folder = gemma.write_tiny(root / family, family, seed=3)
    server = start_server(["--model-path", str(folder), *ARGS], log=root / "server.log",
                          env={"MIXKV_FAST_PREFILL_LOG": "1"})
    yield family.split("-")[0], server, gemma.TransformersReference(checkpoint)
    server.stop()


FAST = re.compile(r"mixkv fast prefill: tail layers (\d+)-(\d+) ran on (\d+) of (\d+) rows")


def fast_lines(server, since: int) -> list[tuple[int, int]]:
    """(rows the shared tail ran on, rows in the batch) of each fast-path forward logged
    after character ``since`` of the server log."""
    return [(int(m[2]), int(m[3])) for m in FAST.findall(server.log_text()[since:])]


def chunks(n: int) -> list[int]:
    return [CHUNK] * ((n - 1) // CHUNK) + [n - CHUNK * ((n - 1) // CHUNK)]


def prompt(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 512, (n,), generator=g).tolist()


def check(server, ref: gemma.TransformersReference, ids: list[int], new: int = 10, start: int = 0) -> dict:
    """Served greedy tokens equal transformers'; logprobs from prompt position ``start``
    on (0: all; prompt logprobs from 0 make SGLang recompute a cached prefix) agree."""
    out = server.generate(ids, new, logprob_start_len=start)
    tokens, lps = ref.greedy(ids, new)
    meta = out["meta_info"]
    assert out["output_ids"] == tokens
    served = [x[0] for x in meta["input_token_logprobs"] + meta["output_token_logprobs"]]
    served = [lp for lp in served if lp is not None]  # the first token has none
    assert len(served) >= new + (len(ids) - 1 if start == 0 else 0)
    want = lps[len(lps) - len(served):]
    assert max(abs(a - b) for a, b in zip(served, want)) < TOL
    return meta


class GemmaChecks:
    """The checks every served folder passes; one class per folder below, so pytest-xdist
    (``--dist loadscope``) runs the three servers' checks on different workers."""

    family = ""

    @pytest.mark.parametrize("n", [5, 45])
    def test_prompt_and_decode_match_transformers(self, served, n):
        """Within one window, and a prompt of several windows in two chunks with decode past
        the window: greedy tokens equal, every prompt and output logprob within 1e-4."""
        _, server, ref = served
        check(server, ref, prompt(n, seed=n))


    def test_radix_hit_matches_transformers(self, served):
        """A prompt that extends a cached one reuses its prefix and still matches."""
        _, server, ref = served
        server.flush()
        first = prompt(40, seed=11)
        check(server, ref, first, new=2)
        second = first + prompt(12, seed=12)
        meta = check(server, ref, second, new=6, start=len(second) - 1)
        assert meta["cached_tokens"] > 0


    def test_fast_prefill_runs_the_shared_tail_on_the_rows_read(self, served):
        """The KV-shared tail runs on the rows the logits processor reads, exact: with output
        logprobs one row per chunk; with none, no row of a middle chunk; with the last five
        prompt logprobs, five rows."""
        _, server, ref = served
        ids = prompt(3 * CHUNK + 17, seed=21)
        for start, new, want in ((-1, 6, [(1, c) for c in chunks(len(ids))]),
                                 (len(ids) - 5, 4, [(1, CHUNK)] * 3 + [(5, 17)])):
            server.flush()
            mark = len(server.log_text())
            check(server, ref, ids, new=new, start=start)
            assert fast_lines(server, mark)[:4] == want
        server.flush()
        mark = len(server.log_text())
        r = server.post("/generate", {"input_ids": ids, "sampling_params": {
            "max_new_tokens": 5, "temperature": 0, "ignore_eos": True}})
        assert r.json()["output_ids"] == ref.greedy(ids, 5)[0]
        assert fast_lines(server, mark)[:4] == [(0, CHUNK)] * 3 + [(1, 17)]


    def test_fast_prefill_batches_concurrent_requests(self, served):
        _, server, ref = served
        prompts = [prompt(n, seed=100 + n) for n in (9, 40, 70)]
        with ThreadPoolExecutor(3) as pool:
            outs = list(pool.map(lambda ids: server.generate(ids, 5, logprob_start_len=-1), prompts))
        for ids, out in zip(prompts, outs):
            assert out["output_ids"] == ref.greedy(ids, 5)[0]


    def test_pools_hold_the_producer_layers_only(self, served):
        """The server's pools are what producers-only buffers give at 64 MiB (above), and the
        buffers it allocated add up to the budget (with a buffer for every layer they would
        be about twice as large)."""
        family, server, _ = served
        info = server.get("/server_info").json()
        usage = info["internal_states"][0]["memory_usage"]
        assert (info["max_total_num_tokens"], usage["token_capacity_swa"]) == OURS[family]
        assert abs(usage["kvcache"] - BUDGET / 2**30) <= 0.002
        assert "MixKV pools for plan" in server.log_text()


class TestGemma4(GemmaChecks):
    family = "gemma4"


class TestGemma3n(GemmaChecks):
    family = "gemma3n"


class TestGemma4Multimodal(GemmaChecks):
    family = MULTIMODAL


def test_stock_pools_hold_every_layer(tmp_path):
    """``MIXKV_STOCK_POOLS=1`` turns off only our pool seam: SGLang's own pools for the same
    folders and budget, as derived by hand and by ``kv_math.stock_pool_split``, and well
    below ours."""
    def stock(family):
        folder = gemma.write_tiny(tmp_path / family, family, seed=3)
        server = start_server(["--model-path", str(folder), *ARGS], log=folder / "server.log",
                              env={"MIXKV_STOCK_POOLS": "1"})
        try:
            info = server.get("/server_info").json()
        finally:
            server.stop()
        usage = info["internal_states"][0]["memory_usage"]
        assert abs(usage["kvcache"] - BUDGET / 2**30) <= 0.002  # the same bytes as ours
        return info["max_total_num_tokens"], usage["token_capacity_swa"]

    with ThreadPoolExecutor(2) as pool:
        measured = dict(zip(FAMILIES, pool.map(stock, FAMILIES)))
    assert measured == STOCK
    for family in FAMILIES:
        fields = gemma.TINY[family]
        split = kv_math.stock_pool_split(BUDGET, gemma.gemma.plan_of(fields),
                                         gemma.kv_dims(fields, dtype_bytes=4),
                                         hybrid=family == "gemma4")
        assert split.global_tokens == measured[family][0]
        assert OURS[family][0] > 3 * measured[family][0]
