"""Seam: Ada-KV inside SGLang 0.5.17 (the algorithm is :mod:`sglang_mixkv.adakv`).

Life of a request whose prompt compresses (``P >= budget``); paths inside
``sglang/srt/``:

1. **Admission.** A compressing request is *private* to the radix cache: its prefix match
   is capped at 0 (an AROUND hook on ``Req._compute_max_prefix_len``,
   ``managers/schedule_batch.py:1367``, called by ``init_next_round_input`` with the
   full prefill length, prompt plus any output of a retracted request) and
   ``req.skip_radix_cache_insert`` is set, SGLang's own "never insert" flag
   (``mem_cache/common.py:98-153``). Its KV is never inserted or matched: it is
   rewritten in place below, so no other request may read it. Requests below the
   budget use the tree as usual.
2. **Prefill.** Chunks run as usual. While they run, the post-RoPE queries of the last
   ``window`` prompt positions are stashed on the request, per global producer (and, with
   ``scoring = readers``, per global consumer too); the window may span two chunks.
   ``maybe_cache_unfinished_req`` (AROUND, in the two namespaces that call it:
   ``managers/scheduler.py:2837`` between chunks, ``batch_result_processor.py:278`` after
   the last) skips the tree for private requests and keeps ``req.prefix_indices`` on the
   request's own slots, as SGLang's cache-disabled branch does.
3. **Compression**, at the end of the forward pass that holds a request's last chunk
   (:meth:`ModelHook.finish`): scores from the stashed queries against all P keys of the
   producer's buffer, per-head kept sets, and compaction: head h's kept K/V (in position
   order) move into cells ``[off[h], off[h+1])`` of the region of slots
   ``req_to_token[r, cut:P]`` (a buffer ``[slots, H_kv, D]`` viewed as ``[slots * H_kv,
   D]``). Local producers are untouched: ``cut <= P - W``, so their last window keeps its
   slots (and SWA mapping).
4. **Free.** When the scheduler processes that batch (the same ``maybe_cache_unfinished_req``
   hook), slots ``[0, cut)`` go back to the allocator (full slots and their SWA slots),
   the SWA slots of ``[cut, P - W)`` too (the local layers read the last window only),
   and ``req.cache_protected_len`` moves to ``cut``, which SGLang's leak check
   (``scheduler_components/invariant_checker.py:224-263``), its SWA eviction
   (``mem_cache/common.py:47-95``) and ``cache_finished_req`` (which frees ``[cpl, L)``)
   all honour.
5. **Decode.** Every new token gets a normal slot, all heads' K/V in it. Attention of a
   global layer (producer or consumer: consumers carry the producer's layer id) for a
   compressed request reads, per KV head, its region cells and then the decode slots:
   :func:`head_cells`, used by ``patches/torch_native.py`` and ``mixkv/triton.py``.
6. **Retraction** frees the request's slots as usual (``cache_finished_req`` from
   ``cpl = cut``); an AFTER hook on ``Req.reset_for_retract`` drops its compressed state,
   and the re-prefill (prompt + output so far) is compressed again at its own end: the
   observation window is then the last ``window`` tokens of that sequence.

State lives on the ``Req`` object (``req.mixkv_ada``), in the scheduler process of each
tensor-parallel rank; each rank selects for its own KV heads with its own query heads
(per-rank allocation). Counters: ``mixkv:adakv_*`` in ``/metrics``; kept positions:
``MIXKV_ADAKV_DEBUG_JSONL=path`` (one line per request, layer and head); kept counts in a
response's ``meta_info["adakv"]`` when the request asks (``sampling_params.custom_params:
{"adakv_kept": true}``), through ``LogitsProcessorOutput.customized_info``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from sglang_mixkv import adakv as ada
from sglang_mixkv import plan as plans
from sglang_mixkv.sglang_seams.guard import failing_request
from sglang_mixkv.sglang_seams.patches.validation import ADAKV_ASK as ASK_KEY

logger = logging.getLogger(__name__)

INIT_NEW = "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new"
MAX_PREFIX = "sglang.srt.managers.schedule_batch.Req._compute_max_prefix_len"
RESET_RETRACT = "sglang.srt.managers.schedule_batch.Req.reset_for_retract"
CACHE_UNFINISHED = ("sglang.srt.managers.scheduler.maybe_cache_unfinished_req",
                    "sglang.srt.managers.scheduler_components.batch_result_processor."
                    "maybe_cache_unfinished_req")
RELEASE = tuple(f"sglang.srt.managers.{ns}.release_kv_cache" for ns in (
    "scheduler", "scheduler_components.batch_result_processor", "schedule_batch"))
UNCACHED_SIZES = ("sglang.srt.managers.scheduler_components.invariant_checker."
                  "SchedulerInvariantChecker._get_total_uncached_sizes")
DEBUG_ENV = "MIXKV_ADAKV_DEBUG_JSONL"

#: The served model's settings, set when the model is built (every scheduler process
#: builds its model before it admits a request). None: Ada-KV off.
_config: Optional[ada.AdaKVConfig] = None
_page = 1
#: Private requests between prompt chunks (scheduler thread): their slots are in no tree.
_prefilling: "weakref.WeakSet" = weakref.WeakSet()


def configure(cfg: Optional[ada.AdaKVConfig], page_size: int = 1) -> None:
    global _config, _page
    _config, _page = cfg, max(1, int(page_size or 1))


def enabled() -> bool:
    return _config is not None


def _rule() -> str:
    """The selection rule in force (named in ``meta_info["adakv"]`` and the debug log)."""
    return _config.rule if _config is not None else "adakv"


@dataclass
class Compressed:
    """A compressed request's KV layout (owned by ``req.mixkv_ada``).

    ``cells``: flat cell indices ``slot * H + h`` of the region ``req_to_token[r, cut:P]``,
    slot-major; ``offsets[layer]``: [H + 1] cumulative cell counts of that global
    producer's heads; ``kept[layer]``: per head, the kept prompt positions (ascending)."""

    prompt_len: int
    cut: int
    heads: int
    cells: torch.Tensor
    offsets: dict[int, torch.Tensor]
    kept: dict[int, list[torch.Tensor]]
    seconds: float = 0.0  # scoring and compaction, wall time on this rank
    freed: bool = False


