"""Our triton attention backend over a real SGLang pool, without a server.

What the decode-path tests and the Ada-KV metadata benchmark build: SGLang 0.5.17's
hybrid pool, allocator and ``req_to_token`` pool for one of our model folders, and our
:class:`WindowedTritonBackend` on a stand-in model runner (the fields its constructor
reads). Kernels run on the GPU, or on the CPU under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import torch


class Standalone(NamedTuple):
    backend: object  # WindowedTritonBackend
    pool: object  # SWAKVPool (plans with consumers or local layers) or MHATokenToKVPool
    alloc: object
    req_to_token: object  # ReqToTokenPool
    single_rank: AbstractContextManager  # SGLang's parallel state for one rank


def build(model_dir: Path, *, slots: int, max_bs: int, context: int, splits: int,
          dtype=torch.float32, device: str = "cpu") -> Standalone:
    """The backend over a pool of ``slots`` token slots and ``max_bs`` request rows of
    ``context`` tokens; ``splits``: ``--triton-attention-num-kv-splits``."""
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool
    from sglang.srt.runtime_context import get_parallel, publish
    from sglang.srt.server_args import ServerArgs

    from sglang_mixkv.model import sglang_window
    from sglang_mixkv.sglang_seams.mixkv.triton import WindowedTritonBackend

    mc = ModelConfig(str(model_dir))
    heads, dim = mc.get_num_kv_heads(1), mc.head_dim
    if mc.is_hybrid_swa:
        pool = SWAKVPool(size=slots, size_swa=slots, page_size=1, dtype=dtype, head_num=heads,
                         head_dim=dim, swa_attention_layer_ids=mc.swa_attention_layer_ids,
                         full_attention_layer_ids=mc.full_attention_layer_ids, device=device)
        alloc = SWATokenToKVPoolAllocator(slots, slots, 1, dtype, device, pool, need_sort=False)
        window = (sglang_window(mc.hf_config) if mc.swa_attention_layer_ids
                  else mc.hf_config.max_position_embeddings)
    else:
        pool = MHATokenToKVPool(slots, page_size=1, dtype=dtype, head_num=heads, head_dim=dim,
                                layer_num=mc.num_hidden_layers, device=device,
                                enable_memory_saver=False)
        alloc = TokenToKVPoolAllocator(slots, dtype, device, pool, need_sort=False)
        window = None
    r2t = ReqToTokenPool(size=max_bs, max_context_len=context, device=device,
                         enable_memory_saver=False)
    sa = ServerArgs(model_path=str(model_dir), device=device, attention_backend="triton",
                    triton_attention_num_kv_splits=splits, chunked_prefill_size=32)
    publish(sa, role="test")
    runner = SimpleNamespace(
        req_to_token_pool=r2t, token_to_kv_pool=pool, token_to_kv_pool_allocator=alloc,
        sliding_window_size=window, is_draft_worker=False, model_config=mc, device=device,
        gpu_id=0, server_args=sa)
    single = dict(attn_tp_size=1, tp_size=1, attn_dcp_size=1, attn_dcp_rank=0, dcp_size=1,
                  dcp_rank=0)
    with get_parallel().override(**single):
        backend = WindowedTritonBackend(runner)
    return Standalone(backend, pool, alloc, r2t, get_parallel().override(**single))


def decode_batch(lens: list[int], rows: list[int] | None = None, device: str = "cpu"):
    """A decode ForwardBatch stand-in: request ``rows[i]`` holds ``lens[i]`` tokens."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    seq = torch.tensor(lens, dtype=torch.int64)
    rows = list(range(len(lens))) if rows is None else rows
    return SimpleNamespace(
        batch_size=len(lens), req_pool_indices=torch.tensor(rows, device=device),
        seq_lens=seq.to(device), seq_lens_cpu=seq, seq_lens_sum=int(seq.sum()),
        forward_mode=ForwardMode.DECODE, spec_info=None, encoder_lens=None,
        out_cache_loc=torch.zeros(len(lens), dtype=torch.int64, device=device))
