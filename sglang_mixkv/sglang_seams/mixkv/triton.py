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

**Ada-KV decode** (``mixkv/adakv.py``): with Ada-KV on, every global layer's decode
runs SGLang's own ``decode_attention_fwd`` over the batch expanded to ``batch x KV
heads`` rows: row ``(i, h)`` holds request i's query heads of KV head h
(``q.view(bs * H, G, D)``), the K/V buffers are viewed as one head per cell
(``[slots * H, 1, D]``, so the kernel derives one KV head and a group of G,
``kernels/ops/attention/decode_attention.py:986-990``), and each row's index list is
its head's cells: a compressed request's kept region cells, then its decode slots; an
uncompressed one's every slot (``slot * H + h``). The lists are built on the device
from ``req_to_token``, the batch's ``req_pool_indices`` / ``seq_lens`` and the
compressed layouts' device tables (``adakv.HeadTables``) by :func:`_head_kv_indices`,
once per global producer per step (its consumers reuse them): no host sync and no
``Req`` object, so a captured decode graph replays them for whatever requests fill it.
Graph buffers: ``max_bs x H`` row pointers and split counts, ``max_bs x H x context``
cells (every row holds at most its sequence). The split-KV scratch is the batch's own,
viewed the same way.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
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


@triton.jit
def _head_kv_indices(req_to_token, req_pool_indices, seq_lens, prompt, cut, offsets, kv_indptr,
                     kv_indices, r2t_stride, off_stride_r, layer_index,
                     HEADS: tl.constexpr, BLOCK: tl.constexpr):
    """Row ``(i, h)``'s cell list: if request i's slot holds a compressed prompt of P
    tokens and the request has decoded past it, its region cells ``[off[h], off[h+1])``
    (cell j is head ``j % H`` of slot ``req_to_token[r, cut + j // H]``) and then
    ``req_to_token[r, P:L] * H + h``; else ``req_to_token[r, 0:L] * H + h``."""
    row = tl.program_id(0)
    i = row // HEADS
    h = row % HEADS
    r = tl.load(req_pool_indices + i).to(tl.int64)
    length = tl.load(seq_lens + i).to(tl.int64)
    p = tl.load(prompt + r)
    base = offsets + r * off_stride_r + layer_index * (HEADS + 1) + h
    compressed = (p > 0) & (length > p)
    kept = tl.where(compressed, tl.load(base + 1) - tl.load(base), 0)
    first = tl.where(compressed, tl.load(base), 0)
    region = req_to_token + r * r2t_stride + tl.where(compressed, tl.load(cut + r), 0)
    tail_from = tl.where(compressed, p, 0)
    out = kv_indices + tl.load(kv_indptr + row)
    for n in range(0, kept, BLOCK):
        cell = first + n + tl.arange(0, BLOCK).to(tl.int64)
        mask = n + tl.arange(0, BLOCK) < kept
        slot = tl.load(region + cell // HEADS, mask=mask, other=0).to(tl.int64)
        tl.store(out + n + tl.arange(0, BLOCK), slot * HEADS + cell % HEADS, mask=mask)
    out = out + kept
    for n in range(0, length - tail_from, BLOCK):
        pos = tail_from + n + tl.arange(0, BLOCK).to(tl.int64)
        mask = pos < length
        slot = tl.load(req_to_token + r * r2t_stride + pos, mask=mask, other=0).to(tl.int64)
        tl.store(out + n + tl.arange(0, BLOCK), slot * HEADS + h, mask=mask)


class HeadLists(NamedTuple):
    """One decode step's per-head index lists (rows ``batch x KV heads``)."""

    indptr: torch.Tensor  # [rows + 1] int64
    indices: torch.Tensor  # cells, int64
    splits: torch.Tensor  # [rows] int32


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
        #: Ada-KV: device tables of compressed layouts, this step's lists, and the
        #: producer they were built for (None: build at the next global layer)
        self.ada_tables: Optional[adakv.HeadTables] = None
        self._ada_lists: Optional[HeadLists] = None
        self._ada_graph_lists: Optional[HeadLists] = None
        self._ada_built_for: Optional[int] = None
        self._ada_step: Optional[HeadLists] = None
        plan = served.plan_for(model_runner.model_config.hf_config)
        if adakv.enabled() and plan is not None:
            self.ada_tables = adakv.HeadTables(self.req_to_token.shape[0], plan.global_producers,
                                               self.num_kv_head, self.device)
            adakv.use_tables(self.ada_tables)
            logger.info("mixkv triton: Ada-KV decode over per-head cell lists")

    # ---- Ada-KV: per-head lists ----------------------------------------------------------
    def init_forward_metadata(self, forward_batch):
        super().init_forward_metadata(forward_batch)
        self._ada_built_for = None
        if self.ada_tables is not None and forward_batch.forward_mode.is_decode_or_idle():
            rows = forward_batch.batch_size * self.num_kv_head
            total = forward_batch.seq_lens_sum
            if total is None:
                total = forward_batch.batch_size * self.max_context_len
            self._ada_lists = HeadLists(
                torch.zeros(rows + 1, dtype=torch.int64, device=self.device),
                torch.empty(self.num_kv_head * total, dtype=torch.int64, device=self.device),
                torch.empty(rows, dtype=torch.int32, device=self.device))

    def init_cuda_graph_state(self, max_bs, max_num_tokens, *args, **kwargs):
        super().init_cuda_graph_state(max_bs, max_num_tokens, *args, **kwargs)
        if self.ada_tables is not None:
            rows = max_num_tokens * self.num_kv_head
            self._ada_graph_lists = HeadLists(
                torch.zeros(rows + 1, dtype=torch.int64, device=self.device),
                torch.zeros(rows * self.max_context_len, dtype=torch.int64, device=self.device),
                torch.full((rows,), self.max_kv_splits, dtype=torch.int32, device=self.device))

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
        super().init_forward_metadata_out_graph(forward_batch, in_capture)
        self._ada_built_for = None
        self._ada_lists = self._ada_graph_lists

    def _build_head_lists(self, layer_id: int, forward_batch, bs: int) -> HeadLists:
        """This step's lists for global producer ``layer_id`` (device work only: a
        captured graph rebuilds them on replay from the batch's buffers)."""
        t, lists, heads = self.ada_tables, self._ada_lists, self.num_kv_head
        r = forward_batch.req_pool_indices[:bs]
        length = forward_batch.seq_lens[:bs].to(torch.int64)
        p = t.prompt[r]
        compressed = (p > 0) & (length > p)
        off = t.offsets[r, t.index(layer_id)]
        lens = torch.where(compressed.unsqueeze(1), off[:, 1:] - off[:, :-1] + (length - p).unsqueeze(1),
                           length.unsqueeze(1)).reshape(-1)
        rows = bs * heads
        torch.cumsum(lens, 0, out=lists.indptr[1 : rows + 1])
        _head_kv_indices[(rows,)](
            self.req_to_token, r, length, t.prompt, t.cut, t.offsets, lists.indptr, lists.indices,
            self.req_to_token.stride(0), t.offsets.stride(0), t.index(layer_id),
            HEADS=heads, BLOCK=256)
        splits = lists.splits[:rows]
        if self.static_kv_splits or self.device_core_count <= 0:
            splits.fill_(self.max_kv_splits)
        else:  # SGLang's heuristic over the expanded rows: one KV head, a group of G
            from sglang.kernels.ops.attention.metadata import get_num_kv_splits_triton

            get_num_kv_splits_triton[(1,)](
                splits, lens, rows, 1, self.num_head // heads, 1, self.max_kv_splits,
                self.device_core_count, MAX_NUM_SEQ=max(256, triton.next_power_of_2(rows)))
        self._ada_built_for = layer_id
        return HeadLists(lists.indptr[: rows + 1], lists.indices, splits)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        windowed = layer.sliding_window_size is not None and layer.sliding_window_size > -1
        if windowed or self.ada_tables is None or self._ada_lists is None:
            return super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        from sglang.srt.mem_cache.memory_pool import KVWriteLoc

        if save_kv_cache:  # as TritonAttnBackend.forward_decode (triton_backend.py:1759-1771)
            meta = self.forward_metadata
            self._set_kv_buffer(forward_batch, layer, KVWriteLoc(
                forward_batch.out_cache_loc, meta.swa_out_cache_loc,
                full_loc=meta.out_cache_loc_full_physical), k, v, layer.k_scale, layer.v_scale)
        return self._decode_per_head(q, layer, forward_batch, rebuild=save_kv_cache)

    def _decode_per_head(self, q, layer, forward_batch, rebuild: bool) -> torch.Tensor:
        """Decode attention over each request's per-head cells (see the module doc).
        A producer's call (``rebuild``: it writes the new token's K/V) builds the step's
        lists, in every forward, so that each warm-up and capture run of a CUDA graph
        records the build; its consumers, which carry its layer id and come after it,
        reuse them (or build them, if another producer's came in between)."""
        heads, dim, v_dim = layer.tp_k_head_num, layer.qk_head_dim, layer.v_head_dim
        group = layer.tp_q_head_num // heads
        bs = q.shape[0]
        if bs == 0:
            return q.new_empty((0, layer.tp_q_head_num * v_dim))
        if rebuild or self._ada_built_for != layer.layer_id:
            self._ada_step = self._build_head_lists(layer.layer_id, forward_batch, bs)
        lists = self._ada_step
        meta = self.forward_metadata
        o = q.new_empty((bs * heads, group, v_dim))
        self.decode_attention_fwd(
            q.reshape(bs * heads, group, dim),
            self.token_to_kv_pool.get_key_buffer(layer.layer_id).view(-1, 1, dim),
            self.token_to_kv_pool.get_value_buffer(layer.layer_id).view(-1, 1, v_dim),
            o, lists.indptr, lists.indices,
            meta.attn_logits[:bs].reshape(bs * heads, group, self.max_kv_splits, v_dim),
            meta.attn_lse[:bs].reshape(bs * heads, group, self.max_kv_splits),
            lists.splits, self.max_kv_splits, layer.scaling, 1.0, 1.0,
            logit_cap=logit_capping_mod(layer.logit_capping_method, layer.logit_cap),
            page_size=1,  # the index lists name cells, not pages
        )
        return o.reshape(bs, layer.tp_q_head_num * v_dim)
