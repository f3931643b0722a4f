"""Seam: KV pool sizing (SGLang 0.5.17 ``model_executor/pool_configurator.py``).

An AROUND hook on ``create_memory_pool_configurator`` hands MixAttention models
:class:`MixKVPoolConfigurator`: buffers exist for producer layers only, the local (SWA)
pool is bounded by the window -
(one window + the eviction interval + 2 pages) x running requests + chunks in flight,
with the radix cache on (``sglang_seams/mixkv/radix.py`` keeps a request's pinned local KV
within one window) - and the rest of the budget goes to the global pool
(:func:`sglang_mixkv.kv_math.pool_split`).

Which layers get a buffer: SGLang builds the hybrid pool from two layer-id lists
(``configs/model_config.py:2029-2140``, ``get_hybrid_layer_ids``). Our folders list
producers only (``hybrid_layer_pattern``), but Gemma 4's branch lists every layer by
``layer_types``, the KV-shared tail included (``:2078-2092``), so SGLang allocates
buffers no layer writes. An AROUND hook answers with the plan's producers for every
planned model (:func:`producer_layer_ids`). Gemma 3n is no hybrid model in SGLang
(``model_config.py:1988-2027``, and ``arg_groups/overrides.py:848-861`` turns hybrid SWA
memory off for it): the hooks on ``is_hybrid_swa_model`` and
``ModelConfig._derive_hybrid_model`` make it one, so its sliding layers get the
window-bounded pool too.

``$MIXKV_STOCK_POOLS=1`` turns this seam off (and only it): SGLang's configurators and
layer lists, to measure the stock pool of the same model beside ours.

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
from sglang_mixkv import served
from sglang_mixkv.defaults import KV_BUDGET_ENV, POOL_REQUESTS_ENV, STOCK_POOLS_ENV

logger = logging.getLogger(__name__)

POOL_CONFIGURATOR = "sglang.srt.model_executor.pool_configurator.create_memory_pool_configurator"
HYBRID_LAYER_IDS = "sglang.srt.configs.model_config.get_hybrid_layer_ids"
IS_HYBRID_SWA = "sglang.srt.configs.model_config.is_hybrid_swa_model"
DERIVE_HYBRID = "sglang.srt.configs.model_config.ModelConfig._derive_hybrid_model"


def stock_pools() -> bool:
    """Whether ``$MIXKV_STOCK_POOLS`` turned this seam off."""
    import os

    return os.environ.get(STOCK_POOLS_ENV, "") not in ("", "0")


def _plan(hf_config) -> Optional[plans.Plan]:
    return None if stock_pools() else served.plan_for(hf_config)


def choose_pool_configurator(original, kvc):
    """AROUND hook on ``create_memory_pool_configurator``: ours for planned models.
    With stock pools, SGLang's configurator, given the same ``--kv-budget`` bytes (the
    cap on what it may size from) so the two can be compared."""
    if _plan(kvc.model_config.hf_config) is not None:
        return MixKVPoolConfigurator(kvc)
    configurator = original(kvc)
    cap = kv_budget_cap()
    if stock_pools() and cap is not None:
        sized = configurator.calculate_pool_sizes
        configurator.calculate_pool_sizes = lambda available, page: sized(min(available, cap), page)
    return configurator


def producer_layer_ids(original, architectures, hf_text_config):
    """AROUND hook on ``get_hybrid_layer_ids``: (SWA ids, full ids) = the plan's local
    and global producers; SGLang's answer for other models."""
    plan = _plan(hf_text_config)
    if plan is None:
        return original(architectures, hf_text_config)
    return plan.local_producers, plan.global_producers


def hybrid_if_planned(original, architectures, hf_text_config=None):
    """AROUND hook on ``is_hybrid_swa_model``: a planned model with local producers or
    consumers is hybrid (Gemma 3n included)."""
    plan = _plan(hf_text_config) if hf_text_config is not None else None
    if plan is not None and (plan.local_producers or plan.has_consumers):
        return True
    return original(architectures, hf_text_config)


def keep_hybrid_memory(original, self):
    """AROUND hook on ``ModelConfig._derive_hybrid_model``: SGLang's Gemma 3n override
    (``disable_hybrid_swa_memory``, a FIXME for Gemma 2's sliding layers) is lifted for
    Gemma 3n under our pools; every other model keeps its setting."""
    from sglang_mixkv import gemma

    if (self.disable_hybrid_swa_memory and gemma.family(self.hf_config) == "gemma3n"
            and _plan(self.hf_text_config) is not None):
        self.disable_hybrid_swa_memory = False
    return original(self)


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
        self.plan = served.plan_for(mc.hf_config)
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
        tp = get_parallel().attn_tp_size
        self.dims = kv_math.KVDims(
            kv_heads=mc.get_num_kv_heads(tp),
            head_dim=mc.head_dim,
            dtype_bytes=torch._utils._element_size(kvc.kv_cache_dtype),
            local_kv_heads=mc.get_swa_num_kv_heads(tp),
            local_head_dim=mc.swa_head_dim,
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


