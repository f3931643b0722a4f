"""Triton decode, eager and CUDA-graph paths, in-process under Triton's interpreter.

CUDA graphs cannot be captured on a CPU, but everything around the capture can run:
``init_cuda_graph_state`` sizes the graph's index buffers, and
``init_forward_metadata_out_graph`` fills them at capture (``in_capture=True``) and
before every replay (``in_capture=False``); the captured kernels then read exactly
those buffers. So this builds the real :class:`WindowedTritonBackend` over a real
hybrid pool and allocator, fills producer buffers with random K/V, and checks that
the decode kernel's output, fed from the eager metadata and from the graph buffers
(capture, then a replay with other lengths), equals plain attention over the last W
keys - which stock SGLang 0.5.17 gets wrong (W-1 keys). Also: the split cap ``serve``
picks on a GPU gives the stock cap's output, and Ada-KV's per-head lists (built on the
device, rebuilt inside a graph) give attention over each head's kept positions."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from sglang_mixkv.model_folder import SIZES, write_model_folder

WINDOW = 8
SIZE = SIZES["tiny"]
MAX_BS = 4


#: Triton picks its interpreter or its compiler when a kernel is *defined*
#: (``triton.jit``), i.e. when SGLang's kernel modules are first imported; another test
#: in this process may have imported them already. So the checks run in a fresh pytest
#: process with TRITON_INTERPRET=1, started by the one test collected here otherwise.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.skipif(INTERPRETED, reason="already in the interpreted process")
def test_in_a_process_with_triton_interpreted():
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                       env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" in r.stdout, r.stdout[-2000:]


interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in the interpreted process")


def build(tmp_path, spec: str):
    """(backend, pool, allocator, req_to_token pool, one-rank context) for ``spec``."""
    from mixkv_bench import standalone

    model_dir = write_model_folder(tmp_path / spec, SIZE, spec, window=WINDOW)
    return standalone.build(model_dir, slots=256, max_bs=MAX_BS, context=128, splits=2)


def mapping(pool) -> dict:
    """{layer id: (buffer index, is SWA)} of a hybrid pool, or of a plain one (no SWA)."""
    if hasattr(pool, "layers_mapping"):
        return pool.layers_mapping
    return {i: (i, False) for i in range(pool.layer_num)}


def fill(pool, alloc, r2t, lens: list[int]):
    """Give request i ``lens[i]`` tokens of random K/V in every producer buffer."""
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate(lens):
        loc = alloc.alloc(n)
        r2t.req_to_token[i, :n] = loc
        for layer_id, (idx, is_swa) in mapping(pool).items():
            rows = pool.translate_loc_from_full_to_swa(loc) if is_swa else loc
            k, v = pool.get_key_buffer(layer_id), pool.get_value_buffer(layer_id)
            k[rows] = torch.randn(n, *k.shape[1:], generator=g)
            v[rows] = torch.randn(n, *v.shape[1:], generator=g)


def expected(pool, r2t, layer, q, lens, window):
    out = []
    for i, n in enumerate(lens):
        start = max(0, n - window) if window else 0
        rows = r2t.req_to_token[i, start:n]
        if mapping(pool)[layer.layer_id][1]:
            rows = pool.translate_loc_from_full_to_swa(rows)
        k = pool.get_key_buffer(layer.layer_id)[rows].transpose(0, 1)
        v = pool.get_value_buffer(layer.layer_id)[rows].transpose(0, 1)
        o = torch.nn.functional.scaled_dot_product_attention(
            q[i].unsqueeze(1), k, v, scale=layer.scaling, enable_gqa=True)
        out.append(o.squeeze(1))
    return torch.stack(out)


def decode(backend, layer, q, bs):
    return backend.forward_decode(q.reshape(bs, -1), None, None, layer,
                                  SimpleNamespace(out_cache_loc=None), save_kv_cache=False)


def batch(r2t, lens):
    from mixkv_bench.standalone import decode_batch

    return decode_batch(lens)


@interpreted
@pytest.mark.parametrize("spec", ["ma-offset", "LlLlLlLlLlLl", "cla2"])
def test_decode_attends_over_w_keys_eager_and_graph(tmp_path, spec):
    from sglang.srt.layers.radix_attention import RadixAttention

    from sglang_mixkv.plan import resolve

    backend, pool, alloc, r2t, single = build(tmp_path, spec)
    plan = resolve(spec, SIZE.num_layers)
    local = plan.local_producers
    layer_id = local[0] if local else plan.global_producers[0]
    window = WINDOW if local else None
    layer = RadixAttention(SIZE.heads, SIZE.head_dim, SIZE.head_dim**-0.5,
                           num_kv_heads=SIZE.kv_heads, layer_id=layer_id,
                           sliding_window_size=WINDOW - 1 if local else -1)
    fill(pool, alloc, r2t, [20, 5, 13, 9])
    g = torch.Generator().manual_seed(1)

    with single:
        # eager
        lens = [20, 5, 13]
        q = torch.randn(len(lens), SIZE.heads, SIZE.head_dim, generator=g)
        backend.init_forward_metadata(batch(r2t, lens))
        got = decode(backend, layer, q, len(lens)).view_as(q)
        torch.testing.assert_close(got, expected(pool, r2t, layer, q, lens, window))

        # CUDA graph: buffers sized for W keys per request, capture, then replay
        backend.init_cuda_graph_state(MAX_BS, MAX_BS)
        for in_capture, lens in ((True, [20, 5, 13, 9]), (False, [12, 4, 13, 2])):
            q = torch.randn(len(lens), SIZE.heads, SIZE.head_dim, generator=g)
            backend.init_forward_metadata_out_graph(batch(r2t, lens), in_capture=in_capture)
            got = decode(backend, layer, q, len(lens)).view_as(q)
            torch.testing.assert_close(got, expected(pool, r2t, layer, q, lens, window))
    # the graph's window buffer holds W keys per request; no window lists at all for
    # plans without local layers
    assert backend.sliding_window_size == window
    assert (backend.window_kv_indptr is None) == (window is None)
    if window:
        assert backend.cuda_graph_window_kv_indices.numel() == MAX_BS * WINDOW


def test_decode_window_keeps_other_models_as_they_are():
    from sglang_mixkv.plan import to_config, parse
    from sglang_mixkv.sglang_seams.mixkv.triton import decode_window

    ns = lambda d: SimpleNamespace(**d)  # noqa: E731
    assert decode_window(1023, ns({})) == 1023  # not ours: SGLang's value
    assert decode_window(None, ns({})) is None
    assert decode_window(7, ns(to_config(parse("LlGg"), 8))) == 8
    assert decode_window(4096, ns(to_config(parse("GgGg"), 8))) is None


# ---- Ada-KV: per-head cells, eager and CUDA graph -------------------------------------------
def kept_sets(g, prompt_len: int, window: int, budget: int, heads: int) -> list[torch.Tensor]:
    """Random per-head kept prompt positions (ascending, the observation window in every
    head): ``H x (budget - window)`` picks split unevenly between the heads, as Ada-KV's
    one top-k over all heads does; the total fits the region (``H x (budget + 1)``)."""
    out, left = [], heads * (budget - window)
    for h in range(heads):
        n = left if h == heads - 1 else int(torch.randint(0, left + 1, (1,), generator=g))
        n = min(n, prompt_len - window)
        left -= n
        picks = torch.randperm(prompt_len - window, generator=g)[:n]
        out.append(torch.cat([picks.sort().values, torch.arange(prompt_len - window, prompt_len)]))
    total = sum(k.numel() for k in out)
    assert total <= heads * (budget + 1), total
    return out


def expected_per_head(keys, values, layer, q, lens, kept):
    """Plain attention per KV head over its kept prompt positions and every position
    after the prompt (``kept[i]``: None for an uncompressed request), from the K/V as
    they were before compaction (``keys[i]`` [L, H, D] by position)."""
    out = []
    group = layer.tp_q_head_num // layer.tp_k_head_num
    for i, n in enumerate(lens):
        heads = []
        for h in range(layer.tp_k_head_num):
            if kept[i] is None:
                pos = torch.arange(n)
            else:
                prompt, sets = kept[i]
                pos = torch.cat([sets[h], torch.arange(prompt, n)])
            k, v = keys[i][pos, h], values[i][pos, h]
            qh = q[i, h * group:(h + 1) * group]
            heads.append(torch.softmax(qh @ k.T * layer.scaling, -1) @ v)
        out.append(torch.cat(heads))
    return torch.stack(out)


@interpreted
@pytest.mark.parametrize("spec", ["ma", "cla2"])
def test_adakv_decode_over_kept_cells_eager_and_graph(tmp_path, spec):
    """Ada-KV's decode reads each head's kept cells from device tables only: eager, at
    capture, and at a replay with other requests, lengths and budgets, the output
    equals plain attention over the kept positions (the server's kept sets: ``compact``
    moves them as the server does). ``ma``: one global producer read by consumers;
    ``cla2``: producer, reader, producer, ... (lists rebuilt per producer)."""
    from sglang.srt.layers.radix_attention import RadixAttention

    from sglang_mixkv.adakv import AdaKVConfig, cut
    from sglang_mixkv.plan import resolve
    from sglang_mixkv.sglang_seams.mixkv import adakv as seam

    seam.configure(AdaKVConfig(budget=12, window=4))
    try:
        backend, pool, alloc, r2t, single = build(tmp_path, spec)
        tables = backend.ada_tables
        assert tables is not None and seam.tables() is tables
        plan = resolve(spec, SIZE.num_layers)
        g = torch.Generator().manual_seed(2)
        lens = [30, 9, 26, 17]  # tokens each request has (prompt + decoded)
        fill(pool, alloc, r2t, lens)
        layers = [RadixAttention(SIZE.heads, SIZE.head_dim, SIZE.head_dim**-0.5,
                                 num_kv_heads=SIZE.kv_heads, layer_id=p, sliding_window_size=-1)
                  for p in plan.global_producers[:2]]
        before = {p: [(pool.get_key_buffer(p)[r2t.req_to_token[i, :n].long()].clone(),
                       pool.get_value_buffer(p)[r2t.req_to_token[i, :n].long()].clone())
                      for i, n in enumerate(lens)] for p in plan.global_producers}

        def compress(i: int, prompt: int, budget: int) -> dict:
            """Request i's prompt compressed to random kept sets, as the server does."""
            kept = {p: kept_sets(g, prompt, 4, budget, SIZE.kv_heads)
                    for p in plan.global_producers}
            c = seam.compact(pool, r2t.req_to_token[i], prompt, cut(prompt, budget), kept)
            tables.write(i, c)
            return kept

        builds = []
        real_build = backend._build_head_lists
        backend._build_head_lists = lambda *a: builds.append(a[0]) or real_build(*a)

        def run(lens_now, rows, compressed, in_graph: bool, in_capture=False):
            fb = batch(r2t, lens_now)
            fb.req_pool_indices = torch.tensor(rows)
            if in_graph:
                backend.init_forward_metadata_out_graph(fb, in_capture=in_capture)
            else:
                backend.init_forward_metadata(fb)
            builds.clear()
            # each producer writes its new token (to slot 0, the allocator's dummy slot),
            # then the first producer's reader comes again
            for layer, writes in [(x, True) for x in layers] + [(layers[0], False)]:
                q = torch.randn(len(rows), SIZE.heads, SIZE.head_dim, generator=g)
                kv = torch.zeros(len(rows), SIZE.kv_heads, SIZE.head_dim)
                got = backend.forward_decode(q.reshape(len(rows), -1), kv, kv, layer, fb,
                                             save_kv_cache=writes).view_as(q)
                keys = [before[layer.layer_id][r][0] for r in rows]
                values = [before[layer.layer_id][r][1] for r in rows]
                kept = [(compressed[r][0], compressed[r][1][layer.layer_id])
                        if r in compressed else None for r in rows]
                torch.testing.assert_close(got, expected_per_head(keys, values, layer, q,
                                                                  lens_now, kept))
            # every producer builds its lists in every forward (a graph records each warm-up
            # and capture run); the reader rebuilds only if another producer came between
            assert builds == [x.layer_id for x in layers] + [layers[0].layer_id] * (len(layers) > 1)

        with single:
            # eager: requests 0 and 2 compressed (prompts 22 and 20, budget 12), 1 and 3 not
            compressed = {0: (22, compress(0, 22, 12)), 2: (20, compress(2, 20, 12))}
            run([30, 9, 26, 17], [0, 1, 2, 3], compressed, in_graph=False)
            # graph: capture with that batch, replay with other rows, lengths and a
            # request compressed since, with another budget
            backend.init_cuda_graph_state(MAX_BS, MAX_BS)
            for _ in range(2):  # SGLang runs the forward again inside the capture
                run([30, 9, 26, 17], [0, 1, 2, 3], compressed, in_graph=True, in_capture=True)
            compressed[3] = (14, compress(3, 14, 8))
            tables.clear(torch.tensor([1]))  # slot 1 reused by an uncompressed request
            run([17, 25, 8], [3, 0, 1], compressed, in_graph=True)
    finally:
        seam.configure(None)
        seam.use_tables(None)


