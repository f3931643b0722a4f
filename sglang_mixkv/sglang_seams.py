"""Every place sglang-mixkv reaches into SGLang 0.5.17. An SGLang upgrade touches this file.

SGLang runs :func:`register` in the launcher and in every scheduler process (entry
point ``mixkv`` in group ``sglang.srt.plugins``, see ``pyproject.toml``). It:

1. registers :class:`~sglang_mixkv.model.MixAttentionForCausalLM` in SGLang's model
   registry;
2. sizes the KV pools of MixAttention models with :class:`MixKVPoolConfigurator`:
   buffers exist for producer layers only (SGLang builds them from
   ``hybrid_layer_pattern``), the local (SWA) pool is bounded by the window - window x
   running requests + chunks in flight, with the radix cache on - and the rest of the
   budget goes to the global pool (:func:`sglang_mixkv.capacity.pool_split`);
3. replaces the ``torch_native`` attention backend with
   :class:`WindowedTorchNativeBackend`, which reads SWA layers through the
   full->SWA index map (stock 0.5.17 reads them with full-pool indices) and gathers
   only the window for local layers;
4. on a machine without CUDA, keeps SGLang's RotaryEmbedding on its plain-torch path
   (stock 0.5.17 imports ``vllm._custom_ops`` there), so stock models serve on CPU too.

Everything except (1)-(2) for our architecture is a no-op or a bug fix for other models.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from sglang_mixkv import capacity
from sglang_mixkv import plan as plans
from sglang_mixkv.sizes import ARCHITECTURE

logger = logging.getLogger(__name__)

_POOL_CONFIGURATOR = "sglang.srt.model_executor.pool_configurator.create_memory_pool_configurator"


def register() -> None:
    """Plugin entry point. Idempotent."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.models.registry import ModelRegistry
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sglang_mixkv.model import MixAttentionForCausalLM

    ModelRegistry.models[ARCHITECTURE] = MixAttentionForCausalLM
    ATTENTION_BACKENDS["torch_native"] = lambda runner: WindowedTorchNativeBackend(runner)
    HookRegistry.register(_POOL_CONFIGURATOR, _choose_pool_configurator, HookType.AROUND)
    if not torch.cuda.is_available():
        import sglang.srt.layers.rotary_embedding.base as rope_base

        rope_base._is_cpu = True  # plain-torch rotary instead of vllm's kernel


# ---- pool sizing ------------------------------------------------------------------
def _is_mixkv(model_config) -> bool:
    return getattr(model_config.hf_config, "mixkv_plan", None) is not None


def _choose_pool_configurator(original, kvc):
    if _is_mixkv(kvc.model_config):
        return MixKVPoolConfigurator(kvc)
    return original(kvc)


def kv_budget_cap() -> Optional[int]:
    """Bytes set by ``serve --kv-budget`` (passed in the environment), if any."""
    import os

    from sglang_mixkv.serve import KV_BUDGET_ENV

    value = os.environ.get(KV_BUDGET_ENV)
    return int(value) if value else None


def _pool_configurator_base():
    from sglang.srt.model_executor.pool_configurator import MemoryPoolConfigurator

    return MemoryPoolConfigurator


