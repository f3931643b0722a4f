"""Seam: SGLang 0.5.17's ``triton`` attention backend (the default on a GPU), fixed for
sliding windows and for plans without local layers.

Window convention: a local layer sees W tokens, its own included; SGLang stores
``sliding_window_size = W - 1`` on the layer and the model runner. What stock triton
does with it (``layers/attention/triton_backend.py``):

- extend: the prefix index list holds the last ``min(prefix, W-1)`` keys
  (``update_sliding_window_buffer`` on ``extend_prefix_lens``) and the kernel masks
  ``q_pos <= k_pos + (W-1)`` (``kernels/ops/attention/extend_attention.py:391-397``,
  positions relative to the start of the list): W keys per query. Right.
- decode: the index list holds the last ``min(seq_len, W-1)`` keys and the kernel has
  no window mask of its own: **W-1 keys**, one short. The eager path
  (``init_forward_metadata``) and the CUDA-graph path (``_update_decode_kv_buffers``,
  buffers sized ``max_num_tokens * sliding_window_size`` in ``init_cuda_graph_state``)
  both read the backend's ``self.sliding_window_size``.

:class:`WindowedTritonBackend` keeps the layers' W-1 (the extend mask) and sets the
backend's list length to W. Decode then reads exactly the W keys the window covers, in
both paths, and the CUDA-graph window buffer has room for W keys per request. Extend's
prefix list gains one key the kernel's mask already excludes (its distance to the
first new token is W), so extend is unchanged.

A plan without local producers still runs on the hybrid pool (it has consumers), and
SGLang then hands the backend a window of ``max_position_embeddings``: stock triton
would build a second, full-length index list every step that no layer reads. Here the
backend has no window at all for such plans.

**Ada-KV decode** (``mixkv/adakv.py``): in a batch with compressed requests, a global
layer's decode runs SGLang's own ``decode_attention_fwd`` over a batch expanded to
``batch x KV heads`` rows: row ``(i, h)`` holds request i's query heads of KV head h
(``q.view(bs * H, G, D)``), the K/V buffers are viewed as one head per cell
(``[slots * H, 1, D]``, so the kernel derives one KV head and a group of G,
``kernels/ops/attention/decode_attention.py:995-997``), and each row's index list is
its head's cells (uncompressed requests: every slot of the sequence). The split
buffers are the batch's own, viewed the same way. Eager only: serve turns CUDA graphs
off with Ada-KV.
"""

from __future__ import annotations

import logging

import torch
from sglang.srt.layers.attention.triton_backend import TritonAttnBackend, logit_capping_mod

from sglang_mixkv import served
from sglang_mixkv.sglang_seams.mixkv import adakv

logger = logging.getLogger(__name__)


def decode_window(runner_window: int | None, hf_config) -> int | None:
    """Index-list length the backend should use: W for plans with local producers
    (SGLang's ``runner_window`` is W-1), None for MixAttention plans without them, and
    SGLang's own value for every other model."""
    plan = served.plan_for(hf_config)
    if plan is None:
        return runner_window
    if not plan.local_producers or runner_window is None:
        return None
    return runner_window + 1


class WindowedTritonBackend(TritonAttnBackend):
    """Triton attention whose decode attends over the same W keys as its extend."""

    def __init__(self, model_runner, *args, **kwargs):
        super().__init__(model_runner, *args, **kwargs)
        window = decode_window(model_runner.sliding_window_size,
                               model_runner.model_config.hf_config)
        if window is None:
            self.window_kv_indptr = None
            logger.info("mixkv triton: no local layers, no window index lists")
        elif self.window_kv_indptr is None:  # pragma: no cover - stock always allocates
            raise RuntimeError("triton backend built no window index buffer for a windowed plan")
        else:
            logger.info("mixkv triton: decode attends over the last %d keys", window)
        self.sliding_window_size = window

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        windowed = layer.sliding_window_size is not None and layer.sliding_window_size > -1
        compressed = None if windowed else adakv.compressed_states(forward_batch)
        if compressed is None:
            return super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        from sglang.srt.mem_cache.memory_pool import KVWriteLoc

        if save_kv_cache:  # as TritonAttnBackend.forward_decode (triton_backend.py:1759-1771)
            meta = self.forward_metadata
            self._set_kv_buffer(forward_batch, layer, KVWriteLoc(
                forward_batch.out_cache_loc, meta.swa_out_cache_loc,
                full_loc=meta.out_cache_loc_full_physical), k, v, layer.k_scale, layer.v_scale)
        return self._decode_per_head(q, layer, forward_batch, compressed)

    def _decode_per_head(self, q, layer, forward_batch, compressed) -> torch.Tensor:
        """Decode attention over each request's per-head cells (see the module doc)."""
        heads, dim, v_dim = layer.tp_k_head_num, layer.qk_head_dim, layer.v_head_dim
        group = layer.tp_q_head_num // heads
        bs = q.shape[0]
        lists = []
        for i, (r, seq_len) in enumerate(zip(forward_batch.req_pool_indices.tolist(),
                                             forward_batch.seq_lens.tolist())):
            row = self.req_to_token[r]
            for h in range(heads):
                if compressed[i] is not None:
                    lists.append(adakv.head_cells(compressed[i], layer.layer_id, h, row, seq_len))
                else:
                    lists.append(row[:seq_len].to(torch.int64) * heads + h)
        lens = torch.tensor([x.numel() for x in lists], dtype=torch.int32, device=q.device)
        indptr = torch.zeros(bs * heads + 1, dtype=torch.int64, device=q.device)
        indptr[1:] = torch.cumsum(lens, 0)
        indices = torch.cat(lists).to(q.device)
        splits = torch.empty(bs * heads, dtype=torch.int32, device=q.device)
        self.get_num_kv_splits(splits, lens)
        meta = self.forward_metadata
        o = q.new_empty((bs * heads, group, v_dim))
        self.decode_attention_fwd(
            q.reshape(bs * heads, group, dim),
            self.token_to_kv_pool.get_key_buffer(layer.layer_id).view(-1, 1, dim),
            self.token_to_kv_pool.get_value_buffer(layer.layer_id).view(-1, 1, v_dim),
            o, indptr, indices,
            meta.attn_logits[:bs].reshape(bs * heads, group, self.max_kv_splits, v_dim),
            meta.attn_lse[:bs].reshape(bs * heads, group, self.max_kv_splits),
            splits, self.max_kv_splits, layer.scaling, 1.0, 1.0,
            logit_cap=logit_capping_mod(layer.logit_capping_method, layer.logit_cap),
            page_size=1,  # the index lists name cells, not pages
        )
        return o.reshape(bs, layer.tp_q_head_num * v_dim)