@dataclass
class State:
    """Per-request Ada-KV state: the prefill length it compresses at and, while the
    prompt runs, the stashed window queries ``{producer: {reader: {position: q}}}``."""

    prompt_len: int
    stash: dict[int, dict[int, dict[int, torch.Tensor]]] = field(default_factory=dict)
    compressed: Optional[Compressed] = None
    failed: bool = False  # scoring or compression raised: the request was aborted


def state(req) -> Optional[State]:
    return getattr(req, "mixkv_ada", None)


# ---- scheduler side -------------------------------------------------------------------------
def max_prefix_len(original: Callable, req, input_len: int, *args, **kwargs) -> int:
    """AROUND ``Req._compute_max_prefix_len``: a compressing request matches nothing and is
    never inserted (private); any other request is left to SGLang."""
    limit = original(req, input_len, *args, **kwargs)
    if _config is None:
        return limit
    if _config.compresses(input_len):
        st = state(req)
        if st is None or st.prompt_len != input_len or st.compressed is not None:
            req.mixkv_ada = State(prompt_len=input_len)  # (called again for every chunk)
        req.skip_radix_cache_insert = True
        return 0
    if state(req) is not None:  # e.g. retracted earlier: no longer ours
        req.mixkv_ada = None
        req.skip_radix_cache_insert = False
    return limit


def drop_on_retract(result, req, *args, **kwargs):
    """AFTER ``Req.reset_for_retract``: the re-prefill decides (and compresses) anew."""
    _prefilling.discard(req)
    if state(req) is not None:
        req.mixkv_ada = None
    return result


