"""Seam: KV pool sizing (SGLang 0.5.17 ``model_executor/pool_configurator.py``).

An AROUND hook on ``create_memory_pool_configurator`` hands MixAttention models
:class:`MixKVPoolConfigurator`: buffers exist for producer layers only (SGLang builds
them from ``hybrid_layer_pattern``), the local (SWA) pool is bounded by the window -
(one window + the eviction interval + 2 pages) x running requests + chunks in flight,
with the radix cache on (``sglang_seams/mixkv/radix.py`` keeps a request's pinned local KV
within one window) - and the rest of the budget goes to the global pool
(:func:`sglang_mixkv.kv_math.pool_split`).

Plans without global layers, with the radix cache on, get a global pool of zero bytes
(no global layer has a buffer) whose slots are token ids: SGLang then builds its hybrid FULL+SWA allocator
and radix tree (and our window-releasing cache) instead of ``PureSWARadixCache``,
which frees decoded KV twice (``pure_swa_radix_cache.py:103-131``) and locks whole
prompts (``radix_cache.py:592-605``).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from sglang_mixkv import kv_math
from sglang_mixkv import plan as plans
from sglang_mixkv.defaults import KV_BUDGET_ENV, POOL_REQUESTS_ENV

logger = logging.getLogger(__name__)

POOL_CONFIGURATOR = "sglang.srt.model_executor.pool_configurator.create_memory_pool_configurator"


def choose_pool_configurator(original, kvc):
    """AROUND hook on ``create_memory_pool_configurator``: ours for planned models."""
    if plans.is_mixkv(kvc.model_config.hf_config):
        return MixKVPoolConfigurator(kvc)
    return original(kvc)


def pool_requests(max_running_requests: Optional[int]) -> Optional[int]:
    """Running requests the local pool is sized for: ``$MIXKV_POOL_MAX_RUNNING`` if
    set, else SGLang's ``--max-running-requests``."""
    import os

    value = os.environ.get(POOL_REQUESTS_ENV)
    return int(value) if value else max_running_requests


def kv_budget_cap() -> Optional[int]:
    """Bytes set by ``serve --kv-budget`` (passed in the environment), if any."""
    import os

    value = os.environ.get(KV_BUDGET_ENV)
    return int(value) if value else None


def _pool_configurator_base():
    from sglang.srt.model_executor.pool_configurator import MemoryPoolConfigurator

    return MemoryPoolConfigurator


class MixKVPoolConfigurator(_pool_configurator_base()):
    """Global pool gets the budget left after a window-bounded local pool.

    Serves every MixAttention model, hybrid or not (a plan without consumers or local
    layers is a plain model: one pool, as SGLang's default configurator would size it),
    so ``--kv-budget`` applies to all plans alike. A plan with both kinds, or an
    all-local plan with the radix cache, needs ``--max-running-requests`` (or
    ``$MIXKV_POOL_MAX_RUNNING``): the local pool, or the token ids, are sized for that
    many requests (SGLang's admission control keeps within it, evicting out-of-window
    and cached local KV as requests advance)."""

    def __init__(self, kvc):
        from sglang.srt.environ import envs
        from sglang.srt.runtime_context import get_parallel

        mc, sa = kvc.model_config, kvc.server_args
        self.kv_cache_dtype_str = kvc.kv_cache_dtype_str
        self.plan = plans.plan_for(mc.hf_config)
        if mc.head_dim != mc.v_head_dim:
            raise ValueError("MixAttention pools assume equal K and V head dims")
        running = pool_requests(sa.max_running_requests)
        #: an all-local plan with the radix cache: a zero-byte global pool of token ids
        self.id_pool = bool(self.plan.local_producers and not self.plan.global_producers
                            and not sa.disable_radix_cache)
        if running is None and self.plan.local_producers and (self.plan.global_producers or self.id_pool):
            raise ValueError(
                "MixAttention serving needs --max-running-requests: the local (sliding-window) "
                "KV pool is sized for that many requests (python -m sglang_mixkv.serve sets it)"
            )
        if kvc.spec_algorithm is not None and not kvc.spec_algorithm.is_none():
            raise ValueError("speculative decoding is not supported with MixAttention pools")
        self.dims = kv_math.KVDims(
            kv_heads=mc.get_num_kv_heads(get_parallel().attn_tp_size),
            head_dim=mc.head_dim,
            dtype_bytes=torch._utils._element_size(kvc.kv_cache_dtype),
        )
        chunk = sa.chunked_prefill_size
        self.sizing = dict(
            window=(kvc.sliding_window_size or 0) + 1,
            max_running=(running or 0) // kvc.ps.attn_dp_size,
            chunk=chunk if chunk and chunk > 0 else mc.context_len,
            eviction_interval=max(1, envs.SGLANG_SWA_EVICTION_INTERVAL.get()),
            chunks_in_flight=1 if sa.disable_overlap_schedule else 2,
        )
        # Token ids of the zero-byte global pool: every running request's whole context
        # (SGLang frees FULL slots only when a request ends) plus one context of cached
        # prefixes (the tree evicts its FULL-only nodes when the ids run short).
        self.ids = ((sa.max_running_requests or running or 0) + 1) * mc.context_len

    def calculate_pool_sizes(self, available_bytes: int, page_size: int):
        cap = kv_budget_cap()
        if cap is not None:
            available_bytes = min(available_bytes, cap)
        split = kv_math.pool_split(available_bytes, self.plan, self.dims, page=page_size,
                                    **self.sizing)
        logger.info(
            "MixKV pools for plan %s: global %d tokens (%.2f GiB, %d layers), "
            "local %d tokens (%.2f GiB, %d layers), budget %.2f GiB",
            self.plan, split.global_tokens, split.global_bytes / 2**30,
            len(self.plan.global_producers), split.local_tokens, split.local_bytes / 2**30,
            len(self.plan.local_producers), available_bytes / 2**30,
        )
        return self._config(split.global_tokens, split.local_tokens, page_size)

    def calculate_pool_sizes_from_max_tokens(self, max_total_num_tokens: int, page_size: int):
        """``--max-total-tokens`` caps the global pool; the local pool keeps its cap."""
        m = max_total_num_tokens // page_size * page_size
        if not self.plan.global_producers:
            return self._config(0, m, page_size)
        if not self.plan.local_producers:
            return self._config(m, m, page_size)
        return self._config(m, kv_math.local_pool_cap(page=page_size, **self.sizing), page_size)

    def _config(self, global_tokens: int, local_tokens: int, page: int):
        """SGLang's pool config; an all-local plan with the radix cache gets its zero-byte
        global pool of token ids here (``self.ids``, page-aligned)."""
        from sglang.srt.model_executor.pool_configurator import MemoryPoolConfig

        if not global_tokens and self.id_pool:
            global_tokens = -(-max(self.ids, local_tokens) // page) * page
        return MemoryPoolConfig(
            max_total_num_tokens=global_tokens or local_tokens,
            full_max_total_num_tokens=global_tokens,
            swa_max_total_num_tokens=local_tokens,
        )


