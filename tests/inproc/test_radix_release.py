"""One window of local KV per running request: ``sglang_seams.radix`` in SGLang's tree.

In-process: SGLang's real allocator, pools and SWA radix tree driven the way its
scheduler drives them (``tests/radix_sim.py``), stock ``UnifiedRadixCache`` against our
``WindowRadixCache``: pinned local slots per running request, no slot lost or freed
twice (the whole tree drained at the end), SGLang's tree sanity check after every step.
Servers (real SGLang on CPU, MQA): reuse of a cached prefix whose local tail was
released, with and without that tail still in the pool, against the reference; and MQA
at ``--tp-size 2``.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from mixkv_bench.reference import Reference
from sglang_mixkv.model_folder import SIZES, with_kv_heads, write_model_folder
from tests.helpers.radix_sim import Sim
from tests.helpers.serving import REPO, start_server
from tests.server.test_serving import check, prompt

SIZE = SIZES["tiny"]


def _caches():
    from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

    from sglang_mixkv.sglang_seams.mixkv.radix import WindowRadixCache

    return UnifiedRadixCache, WindowRadixCache


@pytest.mark.parametrize("retract_p", [0.0, 0.03])
@pytest.mark.parametrize("swa", [4096, 150])  # 150: SGLang's SWA eviction runs all along
def test_one_window_per_request_where_stock_pins_two(retract_p, swa):
    """Shared prefixes, chunked prefill, outputs shorter and longer than the window,
    retractions: our tree never pins more than one window + interval + 2 pages per
    running request (+ a chunk in flight); stock SGLang does, by up to a window more."""
    stock, ours = _caches()
    worst = {}
    for cls in (stock, ours):
        for seed in range(6):
            sim = Sim(cls, window=8, interval=4, swa=swa)
            st = sim.run(seed, n_requests=40, max_running=6, retract_p=retract_p)
            sim.drain()
            over = worst.setdefault(cls, [0, 0])
            over[0] = max(over[0], st.peak_pinned - st.peak_bound)
            over[1] += st.over_bound_steps
            if cls is ours:
                assert st.released > 0
    assert worst[ours][1] == 0 and worst[ours][0] <= 0, worst
    assert worst[stock][1] > 0, "stock SGLang should exceed the one-window bound here"


def test_lock_covers_one_window_inside_a_long_shared_node():
    """docs/design.md §6: a lock whose window starts inside a long node pinned the whole
    node (here 60 tokens for a window of 8); ours splits the node and pins 8."""
    import random

    from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    pinned = {}
    for cls in _caches():
        sim = Sim(cls, window=8, interval=4)
        sim.rng, sim.stats = random.Random(0), SimpleNamespace(cached_tokens=[])
        base = list(range(3, 103))
        req = sim.admit(base, output_len=1, chunk=200)
        assert sim.prefill_chunk(req)
        sim.finish(req)
        before = sim.cache.swa_protected_size()
        m = sim.cache.match_prefix(MatchPrefixParams(key=RadixKey(base[:60], None)))
        sim.cache.inc_lock_ref(m.last_device_node)
        pinned[cls.__name__] = sim.cache.swa_protected_size() - before
        sim.cache.sanity_check()
    assert pinned == {"UnifiedRadixCache": 60, "WindowRadixCache": 8}


def test_paged_pools_page_4():
    """Page size 4 (SGLang's paged allocator runs Triton kernels: interpreter, own process)."""
    code = (
        "from tests.helpers.radix_sim import Sim\n"
        "from tests.inproc.test_radix_release import _caches\n"
        "stock, ours = _caches()\n"
        "for seed, swa in ((0, 4096), (1, 256)):\n"
        "        s = Sim(ours, window=8, interval=4, page=4, swa=swa)\n"
        "        st = s.run(seed, n_requests=16, max_running=6, retract_p=0.03)\n"
        "        s.drain()\n"
        "        assert st.over_bound_steps == 0 and st.released > 0, (seed, swa, st)\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_factory_builds_our_cache_only_for_mixkv_with_the_radix_cache():
    from sglang_mixkv.sglang_seams.mixkv import radix

    built = []
    original = lambda ctx: built.append("stock") or "stock"  # noqa: E731
    cfg = lambda plan: SimpleNamespace(hf_config=SimpleNamespace(mixkv_plan=plan))  # noqa: E731
    sa = SimpleNamespace(enable_session_radix_cache=False, enable_streaming_session=False,
                         speculative_algorithm=None)
    ctx = lambda **kw: SimpleNamespace(**{  # noqa: E731
        "disable_radix_cache": False, "is_hybrid_swa": True, "is_hybrid_ssm": False,
        "model_config": cfg("GLlL"), "enable_hierarchical_cache": False, "server_args": sa,
        "params": SimpleNamespace(is_eagle=False), "full_tokens_per_layer": 100, **kw})
    assert radix.radix_cache_factory(original, ctx(disable_radix_cache=True)) == "stock"
    assert radix.radix_cache_factory(original, ctx(model_config=cfg(None))) == "stock"
    assert radix.radix_cache_factory(original, ctx(is_hybrid_swa=False)) == "stock"
    with pytest.raises(ValueError, match="enable-hierarchical-cache.*disable-radix-cache"):
        radix.radix_cache_factory(original, ctx(enable_hierarchical_cache=True))
    with pytest.raises(ValueError, match="speculative"):
        radix.radix_cache_factory(original, ctx(server_args=SimpleNamespace(
            **{**vars(sa), "speculative_algorithm": "EAGLE"})))
    with pytest.raises(ValueError, match="SWA-only pool"):
        radix.radix_cache_factory(original, ctx(full_tokens_per_layer=0))
    assert built == ["stock"] * 3


def test_plugin_registers_both_hooks():
    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_mixkv.sglang_seams.mixkv import radix

    load_plugins()
    for target in (radix.RADIX_FACTORY, radix.EVICT_SWA):
        assert any(h is not None for _, h, _ in HookRegistry._hooks[target]), target
        obj, attr = target.rsplit(".", 1)
        assert hasattr(pkgutil.resolve_name(obj), attr)  # the target exists in this SGLang


def _sglang_evicted_below(pre_len: int, window: int, page: int) -> int:
    """Where SGLang's own ``free_swa_out_of_window_slots`` (radix-cache case) moves a fresh
    request's ``swa_evicted_seqlen`` when its KV reaches ``pre_len``."""
    import torch
    from sglang.srt.mem_cache.common import free_swa_out_of_window_slots

    NS = SimpleNamespace
    req = NS(kv=NS(swa_evicted_seqlen=0), cache_protected_len=0, req_pool_idx=0)
    free_swa_out_of_window_slots(
        req, pre_len, sliding_window_size=window, page_size=page,
        req_to_token_pool=NS(req_to_token=torch.arange(pre_len + 1).view(1, -1)),
        token_to_kv_pool_allocator=NS(free_swa=lambda slots: None))
    return req.kv.swa_evicted_seqlen


def test_threshold_matches_sglangs_own_eviction():
    """The release threshold is the one SGLang frees a request's own tokens below."""
    from sglang_mixkv.sglang_seams.mixkv.radix import out_of_window_threshold

    assert out_of_window_threshold(100, 31, 1) == 69
    assert out_of_window_threshold(100, 31, 16) == 64
    assert out_of_window_threshold(100, 8, 16) == 80  # keeps at least a page
    for pre_len, window, page in [(100, 31, 1), (100, 31, 16), (100, 8, 16), (77, 7, 4),
                                  (5000, 1023, 16), (1000, 1023, 16), (1024, 1023, 1)]:
        ours = out_of_window_threshold(pre_len, window, page)
        # below zero (the whole KV still in the window): SGLang frees nothing either
        assert max(0, ours) == _sglang_evicted_below(pre_len, window, page), (pre_len, window, page)


# ---- real servers ----------------------------------------------------------------------
MQA = with_kv_heads(SIZE, 1)


@pytest.fixture(scope="module")
def mqa_model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("m") / "ma-mqa", MQA, "ma", weights=True,
                              seed=5)


@pytest.mark.server
def test_mqa_reuse_after_release_against_reference(mqa_model, tmp_path):
    """MQA ``ma``; a local pool for 3 running requests (237 slots). Prompt A decodes past
    its window (its cached tail is released during decode). A prompt extending A reuses
    A's prompt while its local KV is still in the pool; after unrelated long prompts
    have evicted it, the same extension matches less and recomputes. Every output
    equals the reference, also for a request whose released tail is evicted and
    reused by another while it is still decoding."""
    server = start_server(
        ["--model-path", str(mqa_model), "--kv-budget", "16MiB", "--max-running-requests", "3",
         "--chunked-prefill-size", "64", "--enable-metrics"],
        log=tmp_path / "server.log", env={"SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY": "1"})
    try:
        ref = Reference(mqa_model)
        usage = server.get("/server_info").json()["internal_states"][0]["memory_usage"]
        assert usage["token_capacity_swa"] < 300
        a = prompt(60, 150)
        check(server.generate(a, 100, logprob_start_len=len(a) - 1), ref, a, 100,
              prompt_logprobs=False)
        b = a + prompt(61, 45)  # tail still there: reused
        out = server.generate(b, 8, logprob_start_len=len(b) - 1)
        assert out["meta_info"]["cached_tokens"] == len(a)
        check(out, ref, b, 8, prompt_logprobs=False)
        for seed in (62, 63):  # unrelated prompts: SGLang's SWA eviction takes A's local KV
            c = prompt(seed, 400)
            check(server.generate(c, 4, logprob_start_len=len(c) - 1), ref, c, 4,
                  prompt_logprobs=False)
        d = a + prompt(64, 45)  # tail released and evicted: matched less, recomputed
        out = server.generate(d, 8, logprob_start_len=len(d) - 1)
        assert out["meta_info"]["cached_tokens"] < len(a) - SIZE.window
        check(out, ref, d, 8, prompt_logprobs=False)
        # A decodes while a long prompt's prefill evicts what A released.
        cases = [(prompt(65, 150), 120), (prompt(66, 420), 6)]
        with ThreadPoolExecutor(2) as pool:
            outs = list(pool.map(lambda c: server.generate(c[0], c[1], logprob_start_len=len(c[0]) - 1),
                                 cases))
        for (ids, m), out in zip(cases, outs):
            check(out, ref, ids, m, prompt_logprobs=False)
        assert server.alive() and "leak" not in server.log_text().lower()
    finally:
        server.stop()


@pytest.mark.server
def test_mqa_tensor_parallel_2(mqa_model, tmp_path):
    """One KV head replicated on two ranks (SGLang's CPU tensor parallelism)."""
    server = start_server(
        ["--model-path", str(mqa_model), "--kv-budget", "16MiB", "--max-running-requests", "4",
         "--chunked-prefill-size", "64", "--tp-size", "2"],
        log=tmp_path / "server.log", env={"SGLANG_CPU_OMP_THREADS_BIND": "0|1"}, timeout=400)
    try:
        ref = Reference(mqa_model)
        ids = prompt(70, 3 * SIZE.window + 5)
        check(server.generate(ids, 2 * SIZE.window + 3), ref, ids, 2 * SIZE.window + 3)
        longer = ids + prompt(71, 40)
        out = server.generate(longer, 6, logprob_start_len=len(longer) - 1)
        assert out["meta_info"]["cached_tokens"] >= len(ids) - SIZE.window
        check(out, ref, longer, 6, prompt_logprobs=False)
    finally:
        server.stop()
