"""A scheduler-shaped driver for SGLang 0.5.17's SWA radix cache over small CPU pools.

It calls the cache the way SGLang's scheduler does (admission: match + lock; chunked
prefill: ``cache_unfinished_req``; decode: one token per step and, every eviction
interval, ``free_swa_out_of_window_slots`` followed by our release hook; finish:
``cache_finished_req``), with SGLang's real allocator, pools and tree, so tests can
measure how many local (SWA) slots the tree keeps pinned per running request and
check that nothing leaks or is freed twice. No model runs: KV contents are never
read, only slots are counted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch


@dataclass
class SimStats:
    peak_pinned: int = 0  # max over steps of SWA slots in use and not evictable
    peak_bound: int = 0  # max over steps of the one-window bound for the running set
    over_bound_steps: int = 0
    steps: int = 0
    released: int = 0
    cached_tokens: list[int] = field(default_factory=list)


class Sim:
    """One cache over an SWA hybrid allocator: ``full`` global slots, ``swa`` local slots."""

    def __init__(self, cache_cls, *, window: int, interval: int, full: int = 4096,
                 swa: int = 4096, page: int = 1, max_reqs: int = 64, context: int = 2048):
        from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
        from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool
        from sglang.srt.mem_cache.unified_cache.components import ComponentType

        self.window, self.interval, self.page = window, interval, page  # window: SGLang's W-1
        kv = SWAKVPool(size=full, size_swa=swa, page_size=page, dtype=torch.float32, head_num=1,
                       head_dim=1, swa_attention_layer_ids=[1], full_attention_layer_ids=[0],
                       device="cpu")
        self.alloc = SWATokenToKVPoolAllocator(full, swa, page, torch.float32, "cpu", kv, False)
        self.r2t = ReqToTokenPool(max_reqs, context, "cpu", False)
        params = CacheInitParams(disable=False, req_to_token_pool=self.r2t,
                                 token_to_kv_pool_allocator=self.alloc, page_size=page,
                                 sliding_window_size=window,
                                 tree_components=(ComponentType.FULL, ComponentType.SWA))
        self.cache = cache_cls(params)
        self.running: list = []
        self.iteration = 0

    # ---- accounting -----------------------------------------------------------------
    def swa_used(self) -> int:
        return self.alloc.size_swa - self.alloc.swa_available_size()

    def pinned(self) -> int:
        """SWA slots neither free nor evictable from the tree."""
        return self.swa_used() - self.cache.swa_evictable_size()

    def per_request_bound(self) -> int:
        """One window + the eviction interval + 2 pages (``capacity.local_pool_cap``)."""
        return self.window + 1 + self.interval + 2 * self.page

    # ---- scheduler steps ------------------------------------------------------------
    def _alloc(self, req, n: int) -> torch.Tensor:
        """Slots for ``req``'s next ``n`` tokens (SGLang's paged allocator continues the
        request's last page), evicting from the tree first if short, as SGLang does."""
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        need = n + self.page
        if self.alloc.swa_available_size() < need or self.alloc.full_available_size() < need:
            self.cache.evict(EvictParams(
                num_tokens=max(0, need - self.alloc.full_available_size()),
                swa_num_tokens=max(0, need - self.alloc.swa_available_size())))
        if self.page == 1:
            out = self.alloc.alloc(n)
        else:
            pre, seq = req.kv_len, req.kv_len + n
            last = self.r2t.req_to_token[req.req_pool_idx, pre - 1].long() if pre else torch.tensor(-1)
            t = lambda x: torch.tensor([x], dtype=torch.int64)  # noqa: E731
            out = (self.alloc.alloc_decode(t(seq), t(seq), last.view(1)) if n == 1 and pre else
                   self.alloc.alloc_extend(t(pre), t(pre), t(seq), t(seq), last.view(1), n))
        assert out is not None, f"out of KV slots for {n} tokens: {self.cache.available_and_evictable_str()}"
        return out

    def admit(self, prompt: list[int], output_len: int, chunk: int) -> SimpleNamespace:
        from sglang.srt.managers.schedule_batch import ReqKvInfo
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
        from sglang.srt.mem_cache.radix_cache import RadixKey

        m = self.cache.match_prefix(MatchPrefixParams(key=RadixKey(prompt[:-1], None)))
        req = SimpleNamespace(
            origin_input_ids=list(prompt), output_ids=[], extra_key=None, priority=0,
            session=None, to_finish=None, finished_reason=None, req_pool_idx=None,
            kv_committed_len=0, inflight_middle_chunks=0, cache_protected_len=len(m.device_indices),
            prefix_indices=m.device_indices, last_node=m.last_device_node, swa_evict_floor=0,
            swa_prefix_lock_released=False, swa_host_hit_length=0, output_len=output_len,
            chunk=chunk, kv_len=len(m.device_indices), decode_idx=0,
        )
        self.stats.cached_tokens.append(req.kv_len)
        lock = self.cache.inc_lock_ref(req.last_node)
        req.swa_uuid_for_lock, req.skip_lock_node_ids = lock.swa_uuid_for_lock, {}
        self.r2t.alloc([req])
        req.kv = ReqKvInfo(kv_allocated_len=req.kv_len, swa_evicted_seqlen=0)
        self.r2t.write((req.req_pool_idx, slice(0, req.kv_len)), req.prefix_indices.to(torch.int32))
        req.get_fill_ids = lambda r=req: (r.origin_input_ids + r.output_ids)[: r.kv_len]
        self.running.append(req)
        return req

    def prefill_chunk(self, req) -> bool:
        """One chunk of ``req``'s prompt; True when its prompt is done."""
        n = min(req.chunk, len(req.origin_input_ids) - req.kv_len)
        loc = self._alloc(req, n)
        self.r2t.write((req.req_pool_idx, slice(req.kv_len, req.kv_len + n)), loc.to(torch.int32))
        req.kv_len += n
        req.kv.kv_allocated_len = req.kv_committed_len = req.kv_len
        done = req.kv_len == len(req.origin_input_ids)
        self.cache.cache_unfinished_req(req, chunked=not done)
        if done:
            req.output_ids.append(self.rng.randrange(3, 500))
        return done

    def decode_step(self, req) -> bool:
        """Maybe evict (as ``ScheduleBatch.maybe_evict_swa``), then one token; True when done."""
        from sglang.srt.mem_cache.common import free_swa_out_of_window_slots

        if self.iteration % self.interval == 0 and req.decode_idx >= 1:
            free_swa_out_of_window_slots(
                req, req.kv_len, sliding_window_size=self.window, page_size=self.page,
                req_to_token_pool=self.r2t, token_to_kv_pool_allocator=self.alloc)
            release = getattr(self.cache, "release_out_of_window", None)
            if release is not None:
                self.stats.released += release(req, req.kv_len)
        loc = self._alloc(req, 1)
        self.r2t.write((req.req_pool_idx, slice(req.kv_len, req.kv_len + 1)), loc.to(torch.int32))
        req.kv_len += 1
        req.kv.kv_allocated_len = req.kv_committed_len = req.kv_len
        req.decode_idx += 1
        if len(req.output_ids) >= req.output_len:
            return True
        req.output_ids.append(self.rng.randrange(3, 500))
        return False

    def finish(self, req) -> None:
        self.cache.cache_finished_req(req, kv_len_to_handle=req.kv_len)
        self.r2t.free(req)
        req.kv = None
        self.running.remove(req)

    # ---- a whole workload -------------------------------------------------------------
    def retract(self, req) -> None:
        """SGLang's retraction / abort path (``schedule_batch.py:1834-1857``): release
        without inserting."""
        self.cache.cache_finished_req(req, is_insert=False, kv_len_to_handle=req.kv_len)
        self.r2t.free(req)
        req.kv = None
        self.running.remove(req)

    def run(self, seed: int, n_requests: int, max_running: int, prefixes: int = 3,
            prefix_len: int = 40, chunk: int = 16, retract_p: float = 0.0) -> SimStats:
        """Requests sharing one of ``prefixes`` prefixes, random suffix and output lengths,
        admitted as slots free up, one prefill chunk per step, decode of the rest; a
        decoding request is retracted (and queued again) with probability ``retract_p``
        per step."""
        self.rng = rng = random.Random(seed)
        self.stats = st = SimStats()
        bases = [[rng.randrange(3, 500) for _ in range(prefix_len)] for _ in range(prefixes)]
        todo = []
        for _ in range(n_requests):
            base = rng.choice(bases)[: rng.randrange(prefix_len // 2, prefix_len + 1)]
            suffix = [rng.randrange(3, 500) for _ in range(rng.randrange(1, 3 * self.window))]
            todo.append((base + suffix, rng.randrange(1, 4 * self.window)))
        prefilling = []
        while todo or self.running:
            if todo and len(self.running) < max_running:
                prefilling.append(self.admit(*todo.pop(), chunk=chunk))
            if prefilling and self.prefill_chunk(prefilling[0]):
                prefilling.pop(0)
            for req in [r for r in self.running if r not in prefilling]:
                if rng.random() < retract_p:
                    self.retract(req)
                    todo.insert(0, (req.origin_input_ids, req.output_len))
                elif self.decode_step(req):
                    self.finish(req)
            self.iteration += 1
            st.steps += 1
            st.peak_pinned = max(st.peak_pinned, self.pinned())
            bound = self.per_request_bound() * len(self.running) + chunk
            st.peak_bound = max(st.peak_bound, bound)
            st.over_bound_steps += self.pinned() > bound
            self.cache.sanity_check()
        return st

    def drain(self) -> None:
        """Evict the whole tree: every slot must come back exactly once."""
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        self.cache.evict(EvictParams(num_tokens=10**9, swa_num_tokens=10**9))
        assert self.cache.full_protected_size() == 0 and self.cache.swa_protected_size() == 0
        assert self.alloc.full_available_size() == self.alloc.size_full
        assert self.alloc.swa_available_size() == self.alloc.size_swa