class MixKVPoolConfigurator(_pool_configurator_base()):
    """Global pool gets the budget left after a window-bounded local pool.

    Serves every MixAttention model, hybrid or not (a plan without consumers or local
    layers is a plain model: one pool, as SGLang's default configurator would size it),
    so ``--kv-budget`` applies to all plans alike. A plan with both kinds needs
    ``--max-running-requests``: the local pool is sized for exactly that many requests
    (SGLang's admission control keeps within it, evicting out-of-window and cached
    local KV as requests advance)."""

    def __init__(self, kvc):
        from sglang.srt.environ import envs
        from sglang.srt.runtime_context import get_parallel

        mc, sa = kvc.model_config, kvc.server_args
        self.kv_cache_dtype_str = kvc.kv_cache_dtype_str
        self.plan = plans.from_config(mc.hf_config)
        if mc.head_dim != mc.v_head_dim:
            raise ValueError("MixAttention pools assume equal K and V head dims")
        if sa.max_running_requests is None and self.plan.local_producers and self.plan.global_producers:
            raise ValueError(
                "MixAttention serving needs --max-running-requests: the local (sliding-window) "
                "KV pool is sized for that many requests (python -m sglang_mixkv.serve sets it)"
            )
        if self.plan.local_producers and not self.plan.global_producers and not sa.disable_radix_cache:
            raise ValueError(
                "a plan without global layers needs --disable-radix-cache: SGLang 0.5.17's "
                "all-SWA radix cache (PureSWARadixCache) inserts KV slots it already freed "
                "during decode and its idle leak check then stops the server"
            )
        if kvc.spec_algorithm is not None and not kvc.spec_algorithm.is_none():
            raise ValueError("speculative decoding is not supported with MixAttention pools")
        self.dims = capacity.KVDims(
            kv_heads=mc.get_num_kv_heads(get_parallel().attn_tp_size),
            head_dim=mc.head_dim,
            dtype_bytes=torch._utils._element_size(kvc.kv_cache_dtype),
        )
        chunk = sa.chunked_prefill_size
        self.sizing = dict(
            window=(kvc.sliding_window_size or 0) + 1,
            max_running=(sa.max_running_requests or 0) // kvc.ps.attn_dp_size,
            chunk=chunk if chunk and chunk > 0 else mc.context_len,
            eviction_interval=max(1, envs.SGLANG_SWA_EVICTION_INTERVAL.get()),
            chunks_in_flight=1 if sa.disable_overlap_schedule else 2,
            radix_cache=not sa.disable_radix_cache,
        )

    def calculate_pool_sizes(self, available_bytes: int, page_size: int):
        cap = kv_budget_cap()
        if cap is not None:
            available_bytes = min(available_bytes, cap)
        split = capacity.pool_split(available_bytes, self.plan, self.dims, page=page_size,
                                    **self.sizing)
        logger.info(
            "MixKV pools for plan %s: global %d tokens (%.2f GiB, %d layers), "
            "local %d tokens (%.2f GiB, %d layers), budget %.2f GiB",
            self.plan, split.global_tokens, split.global_bytes / 2**30,
            len(self.plan.global_producers), split.local_tokens, split.local_bytes / 2**30,
            len(self.plan.local_producers), available_bytes / 2**30,
        )
        return self._config(split.global_tokens, split.local_tokens)

    def calculate_pool_sizes_from_max_tokens(self, max_total_num_tokens: int, page_size: int):
        """``--max-total-tokens`` caps the global pool; the local pool keeps its cap."""
        m = max_total_num_tokens // page_size * page_size
        if not self.plan.global_producers:
            return self._config(0, m)
        if not self.plan.local_producers:
            return self._config(m, m)
        return self._config(m, capacity.local_pool_cap(page=page_size, **self.sizing))

    @staticmethod
    def _config(global_tokens: int, local_tokens: int):
        from sglang.srt.model_executor.pool_configurator import MemoryPoolConfig

        return MemoryPoolConfig(
            max_total_num_tokens=global_tokens or local_tokens,
            full_max_total_num_tokens=global_tokens,
            swa_max_total_num_tokens=local_tokens,
        )


# ---- torch_native attention: window-aware, SWA-pool-aware ------------------------------------
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
        for i, (req, seq_len) in enumerate(
            zip(forward_batch.req_pool_indices.tolist(), forward_batch.seq_lens.tolist())
        ):
            o[i : i + 1] = self._attend(q[i : i + 1], layer, req, seq_len - 1, seq_len)
        return o.view(-1, layer.tp_q_head_num * layer.v_head_dim)