def cache_unfinished(original: Callable, req, tree_cache, *args, **kwargs):
    """AROUND ``maybe_cache_unfinished_req``: private requests keep their own slots as
    their prefix (SGLang's cache-disabled branch); after the prompt's last chunk, a
    compressed request returns ``[cpl, cut)`` to the allocator."""
    st = state(req)
    if st is None:
        return original(req, tree_cache, *args, **kwargs)
    pool = tree_cache.req_to_token_pool
    if kwargs.get("chunked", False):
        _prefilling.add(req)
        if tree_cache.supports_swa():
            _free_swa_behind_the_chunk(req, tree_cache)
    else:
        _prefilling.discard(req)
    # int64, as chunk_cache.py:94 keeps it: the triton write kernel reads prefixes through
    # an int64 pointer (kernels/ops/memory/common.py:25), whatever the tensor's dtype
    req.prefix_indices = pool.req_to_token[req.req_pool_idx, : len(req.get_fill_ids())].to(
        dtype=torch.int64, copy=True)
    c = st.compressed
    if c is not None and not c.freed and not kwargs.get("chunked", False):
        lo = req.cache_protected_len
        if c.cut > lo:
            slots = pool.req_to_token[req.req_pool_idx, lo : c.cut].to(torch.int64)
            tree_cache.token_to_kv_pool_allocator.free(slots)
            req.cache_protected_len = c.cut
            metrics().freed.inc(c.cut - lo)
        if tree_cache.supports_swa():
            _free_swa_behind_the_window(req, tree_cache)
        c.freed = True
    return None


def count_release(req, tree_cache, *args, **kwargs) -> None:
    """BEFORE SGLang's ``release_kv_cache`` (``mem_cache/common.py:132``, in the three
    namespaces that call it, :data:`RELEASE`): a compressed request that ends (finishes,
    aborts, is retracted) before :func:`cache_unfinished` freed its slots below the
    region has them freed by SGLang now, with the rest; count them, so that the counters
    add up (``freed + region = prompt``)."""
    st = state(req)
    c = st.compressed if st is not None else None
    if c is not None and not c.freed:
        metrics().freed.inc(max(0, c.cut - req.cache_protected_len))
        c.freed = True
    return None


def _free_swa_behind_the_window(req, tree_cache) -> None:
    """After compression, free the local (SWA) slots of the kept region ``[cut, P)`` that
    lie behind the last window: the global cells stay, the local layers read only the last
    window. Without this a compressed request holds B + 1 local slots until its first
    decode eviction; a burst of prefills then overfills the local pool, sized for one
    window per request, and SGLang retracts (measured: 13 retractions a run at 32 concurrent
    512-token prompts, ``ma`` with budget 128, before this)."""
    _free_swa_below_window(req, tree_cache, len(req.get_fill_ids()), tree_cache.is_chunk_cache())


def _free_swa_below_window(req, tree_cache, pre_len: int, is_chunk_cache: bool) -> None:
    """SGLang's own out-of-window SWA free (``mem_cache/common.py:47-95``) for ``req``'s
    slots, as if its KV reached ``pre_len``."""
    from sglang.srt.mem_cache.common import free_swa_out_of_window_slots

    free_swa_out_of_window_slots(
        req, pre_len, sliding_window_size=tree_cache.sliding_window_size,
        page_size=tree_cache.page_size, req_to_token_pool=tree_cache.req_to_token_pool,
        token_to_kv_pool_allocator=tree_cache.token_to_kv_pool_allocator,
        is_chunk_cache=is_chunk_cache)


def _free_swa_behind_the_chunk(req, tree_cache) -> None:
    """Between chunks of a private request, free the local (SWA) slots no later query
    reads, as SGLang does for its chunk cache (``ScheduleBatch.maybe_evict_swa``,
    ``schedule_batch.py:3246-3260``): below the start of the chunk just run minus the
    window, so the chunk still running (overlap scheduling) keeps what it reads. The
    tree would otherwise do this as it inserts the chunk (private requests are never
    inserted), and the local pool, sized for one window per request plus the chunks in
    flight, would fill with the whole prompt."""
    from sglang.srt.runtime_context import get_schedule

    chunk = get_schedule().chunked_prefill_size or 0
    chunk_start = len(req.get_fill_ids()) - max(chunk, 0)
    if chunk_start > 0:
        _free_swa_below_window(req, tree_cache, chunk_start, is_chunk_cache=True)


