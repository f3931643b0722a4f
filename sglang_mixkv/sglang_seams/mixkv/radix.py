"""Seam: one window of local KV per running request in SGLang 0.5.17's SWA radix tree.

Paths are inside ``sglang/srt/`` of sglang 0.5.17. A MixAttention model served with the
radix cache gets SGLang's ``UnifiedRadixCache`` with a FULL and an SWA component
(``mem_cache/registry.py:163-193``). Stock, a running request keeps the last window of
its cached prompt locked in the tree (``swa_component.py:581-635``) until it finishes,
while ``free_swa_out_of_window_slots`` (``mem_cache/common.py:47-95``) frees only the
request's *own* decoded tokens: a request pins two windows of local KV. SGLang's only
early release (``SGLANG_OPT_SWA_RELEASE_LEAF_LOCK_AFTER_WINDOW``,
``schedule_batch.py:3230-3247``) drops the whole lock after a full window of decode.

:class:`WindowRadixCache` releases the lock progressively instead, so a request pins
one window (+ the eviction interval + pages) at every step:

- **Lock one window, not whole nodes.** Before SGLang locks a path
  (:meth:`WindowRadixCache.inc_lock_ref`) the node where its walk will stop is split
  so the lock covers exactly ``ceil_page(sliding_window_size)`` live SWA tokens
  (a window starting inside a long shared node used to pin the whole node).
- **Release what left the window.** After each ``ScheduleBatch._evict_swa`` (an
  AROUND hook, :func:`evict_swa_then_release`) the request gives up its SWA lock on
  tree positions below the threshold SGLang used to free its own tokens
  (``common.py:78-85``): :meth:`WindowRadixCache.release_out_of_window`. Those
  positions stay cached (FULL keeps them; SWA becomes evictable, which SGLang's
  admission counts as free, ``schedule_policy.py:593-598``), so a later request can
  still reuse them until SGLang's SWA eviction tombstones them; then its match ends
  earlier and it recomputes the rest (``swa_component.py:197-222``).

The lock protocol stays SGLang's: a request's SWA lock is the path from
``req.last_node`` up to the node stamped with ``req.swa_uuid_for_lock``, skipping
``req.skip_lock_node_ids`` (``swa_component.py:637-681``). A release moves that stamp
down to the lowest kept node and decrements what is above it, so SGLang's own
``_dec_req_lock`` (``unified_radix_cache.py:562``) later releases exactly the rest;
a request that released everything sets ``req.swa_prefix_lock_released`` as SGLang's
all-at-once release does, and ``cache_finished_req`` then skips SWA
(``unified_radix_cache.py:667``). Node splits copy lock counts to the new parent and
move the stamp up with it (``swa_component.py:421-465``), so every other request's
lock path stays intact.

Invariants: all tree mutations here run on the scheduler thread (the only caller of
the cache); the SWA protected/evictable counters change exactly as SGLang's own
release does (``swa_component.py:665-674``), so its leak checks hold. Depends on the
Python tree core's internals (``_split_node``, node objects, size counters):
:func:`check_supported` refuses the configurations where they differ.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

from sglang_mixkv import served

if TYPE_CHECKING:
    from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
    from sglang.srt.mem_cache.registry import TreeCacheBuildContext

logger = logging.getLogger(__name__)

RADIX_FACTORY = "sglang.srt.mem_cache.registry.default_radix_cache_factory"
EVICT_SWA = "sglang.srt.managers.schedule_batch.ScheduleBatch._evict_swa"


def _unified_radix_cache_base():
    from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

    return UnifiedRadixCache


def out_of_window_threshold(pre_len: int, sliding_window_size: int, page_size: int) -> int:
    """Positions below this are outside the window of every future query of a request
    whose KV reaches ``pre_len``: the radix-cache threshold of ``common.py:78-85``."""
    threshold = pre_len - max(sliding_window_size, page_size)
    return threshold // page_size * page_size


class WindowRadixCache(_unified_radix_cache_base()):
    """SGLang's FULL+SWA ``UnifiedRadixCache`` whose SWA locks cover one window and
    are released progressively as a request decodes (see the module docstring)."""

    def __init__(self, params) -> None:
        from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

        super().__init__(params)
        self._swa = ComponentType.SWA

    # ---- one window per lock ---------------------------------------------------
    def inc_lock_ref(self, node_id, skip_lock_components: Sequence = ()):
        if (not self.disable and isinstance(node_id, int)
                and self._swa not in skip_lock_components):
            self._split_at_window_start(self.tree_core.node_by_id(node_id))
        return super().inc_lock_ref(node_id, skip_lock_components)

    def _split_at_window_start(self, node) -> None:
        """Split the node where SGLang's lock walk from ``node`` stops so the walk
        covers ``ceil_page(sliding_window_size)`` live SWA tokens, not the whole node.

        Mirrors ``SWAComponent.acquire_component_lock`` (``swa_component.py:602-629``):
        tombstones are skipped, live lengths accumulate until they reach the window."""
        core, page = self.tree_core, self.page_size
        need = -(-self.sliding_window_size // page) * page
        covered, cur = 0, node
        while cur is not core.root_node and covered < need:
            value = cur.component_data[self._swa].value
            if value is not None:
                covered += len(value)
                if covered >= need:
                    cut = (covered - need) // page * page  # tokens above the window
                    if 0 < cut < len(cur.key):
                        self._split(cur, cut)
                    return
            cur = cur.parent

    def _split(self, node, split_len: int):
        """``_split_node`` (``unified_tree_core.py:1010``): ``node`` keeps the lower part,
        the returned new parent holds the first ``split_len`` tokens."""
        new_parent, action = self.tree_core._split_node(node.key, node, split_len)
        if action is not None:  # a HiCache write-through relocation; HiCache is refused
            self._apply_cache_actions([action])
        return new_parent

    # ---- progressive release -----------------------------------------------------
    def release_out_of_window(self, req: Req, pre_len: int) -> int:
        """Drop ``req``'s SWA lock on tree positions below the out-of-window threshold
        for ``pre_len``; return the tokens it stopped protecting.

        Walks ``req``'s lock path from ``req.last_node`` up to its stamp; a node that
        straddles the threshold is split there. Nodes below the threshold lose this
        request's lock (they become evictable once no other request locks them); the
        lowest kept node gets the stamp. Frees nothing: SGLang's SWA eviction does,
        when it needs room."""
        if (self.disable or req.swa_prefix_lock_released or req.last_node is None
                or not isinstance(req.last_node, int)):
            return 0
        core, ct = self.tree_core, self._swa
        threshold = out_of_window_threshold(pre_len, self.sliding_window_size, self.page_size)
        node = core.node_by_id(req.last_node)
        if threshold <= 0 or node is core.root_node:
            return 0
        end = self._depth(node)
        uuid = req.swa_uuid_for_lock
        skip = req.skip_lock_node_ids.get(ct, ()) if req.skip_lock_node_ids else ()
        kept_top, released, cur = None, 0, node
        while cur is not core.root_node:
            start = end - len(cur.key)
            cd = cur.component_data[ct]
            if cur.id not in skip and cd.lock_ref > 0:
                if start >= threshold:
                    kept_top = cur
                else:
                    if end > threshold:  # straddles: keep [threshold, end), release the rest
                        kept_top = cur
                        cur = self._split(cur, threshold - start)  # now [start, threshold)
                        cd = cur.component_data[ct]
                    released += self._unlock(cur)
            if uuid is not None and cd.metadata.get("uuid") == uuid:
                break  # the top of this request's lock
            end, cur = start, cur.parent
        if kept_top is None:
            req.swa_prefix_lock_released = True
        else:
            meta = kept_top.component_data[ct].metadata
            if meta.get("uuid") is None:
                from sglang.srt.mem_cache.unified_cache.components.tree_component import (
                    next_component_uuid,
                )

                meta["uuid"] = next_component_uuid()
            req.swa_uuid_for_lock = meta["uuid"]
        return released

    def _unlock(self, node) -> int:
        """One request's SWA lock off ``node``, with SGLang's size bookkeeping
        (``swa_component.py:661-678``); returns the tokens that became evictable."""
        core, cd = self.tree_core, node.component_data[self._swa]
        freed = 0
        if cd.lock_ref == 1:
            freed = len(cd.value)
            core.component_evictable_size_[self._swa] += freed
            core.component_protected_size_[self._swa] -= freed
        cd.lock_ref -= 1
        core._update_evictable_leaf_sets(node)
        return freed

    def _depth(self, node) -> int:
        """Tokens from the root to the end of ``node``."""
        n = 0
        while node is not self.tree_core.root_node:
            n += len(node.key)
            node = node.parent
        return n


# ---- hooks -----------------------------------------------------------------------
def check_supported(ctx: TreeCacheBuildContext) -> None:
    """Refuse the configurations under which :class:`WindowRadixCache`'s assumptions
    about SGLang's tree do not hold, with the flag to change."""
    from sglang.srt.environ import envs

    sa = ctx.server_args
    problems = []
    if ctx.enable_hierarchical_cache:
        problems.append("--enable-hierarchical-cache (HiCache moves SWA values to host)")
    if getattr(sa, "enable_session_radix_cache", False):
        problems.append("--enable-session-radix-cache (session refs pin tree nodes)")
    if getattr(sa, "enable_streaming_session", False):
        problems.append("--enable-streaming-session (wraps the cache)")
    if ctx.params.is_eagle or (sa.speculative_algorithm or "").upper() not in ("", "NONE"):
        problems.append("speculative decoding (--speculative-algorithm)")
    if ctx.is_hybrid_ssm:
        problems.append("a Mamba/SSM component")
    if envs.SGLANG_EXPERIMENTAL_CPP_RADIX_TREE.get():
        problems.append("SGLANG_EXPERIMENTAL_CPP_RADIX_TREE=1")
    if envs.SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND.get() != "python":
        problems.append("SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND other than 'python'")
    if not ctx.full_tokens_per_layer:
        problems.append("an SWA-only pool (sglang_seams/mixkv/pools.py gives every plan a global pool)")
    if problems:
        raise ValueError(
            "MixAttention's window-bounded local KV pool needs SGLang's Python SWA radix "
            "tree; not supported with: " + "; ".join(problems)
            + ". Turn these off, or serve with --disable-radix-cache."
        )