@interpreted
@pytest.mark.parametrize("spec", ["ma-offset", "standard"])
def test_decode_equal_at_the_stock_and_at_serves_split_count(tmp_path, spec):
    """The split cap ``serve`` picks on a GPU (``launch.decode_kv_splits``: 128 for this
    model on an H100/H200) gives the decode kernel's output of the stock 8 splits, within
    float tolerance, and plain attention's, on contexts of many windows (up to 100 tokens,
    12 windows): more splits than keys leaves splits empty, which the merge must skip. A
    plan with local layers (its global and a local layer) and one without."""
    from sglang.srt.layers.radix_attention import RadixAttention

    from mixkv_bench import standalone
    from sglang_mixkv.plan import resolve
    from sglang_mixkv.sglang_seams.launch import decode_kv_splits

    chosen = decode_kv_splits(132, SIZE.max_position)
    assert chosen == 128
    plan = resolve(spec, SIZE.num_layers)
    model_dir = write_model_folder(tmp_path / spec, SIZE, spec, window=WINDOW)
    lens = [100, 37, 64, 9]
    g = torch.Generator().manual_seed(3)
    q = torch.randn(len(lens), SIZE.heads, SIZE.head_dim, generator=g)
    outs = {}
    for splits in (8, chosen):
        backend, pool, alloc, r2t, single = standalone.build(
            model_dir, slots=256, max_bs=MAX_BS, context=128, splits=splits)
        fill(pool, alloc, r2t, lens)
        layers = [(plan.global_producers[0], None)] + [(i, WINDOW) for i in plan.local_producers[:1]]
        with single:
            backend.init_forward_metadata(batch(r2t, lens))
            for layer_id, window in layers:
                layer = RadixAttention(SIZE.heads, SIZE.head_dim, SIZE.head_dim**-0.5,
                                       num_kv_heads=SIZE.kv_heads, layer_id=layer_id,
                                       sliding_window_size=WINDOW - 1 if window else -1)
                got = decode(backend, layer, q, len(lens)).view_as(q)
                torch.testing.assert_close(got, expected(pool, r2t, layer, q, lens, window))
                outs[(splits, layer_id)] = got
    for (splits, layer_id), got in outs.items():
        torch.testing.assert_close(got, outs[(8, layer_id)], rtol=1e-5, atol=1e-5)
