"""Seam: which rows of an extend batch the consumer-only tail must compute (SGLang 0.5.17).

Layers after the last producer write no KV, so at prompt positions their outputs feed
nothing but the logits processor. That reads, per request (``layers/logits_processor.py``
``_get_pruned_states``, :520-593):

- the last row of its extend, when the batch asks no prompt logprobs;
- rows ``[min(start, ext-1), ext)`` when it does (``start`` =
  ``extend_logprob_start_lens_cpu``, ``ext`` = ``extend_seq_lens_cpu``).

:func:`tail_rows` returns exactly those rows, minus the last row of a chunk that is not
the request's last when no logprobs are asked (its token is sampled and thrown away:
``managers/scheduler_components/batch_result_processor.py:236-310`` appends output only
for requests with no middle chunk in flight; penalties accumulate from ``req.output_ids``,
``schedule_batch.py:2928-2947``). It returns None, meaning "run every layer on every
row", whenever something else reads the tail's outputs or the batch cannot be narrowed
safely (list in :func:`_full_path_reason`).

:func:`narrowed` builds the extend batch the tail attends with: the selected rows as
each request's extend (contiguous, at the end of its extend), everything before them as
its cached prefix (the producers wrote those rows to the cache earlier in the same
forward pass). Which requests' chunk is not their last is not in a ``ForwardBatch``;
:func:`mark_last_chunks`, an AFTER hook on ``ForwardBatch.init_new``, records it from
the ``ScheduleBatch`` (``batch.chunked_req`` is the request that stays chunked after this
batch: ``managers/scheduler.py:3179, 3280-3300``, ``schedule_policy.py:897-917``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from sglang_mixkv.defaults import FAST_PREFILL_CONFIG_KEY, FAST_PREFILL_LOG_ENV

logger = logging.getLogger(__name__)

INIT_NEW = "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new"


def enabled(hf_config) -> bool:
    """Fast prefill is on unless the model's config says ``mixkv_fast_prefill: false``
    (``serve --no-fast-prefill`` sets it through ``--json-model-override-args``)."""
    return bool(getattr(hf_config, FAST_PREFILL_CONFIG_KEY, True))


def log_enabled() -> bool:
    """``MIXKV_FAST_PREFILL_LOG=1``: log every fast-path forward (read when the model is
    built; tests use it to prove the fast path ran)."""
    return os.environ.get(FAST_PREFILL_LOG_ENV, "") == "1"


#: The request ids of the batch ``ForwardBatch.init_new`` built last, and per request
#: whether this chunk is its last. A ForwardBatch cannot carry it: runners copy it with
#: ``dataclasses.replace`` (``model_executor/runner/eager_runner.py:174-193``), which drops attributes
#: that are not fields. SGLang builds a batch and runs its forward back to back in one
#: thread (``managers/tp_worker.py:573-585``); :func:`tail_rows` checks the ids anyway.
_last_batch: tuple[tuple[str, ...], tuple[bool, ...]] = ((), ())


def mark_last_chunks(result, cls, batch, *args, **kwargs):
    """AFTER hook on ``ForwardBatch.init_new(batch, model_runner, ...)``. Extend batches
    only: a decode step (the hot loop) leaves at once, and :func:`tail_rows` reads
    nothing but extend batches (it matches rids, so a stale record is never used)."""
    global _last_batch
    mode = getattr(batch, "forward_mode", None)
    reqs = getattr(batch, "reqs", None)
    if reqs is not None and mode is not None and mode.is_extend():
        chunked = getattr(batch, "chunked_req", None)
        _last_batch = (tuple(req.rid for req in reqs), tuple(req is not chunked for req in reqs))
    return result


def last_chunks(fb) -> list[bool]:
    """Per request of ``fb``: is this chunk its last? True where unknown."""
    rids, last = _last_batch
    if fb.rids is not None and tuple(fb.rids) == rids:
        return list(last)
    return [True] * fb.batch_size


@dataclass(frozen=True)
class TailRows:
    """Rows of an extend batch the tail computes.

    ``index`` [n] indexes the batch's token rows; ``reqs`` are the requests with at
    least one row (batch order) and ``counts`` their row counts: each request's rows are
    the last ``counts[j]`` rows of its extend."""

    index: torch.Tensor
    reqs: list[int]
    counts: list[int]


def _full_path_reason(fb) -> Optional[str]:
    """Why this batch must run every layer on every row, or None. Decode batches
    (every step of every request) leave at the first check."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    if fb.forward_mode not in (ForwardMode.EXTEND, ForwardMode.MIXED):
        return "not a plain extend batch"  # decode, verify, split prefill, dLLM
    from sglang.srt.model_executor.runner_backend_utils.tc_piecewise_cuda_graph.context_manager import (
        get_tc_piecewise_forward_context,
    )
    from sglang.srt.runtime_context import get_parallel

    if get_tc_piecewise_forward_context() is not None:
        # Prefill CUDA graphs (breakable, piecewise): the body is captured whole and
        # replayed with the graph's own batch (radix_attention.py:169-277).
        return "inside a prefill CUDA graph"
    if fb.spec_info is not None:
        return "speculative decoding"
    if fb.capture_hidden_mode is not None and fb.capture_hidden_mode.is_full():
        return "hidden states of every token requested"
    if fb.return_hidden_states_before_norm:
        return "hidden states before the norm requested"
    if fb.multi_item_delimiter_indices is not None:
        return "multi-item scoring"
    if fb.global_num_tokens_cpu is not None:
        return "DP attention"
    if fb.tbo_split_seq_index is not None:
        return "two-batch overlap"
    if fb.lora_ids is not None and any(x is not None for x in fb.lora_ids):
        return "LoRA"
    if fb.mm_inputs is not None and any(x is not None for x in fb.mm_inputs):
        return "multimodal inputs"
    if fb.encoder_lens is not None:
        return "encoder-decoder"
    if get_parallel().attn_cp_size > 1 or fb.attn_cp_metadata is not None:
        return "context parallelism"
    if fb.extend_seq_lens_cpu is None or fb.extend_logprob_start_lens_cpu is None:
        return "no host-side extend lengths"
    return None