def count_parked_prefills(original: Callable, checker, *args, **kwargs) -> tuple[int, int]:
    """AROUND SGLang's strict pool check's ``_get_total_uncached_sizes``
    (``scheduler_components/invariant_checker.py:224-263``): add the slots of private
    requests parked between prompt chunks. The check counts only the requests of the last
    and the running batch and assumes a chunked prompt's earlier chunks are in the radix
    tree; a private request's are not, so when a decode batch runs while one waits for its
    next chunk (the local pool full, after a retraction), its slots read as a leak and the
    check stops the scheduler (``SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY``, our tests
    and soak)."""
    full, swa = original(checker, *args, **kwargs)
    batches = [b for b in (checker.get_last_batch(), checker.get_running_batch()) if b is not None]
    counted = {id(r) for b in batches for r in b.reqs}
    page = max(1, checker.page_size)
    for req in list(_prefilling):
        if req.kv is None or id(req) in counted:
            continue
        allocated = -(-req.kv.kv_allocated_len // page) * page
        full += allocated - req.cache_protected_len
        if checker.is_hybrid_swa:
            swa += allocated - max(req.cache_protected_len, req.kv.swa_evicted_seqlen)
    return full, swa


# ---- model side -----------------------------------------------------------------------------
#: (rids, reqs) of the batch ``ForwardBatch.init_new`` built last; the worker runs that
#: batch's forward right after (``managers/tp_worker.py:573-585``), on this thread.
_batch = threading.local()


def remember_batch(result, cls, batch, *args, **kwargs):
    """AFTER ``ForwardBatch.init_new``: the batch's ``Req`` objects, for the forward."""
    if _config is not None and getattr(batch, "reqs", None) is not None:
        _batch.record = (tuple(r.rid for r in batch.reqs), list(batch.reqs))
    return result


def reqs_of(fb) -> Optional[list]:
    """The ``Req`` objects of ``fb``'s requests (batch order), or None if unknown."""
    record = getattr(_batch, "record", None)
    if record is None or fb.rids is None:
        return None
    by_rid = dict(zip(record[0], record[1]))
    reqs = [by_rid.get(rid) for rid in fb.rids]
    return None if any(r is None for r in reqs) else reqs


def compressed_states(fb) -> Optional[list[Optional[Compressed]]]:
    """Per request of a decode batch, its compressed layout (None: uncompressed), or
    None when no request of the batch is compressed."""
    if _config is None:
        return None
    reqs = reqs_of(fb)
    if reqs is None:
        return None
    out = [st.compressed if (st := state(r)) is not None else None for r in reqs]
    return out if any(c is not None for c in out) else None


class HeadTables:
    """Compressed layouts on the device, indexed by ``req_pool_idx``, for attention that
    must not look at ``Req`` objects (a captured decode reads them on every replay):
    ``prompt[r]`` (0: slot r's request is uncompressed), ``cut[r]``, and
    ``offsets[r, j]``: the ``H + 1`` cumulative cell counts of global producer
    ``producers[j]``'s heads (the :class:`Compressed` fields, on the device).

    Owned by the attention backend that reads them (``mixkv/triton.py`` creates them);
    written by :meth:`ModelHook._compress` when a prompt compresses, and reset to 0 for
    every request of an extend batch (:meth:`ModelHook.begin`): a request passes through
    an extend before it decodes, so a slot reused after a finished or retracted request
    never shows that request's layout."""

    def __init__(self, req_slots: int, producers: list[int], heads: int, device):
        self.producers = list(producers)
        self.heads = heads
        self.prompt = torch.zeros(req_slots, dtype=torch.int64, device=device)
        self.cut = torch.zeros(req_slots, dtype=torch.int64, device=device)
        self.offsets = torch.zeros(req_slots, len(self.producers), heads + 1, dtype=torch.int64,
                                   device=device)

    def index(self, layer_id: int) -> int:
        return self.producers.index(layer_id)

    def clear(self, req_pool_indices: torch.Tensor) -> None:
        self.prompt.index_fill_(0, req_pool_indices.to(self.prompt.device), 0)

    def write(self, r: int, c: Compressed) -> None:
        self.cut[r] = c.cut
        for layer_id, off in c.offsets.items():
            self.offsets[r, self.index(layer_id)] = off.to(self.offsets.device)
        self.prompt[r] = c.prompt_len


_tables: Optional[HeadTables] = None


def use_tables(tables: Optional[HeadTables]) -> None:
    """Install the device tables (the backend that reads them calls this)."""
    global _tables
    _tables = tables


def tables() -> Optional[HeadTables]:
    return _tables


def head_cells(c: Compressed, layer_id: int, h: int, req_row: torch.Tensor,
               seq_len: int) -> torch.Tensor:
    """Flat cell indices (into the buffer viewed ``[slots * H, D]``) KV head ``h`` of
    global producer ``layer_id`` attends over: its region cells (kept prompt tokens in
    position order), then every token since the prompt. ``req_row`` is the request's
    ``req_to_token`` row."""
    off = c.offsets[layer_id]
    decode = req_row[c.prompt_len : seq_len].to(torch.int64) * c.heads + h
    return torch.cat([c.cells[int(off[h]) : int(off[h + 1])], decode])


class ModelHook:
    """What the model calls: :meth:`begin` before a forward, :meth:`stash` from each
    global producer (and, for ``readers`` scoring, each global consumer) with its
    post-RoPE queries, :meth:`finish` after the last layer."""

    def __init__(self, cfg: ada.AdaKVConfig, plan: plans.Plan):
        self.cfg = cfg
        self.plan = plan
        self.producers = plan.global_producers
        self.readers = {p: [i for i in range(len(plan)) if plan.layers[i].source == p]
                        for p in self.producers}
        self.batch: Optional[list[tuple[Any, State, int]]] = None  # (req, state, index)

    def scores_with(self, layer_id: int, source: int) -> bool:
        """Whether layer ``layer_id`` (reading ``source``) contributes queries to scoring."""
        if source not in self.readers:
            return False
        return layer_id == source or self.cfg.scoring == "readers"

    def begin(self, fb) -> None:
        """Find the requests of an extend batch whose window rows it holds."""
        self.batch = None
        if not fb.forward_mode.is_extend():
            return
        if _tables is not None:  # every request here gets its layout afresh (finish)
            _tables.clear(fb.req_pool_indices)
        if fb.extend_seq_lens_cpu is None:
            return
        reqs = reqs_of(fb)
        if reqs is None:
            return
        rows = []
        for j, req in enumerate(reqs):
            st = state(req)
            if st is None or st.compressed is not None:
                continue
            end = fb.extend_prefix_lens_cpu[j] + fb.extend_seq_lens_cpu[j]
            if end > st.prompt_len - self.cfg.window:
                rows.append((req, st, j))
        self.batch = rows or None

    def tail_rows_needed(self, fb) -> Optional[list[int]]:
        """Rows at the end of each request's extend that ``readers`` scoring needs from the
        consumer-only tail (its window rows), for fast prefill; None: nothing extra."""
        if self.batch is None or self.cfg.scoring != "readers":
            return None
        need = [0] * fb.batch_size
        for req, st, j in self.batch:
            start = fb.extend_prefix_lens_cpu[j]
            end = start + fb.extend_seq_lens_cpu[j]
            need[j] = end - max(start, st.prompt_len - self.cfg.window)
        return need

    def stash(self, fb, source: int, layer_id: int, q: torch.Tensor, heads: int,
              head_dim: int) -> None:
        """Keep the window rows of ``q`` ([rows of fb, heads * head_dim]) per request."""
        if self.batch is None:
            return
        by_rid = {req.rid: (st, req) for req, st, _ in self.batch}
        start = 0
        for j, rid in enumerate(fb.rids):
            ext, prefix = fb.extend_seq_lens_cpu[j], fb.extend_prefix_lens_cpu[j]
            if rid in by_rid and not by_rid[rid][0].failed:
                st, req = by_rid[rid]
                with failing_request(req, "Ada-KV scoring") as outcome:
                    lo = max(prefix, st.prompt_len - self.cfg.window)
                    if lo < prefix + ext:
                        part = q[start + lo - prefix : start + ext].view(-1, heads, head_dim)
                        slot = st.stash.setdefault(source, {}).setdefault(layer_id, {})
                        for k, pos in enumerate(range(lo, prefix + ext)):
                            slot[pos] = part[k].detach().clone()
                st.failed = outcome.failed
            start += ext

    def finish(self, fb, layers, logits_output) -> None:
        """Compress every request whose prompt ends in this batch (see the module doc)."""
        batch, self.batch = self.batch, None
        if batch is None:
            return
        info: dict[int, Any] = {}
        for req, st, j in batch:
            end = fb.extend_prefix_lens_cpu[j] + fb.extend_seq_lens_cpu[j]
            if end != st.prompt_len or st.failed:
                continue
            with failing_request(req, "Ada-KV compression"):
                t0 = time.perf_counter()
                st.compressed = self._compress(req, st, fb, layers)
                st.compressed.seconds = time.perf_counter() - t0
                st.stash.clear()
                if _asks(req):
                    info[j] = report(st.compressed)
        if info and logits_output is not None:
            logits_output.customized_info = {
                **(logits_output.customized_info or {}),
                "adakv": [info.get(j) for j in range(fb.batch_size)]}

    def _compress(self, req, st: State, fb, layers) -> Compressed:
        """Score and select per head (:mod:`sglang_mixkv.adakv`), then :func:`compact`."""
        from sglang.srt.model_executor.forward_context import (get_req_to_token_pool,
                                                               get_token_to_kv_pool)

        cfg, p = self.cfg, st.prompt_len
        pool = get_token_to_kv_pool()
        row = get_req_to_token_pool().req_to_token[req.req_pool_idx]
        slots = row[:p].to(torch.int64)
        heads = layers[self.producers[0]].self_attn.attn.tp_k_head_num
        window = torch.arange(p - cfg.window, p, device=slots.device)
        kept_by_layer = {}
        for layer_id in self.producers:
            if cfg.rule != "adakv":  # a score-free baseline: the same accounting, no scores
                key = ada.prompt_key((list(req.origin_input_ids) + list(req.output_ids))[:p])
                kept_by_layer[layer_id] = [
                    torch.cat([s.to(slots.device), window])
                    for s in ada.baseline(p - cfg.window, heads, cfg, layer_id,
                                          _rank()[0] * heads, key)]
                continue
            attn = layers[layer_id].self_attn.attn
            keys = pool.get_key_buffer(layer_id)[slots]  # [P, H, D]
            per_reader = []
            for reader, rows in sorted(st.stash.get(layer_id, {}).items()):
                q = torch.stack([rows[pos] for pos in range(p - cfg.window, p)])
                per_reader.append(ada.window_scores(q, keys, attn.scaling))
            scores = ada.pooled(torch.stack(per_reader).mean(0), heads, cfg.kernel)
            kept_by_layer[layer_id] = [torch.cat([s.to(slots.device), window])
                                       for s in ada.select(scores, cfg)]
        out = compact(pool, row, p, ada.cut(p, cfg.budget, _page), kept_by_layer)
        if _tables is not None:
            _tables.write(req.req_pool_idx, out)
        _record(req, out)
        return out


def compact(pool, row: torch.Tensor, prompt_len: int, cut: int,
            kept_by_layer: dict[int, list[torch.Tensor]]) -> Compressed:
    """Move each global producer's kept K/V (per head, ascending prompt positions) into
    its cells of the region ``row[cut:prompt_len]`` and return the layout. ``pool``: the
    KV pool; ``row``: the request's ``req_to_token`` row. Slots below ``cut`` are left
    as they are (the scheduler frees them)."""
    slots = row[:prompt_len].to(torch.int64)
    region = row[cut:prompt_len].to(torch.int64)
    first = next(iter(kept_by_layer))
    heads, head_dim = pool.get_key_buffer(first).shape[1:]
    cells = (region.unsqueeze(1) * heads + torch.arange(heads, device=region.device)).reshape(-1)
    out = Compressed(prompt_len, cut, heads, cells, {}, {})
    for layer_id, kept in kept_by_layer.items():
        counts = torch.tensor([0] + [k.numel() for k in kept], device=slots.device)
        offsets = torch.cumsum(counts, 0)
        if int(offsets[-1]) > cells.numel():  # pragma: no cover - max_cells bounds it
            raise RuntimeError(f"Ada-KV: {int(offsets[-1])} kept cells exceed the region's "
                               f"{cells.numel()}")
        src = torch.cat([slots[k.to(slots.device)] * heads + h for h, k in enumerate(kept)])
        dst = cells[: int(offsets[-1])]
        for buf in (pool.get_key_buffer(layer_id), pool.get_value_buffer(layer_id)):
            flat = buf.view(-1, head_dim)
            flat[dst] = flat[src].clone()  # gather first: the region overlaps the sources
        out.offsets[layer_id] = offsets.cpu()
        out.kept[layer_id] = [k.cpu() for k in kept]
    return out


def _asks(req) -> bool:
    """Whether the request asked for ``meta_info["adakv"]`` (``custom_params.adakv_kept``
    true; the validation seam refuses anything but an object there, and a non-boolean
    value, before the request gets here)."""
    cp = getattr(getattr(req, "sampling_params", None), "custom_params", None)
    return isinstance(cp, dict) and cp.get(ASK_KEY) is True


def report(c: Compressed) -> dict:
    """``meta_info["adakv"]``: prompt length, first kept slot, kept tokens per head and
    global producer (this rank's heads), and the milliseconds scoring and compaction took."""
    return {"prompt_tokens": c.prompt_len, "cut": c.cut, "rule": _rule(),
            "kept": {str(layer): [int(k.numel()) for k in kept] for layer, kept in c.kept.items()},
            "compress_ms": round(c.seconds * 1e3, 3)}


def _rank() -> tuple[int, int]:
    try:
        from sglang.srt.runtime_context import get_parallel

        par = get_parallel()
        return par.tp_rank, par.tp_size
    except Exception:  # noqa: BLE001 - outside a server (tests building the model)
        return 0, 1


def _record(req, c: Compressed) -> None:
    kept = sum(int(k.numel()) for layer in c.kept.values() for k in layer)
    m = metrics()
    m.compressed.inc()
    m.kept.inc(kept)
    m.prompt.inc(c.prompt_len)
    m.region.inc(c.prompt_len - c.cut)
    path = os.environ.get(DEBUG_ENV)
    if path:
        rank, _ = _rank()
        with open(path, "a") as f:
            for layer, heads in c.kept.items():
                for h, pos in enumerate(heads):
                    f.write(json.dumps({"rid": req.rid, "rank": rank, "rule": _rule(),
                                        "layer": layer,
                                        "head": rank * c.heads + h, "prompt_len": c.prompt_len,
                                        "positions": pos.tolist()}) + "\n")


class _Metrics:
    def __init__(self):
        from prometheus_client import Counter

        self.compressed = Counter("mixkv:adakv_compressed_requests",
                                  "Requests whose prompt Ada-KV compressed (this rank)")
        self.kept = Counter("mixkv:adakv_kept_tokens",
                            "Prompt tokens kept, summed over global producers and KV heads")
        self.freed = Counter("mixkv:adakv_freed_slots",
                             "Prompt slots below the kept region returned to the allocator "
                             "(after compression, or with the request if it ended first)")
        self.prompt = Counter("mixkv:adakv_prompt_slots",
                              "Prompt slots of the requests compressed (their full prompts)")
        self.region = Counter("mixkv:adakv_region_slots",
                              "Prompt slots compressed requests kept (their regions); once "
                              "idle, freed + region = prompt")


_metrics: Optional[_Metrics] = None


def metrics() -> _Metrics:
    """The counters (created on first use, in the scheduler process, so SGLang's
    multi-process Prometheus collector exports them in ``/metrics``)."""
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics
