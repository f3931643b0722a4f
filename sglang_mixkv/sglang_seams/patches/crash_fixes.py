"""Seam: valid requests that stopped stock SGLang 0.5.17's scheduler, each fixed by one
hook on the function at fault (found by ``tests/server/test_fuzz.py``).

``token_ids_logprob`` with ``return_logprob`` killed the scheduler whenever another
request without it decoded in the same batch. The sampler asks
``get_token_ids_logprobs_raw`` (``layers/logprob_processor.py:112-131``) for tensors
(``no_copy_to_cpu=True``, ``:686-692``) but gets a ``[]`` placeholder for the request
without ids, and ``batch_result_processor.py:947-950`` calls ``.tolist()`` on every entry
(``AttributeError``, server down; also the prefill path ``:416-419``). An AFTER hook there
turns the placeholders into empty tensors, which every consumer treats as the ``[]`` they
stand for (``.tolist()`` gives ``[]``; ``managers/utils.py:142-146`` copies tensors).

Without CUDA any grammar request (``regex``, ``json_schema``, ``ebnf``) killed
the scheduler twice over: xgrammar's token bitmask is allocated with ``pin_memory=True``
(``constrained/xgrammar_backend.py:60-69``), which needs an accelerator, and
``XGrammarGrammar.apply_vocab_mask`` raises for CPU logits (``:125-136``). There (only)
a REPLACE hook allocates the same bitmask unpinned and an AROUND hook applies it to CPU
logits with xgrammar's own ``apply_token_bitmask_inplace``.

A grammar no token of the vocabulary can start (e.g. ``json_schema`` ``{"type":
"string"}`` with a vocabulary without ``"``) masks every logit of its row to -inf;
softmax gives NaN and ``torch.multinomial`` raises in the scheduler
(``layers/sampler.py:726-737``). SGLang's own remedy, ``sanitize_nan_logits``, is off by
default (``SGLANG_SANITIZE_NAN_LOGITS``, ``utils/async_probe.py:66-76``). An AROUND hook on
``Sampler._preprocess_logits`` (``sampler.py:88-95``) sets such rows (no finite logit) to
0 without a host sync: some token is drawn, the grammar refuses it and SGLang aborts that
request (``batch_result_processor.py:578-588, 716-728``); other rows are untouched.

``/v1/completions`` with ``echo`` and ``logprobs: 0`` was a 500: the response builder
reads ``meta_info["input_top_logprobs"]`` (``serving_completions.py:283, 539``), which
``add_logprob_to_meta_info`` sets only for ``top_logprobs_num > 0``
(``tokenizer_manager.py:2481-2515``). An AFTER hook sets it to ``[]`` otherwise.

``/start_expert_distribution_record`` (and ``stop_`` / ``dump_``; admin routes) on a
server started without ``--expert-distribution-recorder-mode`` killed the scheduler: the
recorder raises there (``eplb/expert_distribution.py:116-131``, called from
``Scheduler.expert_distribution_handle``, ``managers/scheduler.py:4705-4715``). A BEFORE
hook on the tokenizer side (``managers/tokenizer_control_mixin.py:398-412``) answers
400 instead of sending the request on.
"""

from __future__ import annotations

from typing import Any, Callable

TOKEN_IDS_LOGPROBS = "sglang.srt.layers.logprob_processor.get_token_ids_logprobs_raw"
GRAMMAR_BITMASK = "sglang.srt.constrained.xgrammar_backend._allocate_token_bitmask"
GRAMMAR_APPLY = "sglang.srt.constrained.xgrammar_backend.XGrammarGrammar.apply_vocab_mask"
SAMPLER_LOGITS = "sglang.srt.layers.sampler.Sampler._preprocess_logits"
LOGPROB_META = "sglang.srt.managers.tokenizer_manager.TokenizerManager.add_logprob_to_meta_info"
_MIXIN = "sglang.srt.managers.tokenizer_control_mixin.TokenizerControlMixin."
EXPERT_RECORDS = tuple(_MIXIN + f"{verb}_expert_distribution_record"
                       for verb in ("start", "stop", "dump"))


def token_ids_logprobs_as_tensors(result: tuple, logprobs: Any, *args: Any, **kwargs: Any):
    """AFTER hook on ``get_token_ids_logprobs_raw``: when it was asked for tensors, a
    request without ``token_ids_logprob`` gets an empty tensor, not ``[]``."""
    import torch

    no_copy = kwargs.get("no_copy_to_cpu", args[3] if len(args) > 3 else False)
    vals, idxs = result
    if no_copy and any(not torch.is_tensor(v) for v in vals):
        vals = [v if torch.is_tensor(v) else logprobs.new_empty((0,)) for v in vals]
        return vals, idxs
    return None


def unpinned_token_bitmask(vocab_size: int, batch_size: int):
    """REPLACE hook on ``_allocate_token_bitmask`` without CUDA: the same bitmask
    (``xgrammar_backend.py:60-69``), not pinned."""
    import torch
    from sglang.srt.constrained.xgrammar_backend import bitmask_dtype, get_bitmask_shape

    return torch.full(get_bitmask_shape(batch_size, vocab_size), -1, dtype=bitmask_dtype)


def apply_vocab_mask_on_cpu(original: Callable, self: Any, logits: Any, vocab_mask: Any) -> None:
    """AROUND hook on ``XGrammarGrammar.apply_vocab_mask`` without CUDA: CPU logits get
    xgrammar's CPU kernel; any other device goes to SGLang's code."""
    if logits.device.type != "cpu":
        return original(self, logits, vocab_mask)
    import xgrammar

    xgrammar.apply_token_bitmask_inplace(logits, vocab_mask.to(logits.device))
    return None


def no_all_masked_rows(original: Callable, self: Any, logits: Any, *args: Any, **kwargs: Any):
    """AROUND hook on ``Sampler._preprocess_logits``: a row without any finite logit
    becomes all zeros (uniform), so sampling cannot raise; other rows are untouched."""
    import torch

    logits = original(self, logits, *args, **kwargs)
    dead = ~torch.isfinite(logits).any(dim=-1, keepdim=True)
    logits.masked_fill_(dead, 0.0)
    return logits


def input_top_logprobs_always(result: Any, self: Any, meta_info: dict, *args: Any,
                              **kwargs: Any) -> None:
    """AFTER hook on ``TokenizerManager.add_logprob_to_meta_info``: ``meta_info`` always
    has ``input_top_logprobs`` (empty when none were asked for)."""
    meta_info.setdefault("input_top_logprobs", [])
    return None


def expert_records_need_a_recorder(self: Any, *args: Any, **kwargs: Any) -> None:
    """BEFORE ``TokenizerControlMixin.{start,stop,dump}_expert_distribution_record``."""
    if getattr(self.server_args, "expert_distribution_recorder_mode", None) is None:
        from fastapi import HTTPException

        raise HTTPException(status_code=400, detail=(
            "expert distribution recording is off: start the server with "
            "--expert-distribution-recorder-mode"))
    return None
