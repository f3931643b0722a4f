"""Triton decode, eager and CUDA-graph paths, in-process under Triton's interpreter.

CUDA graphs cannot be captured on a CPU, but everything around the capture can run:
``init_cuda_graph_state`` sizes the graph's index buffers, and
``init_forward_metadata_out_graph`` fills them at capture (``in_capture=True``) and
before every replay (``in_capture=False``); the captured kernels then read exactly
those buffers. So this builds the real :class:`WindowedTritonBackend` over a real
hybrid pool and allocator, fills producer buffers with random K/V, and checks that
the decode kernel's output, fed from the eager metadata and from the graph buffers
(capture, then a replay with other lengths), equals plain attention over the last W
keys - which stock SGLang 0.5.17 gets wrong (W-1 keys)."""

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
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool
    from sglang.srt.runtime_context import get_parallel, publish
    from sglang.srt.server_args import ServerArgs

    from sglang_mixkv.model import sglang_window
    from sglang_mixkv.sglang_seams.mixkv.triton import WindowedTritonBackend

    model_dir = write_model_folder(tmp_path / spec, SIZE, spec, window=WINDOW)
    mc = ModelConfig(str(model_dir))
    pool = SWAKVPool(size=256, size_swa=256, page_size=1, dtype=torch.float32,
                     head_num=SIZE.kv_heads, head_dim=SIZE.head_dim,
                     swa_attention_layer_ids=mc.swa_attention_layer_ids,
                     full_attention_layer_ids=mc.full_attention_layer_ids, device="cpu")
    alloc = SWATokenToKVPoolAllocator(256, 256, 1, torch.float32, "cpu", pool, need_sort=False)
    r2t = ReqToTokenPool(size=MAX_BS, max_context_len=128, device="cpu", enable_memory_saver=False)
    sa = ServerArgs(model_path=str(model_dir), device="cpu", attention_backend="triton",
                    triton_attention_num_kv_splits=2, chunked_prefill_size=32)
    publish(sa, role="test")
    runner = SimpleNamespace(
        req_to_token_pool=r2t, token_to_kv_pool=pool, token_to_kv_pool_allocator=alloc,
        sliding_window_size=sglang_window(mc.hf_config) if mc.swa_attention_layer_ids else 4096,
        is_draft_worker=False, model_config=mc, device="cpu", gpu_id=0, server_args=sa,
    )
    single = dict(attn_tp_size=1, tp_size=1, attn_dcp_size=1, attn_dcp_rank=0, dcp_size=1, dcp_rank=0)
    with get_parallel().override(**single):
        backend = WindowedTritonBackend(runner)
    return backend, pool, alloc, r2t, get_parallel().override(**single)


def fill(pool, alloc, r2t, lens: list[int]):
    """Give request i ``lens[i]`` tokens of random K/V in every producer buffer."""
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate(lens):
        loc = alloc.alloc(n)
        r2t.req_to_token[i, :n] = loc
        for layer_id, (idx, is_swa) in pool.layers_mapping.items():
            rows = pool.translate_loc_from_full_to_swa(loc) if is_swa else loc
            k, v = pool.get_key_buffer(layer_id), pool.get_value_buffer(layer_id)
            k[rows] = torch.randn(n, *k.shape[1:], generator=g)
            v[rows] = torch.randn(n, *v.shape[1:], generator=g)


def expected(pool, r2t, layer, q, lens, window):
    out = []
    for i, n in enumerate(lens):
        start = max(0, n - window) if window else 0
        rows = r2t.req_to_token[i, start:n]
        if pool.layers_mapping[layer.layer_id][1]:
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
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    seq = torch.tensor(lens, dtype=torch.int64)
    return SimpleNamespace(
        batch_size=len(lens), req_pool_indices=torch.arange(len(lens)), seq_lens=seq,
        seq_lens_cpu=seq, seq_lens_sum=int(seq.sum()), forward_mode=ForwardMode.DECODE,
        spec_info=None, encoder_lens=None, out_cache_loc=torch.zeros(len(lens), dtype=torch.int64),
    )


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