def radix_cache_factory(original, ctx: TreeCacheBuildContext):
    """AROUND hook on ``default_radix_cache_factory`` (``registry.py:79``, called as a
    module global by ``create_tree_cache``, ``:210``): MixAttention models with local
    layers and the radix cache on get :class:`WindowRadixCache`; everything else, and
    ``--disable-radix-cache`` (SGLang's SWA chunk cache), what SGLang builds."""
    if ctx.disable_radix_cache or not ctx.is_hybrid_swa or not served.is_mixkv(ctx.model_config.hf_config):
        return original(ctx)
    check_supported(ctx)
    from sglang.srt.mem_cache.unified_cache.components import ComponentType

    ctx.params.tree_components = (ComponentType.FULL, ComponentType.SWA)
    logger.info("MixAttention: SWA radix cache with per-request window release")
    return WindowRadixCache(ctx.params)


def evict_swa_then_release(original, batch: ScheduleBatch, req: Req, pre_len: int):
    """AROUND hook on ``ScheduleBatch._evict_swa`` (``schedule_batch.py:3264``, called
    every ``SGLANG_SWA_EVICTION_INTERVAL`` decode steps per request): SGLang frees the
    request's own out-of-window tokens, then the request releases its tree lock below
    the same threshold."""
    result = original(batch, req, pre_len)
    cache = batch.tree_cache
    if isinstance(cache, WindowRadixCache):
        cache.release_out_of_window(req, pre_len)
    return result