def tail_rows(fb, at_least: Optional[list[int]] = None) -> Optional[TailRows]:
    """The rows the logits processor reads (and, per request, at least ``at_least[i]``
    rows at the end of its extend: Ada-KV's window rows when consumers score), or None
    for the full path."""
    if _full_path_reason(fb) is not None:
        return None
    ext, starts = fb.extend_seq_lens_cpu, fb.extend_logprob_start_lens_cpu
    last = last_chunks(fb)
    counts = []
    for i, n in enumerate(ext):
        if fb.return_logprob and n - starts[i] > 0:
            counts.append(n - max(0, starts[i]))  # prompt logprobs: rows [start, ext)
        elif fb.return_logprob or last[i]:
            counts.append(min(1, n))  # the row it samples from
        else:
            counts.append(0)  # a middle chunk: its sample is thrown away
    if at_least is not None:
        counts = [min(n, max(k, extra)) for n, k, extra in zip(ext, counts, at_least)]
    if sum(counts) >= sum(ext):
        return None  # nothing to save
    index, offset = [], 0
    for n, k in zip(ext, counts):
        index.extend(range(offset + n - k, offset + n))
        offset += n
    reqs = [i for i, k in enumerate(counts) if k]
    return TailRows(torch.tensor(index, dtype=torch.int64, device=fb.positions.device), reqs,
                    [counts[i] for i in reqs])


def narrowed(fb, rows: TailRows):
    """A shallow copy of ``fb`` whose extend is ``rows`` (see module doc). Owns nothing:
    tensors are fresh or shared with ``fb``; ``fb`` itself is not modified."""
    dev = fb.seq_lens.device
    sel = torch.tensor(rows.reqs, dtype=torch.int64, device=dev)
    counts = torch.tensor(rows.counts, dtype=fb.extend_seq_lens.dtype, device=dev)
    view = copy.copy(fb)
    view.batch_size = len(rows.reqs)
    view.rids = [fb.rids[j] for j in rows.reqs] if fb.rids is not None else None
    view.req_pool_indices = fb.req_pool_indices[sel]
    view.seq_lens = fb.seq_lens[sel]
    view.seq_lens_cpu = fb.seq_lens_cpu[rows.reqs] if fb.seq_lens_cpu is not None else None
    view.seq_lens_sum = int(view.seq_lens_cpu.sum()) if view.seq_lens_cpu is not None else None
    view.extend_seq_lens = counts
    view.extend_seq_lens_cpu = list(rows.counts)
    view.extend_prefix_lens = (view.seq_lens - counts).to(fb.extend_prefix_lens.dtype)
    view.extend_prefix_lens_cpu = (
        [int(s) - k for s, k in zip(view.seq_lens_cpu.tolist(), rows.counts)]
        if view.seq_lens_cpu is not None else None
    )
    view.extend_start_loc = torch.cumsum(counts, 0) - counts
    view.extend_num_tokens = int(sum(rows.counts))
    view.extend_logprob_start_lens_cpu = [0] * len(rows.reqs)
    view.out_cache_loc = fb.out_cache_loc[rows.index]
    view.positions = fb.positions[rows.index]
    view.input_ids = fb.input_ids[rows.index] if fb.input_ids is not None else None
    view.num_token_non_padded_cpu = view.extend_num_tokens
    view._attn_output = None
    view.return_logprob = False
    return view


@contextlib.contextmanager
def attending_with(fb, rows: TailRows) -> Iterator:
    """The narrowed batch for ``rows``, with the attention backend's metadata planned
    for it while the block runs and re-planned for ``fb`` afterwards (backends keep
    their metadata in buffers they reuse: ``triton_backend.py:913, 2073`` overwrite
    ``qo_indptr`` / ``window_kv_indptr`` in place)."""
    from sglang.srt.model_executor.forward_context import get_attn_backend

    view = narrowed(fb, rows)
    backend = get_attn_backend()
    backend.init_forward_metadata(view)
    try:
        yield view
    finally:
        backend.init_forward_metadata(fb)
