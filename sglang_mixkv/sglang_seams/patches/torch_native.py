"""Seam: SGLang 0.5.17's ``torch_native`` attention backend, window- and SWA-pool-aware.

Stock 0.5.17 reads SWA layers with full-pool indices (``torch_native_backend.py:135-139,
236-239``) and ignores the window; :class:`WindowedTorchNativeBackend` replaces it. Its
decode also attends over Ada-KV-compressed requests (``mixkv/adakv.py``): per KV head,
that head's kept cells and the tokens since the prompt.
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang_mixkv.sglang_seams.mixkv import adakv


def _torch_native_base():
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    return TorchNativeAttnBackend


class WindowedTorchNativeBackend(_torch_native_base()):
    """SGLang's torch_native backend with correct reads from the SWA pool.

    For each request, queries at positions ``[prefix, seq_len)`` attend over keys at
    ``[max(0, prefix - w), seq_len)`` for a layer with window ``w`` (SGLang's
    convention: tokens minus one), else ``[0, seq_len)``. Key rows come from the
    request's ``req_to_token`` row (full-pool indices), translated through the
    full->SWA map for layers that live in the SWA pool. A consumer's layer carries
    its producer's id, so it reads the producer's rows; it writes nothing."""

    def _is_swa_layer(self, layer_id: int) -> bool:
        mapping = getattr(self.token_to_kv_pool, "layers_mapping", None)
        return self.use_sliding_window_kv_pool and mapping is not None and mapping[layer_id][1]

    @staticmethod
    def _window(layer) -> Optional[int]:
        w = getattr(layer, "sliding_window_size", None)
        return w if w is not None and w > -1 else None

    def _attend(self, q, layer, req_pool_idx: int, q_start: int, seq_len: int) -> torch.Tensor:
        """Attention of queries ``q`` [n, heads, dim] at positions q_start.. over the
        request's cached keys; returns [n, heads, v_dim]."""
        window = self._window(layer)
        kv_start = max(0, q_start - window) if window is not None else 0
        rows = self.req_to_token_pool.req_to_token[req_pool_idx, kv_start:seq_len]
        if self._is_swa_layer(layer.layer_id):
            rows = self.token_to_kv_pool.translate_loc_from_full_to_swa(rows)
        k = self.token_to_kv_pool.get_key_buffer(layer.layer_id)[rows]
        v = self.token_to_kv_pool.get_value_buffer(layer.layer_id)[rows]
        q_pos = torch.arange(q_start, seq_len, device=q.device).unsqueeze(1)
        k_pos = torch.arange(kv_start, seq_len, device=q.device).unsqueeze(0)
        mask = k_pos <= q_pos
        if window is not None:
            mask &= k_pos >= q_pos - window
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0),
            k.transpose(0, 1).unsqueeze(0).to(q.dtype),
            v.transpose(0, 1).unsqueeze(0).to(q.dtype),
            attn_mask=mask, scale=layer.scaling,
            enable_gqa=layer.tp_q_head_num != layer.tp_k_head_num,
        )
        return out.squeeze(0).transpose(0, 1)

    def _save(self, layer, forward_batch, k, v, save_kv_cache: bool) -> None:
        from sglang.srt.mem_cache.memory_pool import KVWriteLoc

        if save_kv_cache and k is not None and v is not None:
            self.token_to_kv_pool.set_kv_buffer(
                layer, KVWriteLoc(forward_batch.out_cache_loc, self.swa_out_cache_loc), k, v
            )

    def _plain(self, layer) -> bool:
        from sglang.srt.layers.radix_attention import AttentionType

        return not layer.is_cross_attention and layer.attn_type != AttentionType.ENCODER_ONLY

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True):
        if not self._plain(layer) or forward_batch.encoder_lens is not None:
            return super().forward_extend(q, k, v, layer, forward_batch, save_kv_cache)
        self._save(layer, forward_batch, k, v, save_kv_cache)
        q = q.view(-1, layer.tp_q_head_num, layer.qk_head_dim)
        o = q.new_empty((q.shape[0], layer.tp_q_head_num, layer.v_head_dim))
        start = 0
        for req, prefix, ext, seq_len in zip(
            forward_batch.req_pool_indices.tolist(), forward_batch.extend_prefix_lens.tolist(),
            forward_batch.extend_seq_lens.tolist(), forward_batch.seq_lens.tolist(),
        ):
            o[start : start + ext] = self._attend(q[start : start + ext], layer, req, prefix, seq_len)
            start += ext
        return o.view(-1, layer.tp_q_head_num * layer.v_head_dim)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True):
        if not self._plain(layer) or forward_batch.encoder_lens is not None:
            return super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache)
        self._save(layer, forward_batch, k, v, save_kv_cache)
        q = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
        o = q.new_empty((q.shape[0], layer.tp_q_head_num, layer.v_head_dim))
        compressed = None if self._window(layer) is not None else \
            adakv.compressed_states(forward_batch)
        for i, (req, seq_len) in enumerate(
            zip(forward_batch.req_pool_indices.tolist(), forward_batch.seq_lens.tolist())
        ):
            if compressed is not None and compressed[i] is not None:
                o[i] = self._attend_compressed(q[i], layer, compressed[i], req, seq_len)
            else:
                o[i : i + 1] = self._attend(q[i : i + 1], layer, req, seq_len - 1, seq_len)
        return o.view(-1, layer.tp_q_head_num * layer.v_head_dim)

    def _attend_compressed(self, q, layer, c, req_pool_idx: int, seq_len: int) -> torch.Tensor:
        """One decode query [heads, dim] of an Ada-KV-compressed request on a global layer:
        each KV head attends over its own cells (``adakv.head_cells``)."""
        heads = layer.tp_k_head_num
        group = layer.tp_q_head_num // heads
        row = self.req_to_token_pool.req_to_token[req_pool_idx]
        k_flat = self.token_to_kv_pool.get_key_buffer(layer.layer_id).view(-1, layer.qk_head_dim)
        v_flat = self.token_to_kv_pool.get_value_buffer(layer.layer_id).view(-1, layer.v_head_dim)
        out = q.new_empty((layer.tp_q_head_num, layer.v_head_dim))
        for h in range(heads):
            cells = adakv.head_cells(c, layer.layer_id, h, row, seq_len)
            qh = q[h * group : (h + 1) * group]  # [G, D]
            out[h * group : (h + 1) * group] = torch.nn.functional.scaled_dot_product_attention(
                qh.unsqueeze(1), k_flat[cells].unsqueeze(0).to(q.dtype),
                v_flat[cells].unsqueeze(0).to(q.dtype), scale=layer.scaling,
            ).squeeze(1)
        return out
