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
from dataclasses import dataclass
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


def registry_bytes_per_token() -> int:
    """Bytes per token of the token-axis buffers SGLang's ``EagerRunner`` allocates
    right after the pools (``model_executor/runner/eager_runner.py:110-131``): its
    registry's token axis is ``max(max_total_num_tokens, prefill buffer)`` long
    (``:110-111``), one slot each for ``input_ids``, ``positions``, ``out_cache_loc``
    and ``mrope_positions`` (``model_executor/cuda_graph_buffer_registry.py:561-600``).
    Measured on SGLang's own registry, built on the ``meta`` device (no memory), so an
    upgrade that adds a slot is counted."""
    from sglang.srt.model_executor.cuda_graph_buffer_registry import build_decode_registry

    tokens = 1 << 10
    reg = build_decode_registry(device=torch.device("meta"), max_bs=1, max_num_token=tokens,
                                seq_len_fill_value=0, cache_loc_dtype=torch.int64,
                                register_global_num_tokens=False, share_pool=False)
    slots = [reg.get_slot(name) for name in reg.slot_names()]
    nbytes = sum(s.buffer.nbytes for s in slots if s.axis == "tokens" and s.buffer is not None
                 and s.buffer.device.type == "meta")
    return -(-nbytes // tokens)


#: Bytes per slot of SGLang 0.5.17's allocators, held beside the pools: an int64 free
#: list per pool (``mem_cache/allocator/token.py:42-46``; ``free`` concatenates a new
#: list while the old one is alive, ``:66-76``: twice that at its peak) and, for the
#: hybrid pool, the int64 full->SWA index map (``mem_cache/allocator/swa.py:82-91``).
FREE_LIST_PEAK_BYTES = 2 * 8
SWA_MAP_BYTES = 8


def slot_overhead() -> kv_math.SlotOverhead:
    """What SGLang allocates per token slot outside the KV buffers, after our pools:
    the eager registry (per slot of the larger pool, SGLang's ``max_total_num_tokens``)
    and the allocators' lists (per slot of each pool). The pool configurator budgets
    these with the KV (``kv_math.pool_split``), since SGLang's own reserve
    (``server_args.py:4740-4785``: 512 MiB + 1.5 MiB per chunk token + graphs, at
    least 10 GiB on a >60 GiB GPU) is a constant: a ``tiny`` model's 512-byte tokens
    fill a 140 GiB GPU with 270M slots, whose buffers (~20 GiB) then outgrow it."""
    return kv_math.SlotOverhead(per_token=registry_bytes_per_token(),
                                per_global=FREE_LIST_PEAK_BYTES + SWA_MAP_BYTES,
                                per_local=FREE_LIST_PEAK_BYTES)


def graph_buffer_bytes(server_args, model_config) -> int:
    """Bytes of the decode CUDA-graph buffers that grow with what ``serve`` chose, held
    beside the pools: the triton backend's split-KV scratch, ``max_bs x heads x splits
    x (v_dim + 1)`` float32 (``layers/attention/triton_backend.py:962-991``; ``serve``
    raises the split cap 8 -> up to 256, ``launch.decode_kv_splits``), and Ada-KV's
    per-head index lists, ``max_bs x KV heads x context`` int64
    (``mixkv/triton.py``). SGLang's own reserve assumes the stock 8 splits. Zero on a
    CPU and without decode graphs."""
    from sglang.srt.model_executor.cuda_graph_config import Backend
    from sglang.srt.runtime_context import get_parallel

    sa, mc = server_args, model_config
    decode = sa.cuda_graph_config.decode
    if sa.device != "cuda" or decode.backend == Backend.DISABLED or not decode.max_bs:
        return 0
    tp = get_parallel().attn_tp_size
    total = 0
    if (sa.decode_attention_backend or sa.attention_backend) == "triton":
        heads = mc.get_num_attention_heads(tp)
        total += decode.max_bs * heads * sa.triton_attention_num_kv_splits * (mc.v_head_dim + 1) * 4
    from sglang_mixkv.adakv import config_for

    if config_for(mc.hf_config) is not None:
        total += decode.max_bs * mc.get_num_kv_heads(tp) * (mc.context_len * 8 + 12)
    return total


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
        #: bytes allocated after the pools that do not scale with their slots
        self.fixed_bytes = graph_buffer_bytes(sa, mc)

    def calculate_pool_sizes(self, available_bytes: int, page_size: int):
        """Pools for ``available_bytes`` (SGLang's free memory after the weights, minus
        its reserve): KV plus :func:`slot_overhead` fit in it; ``--kv-budget`` caps the
        KV bytes alone."""
        overhead = slot_overhead()
        room = available_bytes - self.fixed_bytes
        if self.id_pool:  # the zero-byte global pool's token ids cost their overhead too
            room -= self.ids * (overhead.per_token + overhead.per_global)
            overhead = kv_math.SlotOverhead(per_local=overhead.per_local)
        split = kv_math.pool_split(room, self.plan, self.dims, page=page_size,
                                   overhead=overhead, **self.sizing)
        cap = kv_budget_cap()
        if cap is not None and cap < split.global_bytes + split.local_bytes:
            capped = kv_math.pool_split(cap, self.plan, self.dims, page=page_size, **self.sizing)
            split = min(split, capped, key=lambda x: x.global_bytes + x.local_bytes)
        logger.info(
            "MixKV pools for plan %s: global %d tokens (%.2f GiB, %d layers), "
            "local %d tokens (%.2f GiB, %d layers), available %.2f GiB, KV cap %s, "
            "%d B per slot outside the KV, %.2f GiB of graph buffers",
            self.plan, split.global_tokens, split.global_bytes / 2**30,
            len(self.plan.global_producers), split.local_tokens, split.local_bytes / 2**30,
            len(self.plan.local_producers), available_bytes / 2**30,
            "none" if cap is None else f"{cap / 2**30:.2f} GiB",
            overhead.per_token + overhead.per_global, self.fixed_bytes / 2**30,
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




# ---- planning without the GPU -------------------------------------------------------------


@dataclass(frozen=True)
class PoolPlan:
    """What a server of these flags would allocate on a GPU: SGLang's static memory
    fraction for it, the bytes its pool configurator is offered (free memory less the
    weights and SGLang's reserve, taking torch's whole capacity as free before the
    weights: an upper bound by the CUDA context, ~0.5 GiB), our pools in it, and what
    SGLang and we allocate after them (:func:`slot_overhead`, :func:`graph_buffer_bytes`)."""

    mem_fraction_static: float
    reserve_bytes: int
    available_bytes: int
    global_tokens: int
    local_tokens: int
    kv_bytes: int
    after_pool_bytes: int
    #: the plan has local producers (else the local pool holds index slots, no KV)
    local_kv: bool = True

    def describe(self) -> str:
        gib = 2**30
        local = f"{self.local_tokens:,}" + ("" if self.local_kv else " index slots, no KV")
        return (f"SGLang's static fraction {self.mem_fraction_static} (reserve "
                f"{self.reserve_bytes / gib:.2f} GiB); offered {self.available_bytes / gib:.2f} "
                f"GiB: KV pools {self.kv_bytes / gib:.2f} GiB (global {self.global_tokens:,} "
                f"tokens, local {local}), then {self.after_pool_bytes / gib:.2f} "
                f"GiB of per-slot and graph buffers")


def plan_pools(model_dir, flags: list[str], gpu, weight_bytes: int,
               env: dict[str, str] | None = None) -> PoolPlan:
    """Run SGLang's own memory settings (``server_args.py:4607-4800``) for ``flags`` as
    on ``gpu`` (a ``device.GpuFacts``), then our configurator on what that leaves
    (``mem_cache/kv_cache_configurator.py:1620-1645``: free memory before the weights
    times ``1 - mem_fraction_static`` is held back). ``env``: the server's extra
    environment (``serve``'s), applied while planning."""
    import argparse
    import os
    from types import SimpleNamespace

    import sglang.srt.server_args as sglang_args
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.runtime_context import get_parallel

    saved_env = {k: os.environ.get(k) for k in (env or {})}
    saved_capacity = sglang_args.get_device_memory_capacity
    os.environ.update(env or {})
    sglang_args.get_device_memory_capacity = lambda *a, **k: gpu.memory_mib
    try:
        parser = argparse.ArgumentParser()
        sglang_args.ServerArgs.add_cli_args(parser)
        sa = sglang_args.ServerArgs.from_cli_args(parser.parse_args(
            ["--model-path", str(model_dir), *flags, "--device", "cuda"]))
        mc = ModelConfig.from_server_args(sa)
        plan = served.plan_for(mc.hf_config)
        dtype = mc.dtype if sa.kv_cache_dtype == "auto" else torch.float8_e4m3fn
        kvc = SimpleNamespace(
            model_config=mc, server_args=sa, kv_cache_dtype=dtype, kv_cache_dtype_str=str(dtype),
            spec_algorithm=None, ps=SimpleNamespace(attn_dp_size=1),
            sliding_window_size=(int(mc.hf_config.sliding_window) - 1
                                 if plan is not None and plan.local_producers else None))
        free = gpu.torch_mib << 20
        reserve = int(free * (1 - sa.mem_fraction_static))
        available = free - weight_bytes - reserve
        ranks = dict(attn_tp_size=sa.tp_size, tp_size=sa.tp_size, attn_dcp_size=1,
                     attn_dcp_rank=0, dcp_size=1, dcp_rank=0)
        with get_parallel().override(**ranks):
            conf = MixKVPoolConfigurator(kvc)
            cfg = conf.calculate_pool_sizes(available, sa.page_size or 1)
    finally:
        sglang_args.get_device_memory_capacity = saved_capacity
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    g, s = cfg.full_max_total_num_tokens or 0, cfg.swa_max_total_num_tokens or 0
    pt = kv_math.bytes_per_token(conf.plan, conf.dims)
    return PoolPlan(sa.mem_fraction_static, reserve, available, g, s,
                    g * pt.global_bytes + s * pt.local_bytes,
                    slot_overhead().bytes(g, s) + conf.fixed_bytes,
                    local_kv=bool(conf.plan.local_producers))
