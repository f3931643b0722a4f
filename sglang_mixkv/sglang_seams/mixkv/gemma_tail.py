"""Seam: fast prefill for SGLang 0.5.17's own Gemma 3n / Gemma 4 text models.

Their KV-shared tail (``num_kv_shared_layers``: 20 of Gemma 4 E2B's 35 layers) writes no
KV, so at prompt rows its outputs feed only the logits processor, as our plans' tail
does (``mixkv/fast_prefill.py`` says which rows it reads and builds the narrowed batch
the tail attends with). SGLang runs every layer on every row.

Two AROUND hooks, no copy of the models' forward:

- on the text model's ``forward`` (``Gemma4TextModel``, ``models/gemma4_causal.py:942``;
  ``Gemma3nTextModel``, ``gemma3n_causal.py:774``): when the batch allows it
  (:func:`fast_prefill.tail_rows`), it marks the forward as narrowed, runs SGLang's
  forward, and scatters the rows it returns into a zero tensor of the batch's size, so the
  logits processor reads the rows it always reads with the batch it always gets;
- on the decoder layer's ``forward`` (``Gemma4DecoderLayer``, ``:639``;
  ``Gemma3nDecoderLayer``, ``gemma3n_causal.py:573``): a tail layer of a narrowed forward
  gets the selected rows of its hidden states (the first one; later ones receive their
  predecessor's output, already narrowed), positions and per-layer input, and the
  narrowed batch, with the attention backend planned for it until the text model
  returns. Layers before the tail run untouched. Gemma 3n's AltUp streams ``[A, T, H]``
  are narrowed on their token axis; what follows the loop (AltUp unembedding, the final
  norm) is per row.

Both models call their layers with keywords (``gemma4_causal.py:986-992``,
``gemma3n_causal.py:819-825``) and their shared layers attend with K/V read from the
cache at the batch's ``out_cache_loc`` (``k = v = None``), which the narrowed batch
holds for the selected rows. The full path stays for everything
:func:`fast_prefill.tail_rows` refuses, pipeline parallelism and hidden-state capture.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

from sglang_mixkv import served
from sglang_mixkv.sglang_seams.mixkv import fast_prefill

logger = logging.getLogger(__name__)

_MODELS = "sglang.srt.models."
TEXT_MODELS = (_MODELS + "gemma4_causal.Gemma4TextModel.forward",
               _MODELS + "gemma3n_causal.Gemma3nTextModel.forward")
DECODER_LAYERS = (_MODELS + "gemma4_causal.Gemma4DecoderLayer.forward",
                  _MODELS + "gemma3n_causal.Gemma3nDecoderLayer.forward")


@dataclass
class _Narrowed:
    """The forward in flight (SGLang runs one forward at a time per process)."""

    rows: fast_prefill.TailRows
    first: int  # first tail layer
    batch: Any  # the ForwardBatch SGLang passed
    stack: contextlib.ExitStack
    narrowed: bool = False  # the first tail layer selected the rows
    view: Any = None  # the narrowed batch (none when no row is selected)


_active: Optional[_Narrowed] = None


def tail_start(model) -> Optional[int]:
    """The first layer of ``model``'s consumer-only tail, or None (no tail, fast prefill
    off, pipeline parallelism, hidden states captured)."""
    if getattr(model, "layers_to_capture", None):
        return None
    if not hasattr(model, "_mixkv_tail_start"):
        plan = served.plan_for(model.config)
        start = plan.tail[0] if plan is not None and plan.tail else None
        pp = getattr(model, "pp_group", None)
        if not fast_prefill.enabled(model.config) or (pp is not None and pp.world_size > 1):
            start = None
        model._mixkv_tail_start = start
    return model._mixkv_tail_start


def text_model_on_tail_rows(original: Callable, self, input_ids, positions, forward_batch,
                            *args, **kwargs):
    """AROUND the text model's ``forward``: see the module doc. Returns [tokens, hidden]
    with the final hidden states at the rows the logits processor reads, zeros elsewhere."""
    global _active
    first = tail_start(self)
    rows = fast_prefill.tail_rows(forward_batch) if first is not None else None
    if rows is None or _active is not None:
        return original(self, input_ids, positions, forward_batch, *args, **kwargs)
    with contextlib.ExitStack() as stack:
        _active = _Narrowed(rows, first, forward_batch, stack)
        try:
            hidden = original(self, input_ids, positions, forward_batch, *args, **kwargs)
        finally:
            _active = None
    out = hidden.new_zeros((positions.shape[0], hidden.shape[-1]))
    out[rows.index] = hidden
    if fast_prefill.log_enabled():
        logger.info("mixkv fast prefill: tail layers %d-%d ran on %d of %d rows", first,
                    len(self.layers) - 1, len(rows.index), positions.shape[0])
    return out


def tail_layer_on_rows(original: Callable, self, *args, **kwargs):
    """AROUND a decoder layer's ``forward``: a tail layer of a narrowed forward runs on
    the selected rows with the narrowed batch."""
    n = _active
    if n is None or self.layer_id < n.first:
        return original(self, *args, **kwargs)
    if args:  # pragma: no cover - both models pass keywords (module doc)
        raise TypeError("Gemma decoder layers are called with keywords in SGLang 0.5.17")
    idx = n.rows.index
    hidden = kwargs["hidden_states"]
    if not n.narrowed:  # the first tail layer: select the rows
        n.narrowed = True
        hidden = hidden[:, idx] if hidden.dim() == 3 else hidden[idx]  # AltUp: [A, T, H]
        if len(idx):
            n.view = n.stack.enter_context(fast_prefill.attending_with(n.batch, n.rows))
    if not len(idx):  # every request in a middle chunk: nothing is read, nothing attends
        return (hidden, None) if type(self).__name__.startswith("Gemma4") else hidden
    per_layer = kwargs.get("per_layer_input")
    kwargs.update(hidden_states=hidden, positions=n.view.positions, forward_batch=n.view,
                  per_layer_input=per_layer[idx] if per_layer is not None else None)
    return original(self, **kwargs)
