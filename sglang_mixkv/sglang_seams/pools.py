"""Seam: KV pool sizing (SGLang 0.5.17 ``model_executor/pool_configurator.py``).

An AROUND hook on ``create_memory_pool_configurator`` hands MixAttention models
:class:`MixKVPoolConfigurator`: buffers exist for producer layers only (SGLang builds
them from ``hybrid_layer_pattern``), the local (SWA) pool is bounded by the window -
window x running requests + chunks in flight, with the radix cache on - and the rest of
the budget goes to the global pool (:func:`sglang_mixkv.capacity.pool_split`).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from sglang_mixkv import capacity
from sglang_mixkv import plan as plans

logger = logging.getLogger(__name__)

POOL_CONFIGURATOR = "sglang.srt.model_executor.pool_configurator.create_memory_pool_configurator"


def _is_mixkv(model_config) -> bool:
    return getattr(model_config.hf_config, "mixkv_plan", None) is not None


def choose_pool_configurator(original, kvc):
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


