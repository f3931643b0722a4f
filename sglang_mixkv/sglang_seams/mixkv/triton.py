"""Seam: SGLang 0.5.17's ``triton`` attention backend (the default on a GPU), fixed for
sliding windows and for plans without local layers.

Window convention: a local layer sees W tokens, its own included; SGLang stores
``sliding_window_size = W - 1`` on the layer and the model runner. What stock triton
does with it (``layers/attention/triton_backend.py``):

- extend: the prefix index list holds the last ``min(prefix, W-1)`` keys
  (``update_sliding_window_buffer`` on ``extend_prefix_lens``) and the kernel masks
  ``q_pos <= k_pos + (W-1)`` (``kernels/ops/attention/extend_attention.py:391-397``,
  positions relative to the start of the list): W keys per query. Right.
- decode: the index list holds the last ``min(seq_len, W-1)`` keys and the kernel has
  no window mask of its own: **W-1 keys**, one short. The eager path
  (``init_forward_metadata``) and the CUDA-graph path (``_update_decode_kv_buffers``,
  buffers sized ``max_num_tokens * sliding_window_size`` in ``init_cuda_graph_state``)
  both read the backend's ``self.sliding_window_size``.

:class:`WindowedTritonBackend` keeps the layers' W-1 (the extend mask) and sets the
backend's list length to W. Decode then reads exactly the W keys the window covers, in
both paths, and the CUDA-graph window buffer has room for W keys per request. Extend's
prefix list gains one key the kernel's mask already excludes (its distance to the
first new token is W), so extend is unchanged.

A plan without local producers still runs on the hybrid pool (it has consumers), and
SGLang then hands the backend a window of ``max_position_embeddings``: stock triton
would build a second, full-length index list every step that no layer reads. Here the
backend has no window at all for such plans.
"""

from __future__ import annotations

import logging

from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

from sglang_mixkv import plan as plans

logger = logging.getLogger(__name__)


def decode_window(runner_window: int | None, hf_config) -> int | None:
    """Index-list length the backend should use: W for plans with local producers
    (SGLang's ``runner_window`` is W-1), None for MixAttention plans without them, and
    SGLang's own value for every other model."""
    plan = plans.plan_for(hf_config)
    if plan is None:
        return runner_window
    if not plan.local_producers or runner_window is None:
        return None
    return runner_window + 1


class WindowedTritonBackend(TritonAttnBackend):
    """Triton attention whose decode attends over the same W keys as its extend."""

    def __init__(self, model_runner, *args, **kwargs):
        super().__init__(model_runner, *args, **kwargs)
        window = decode_window(model_runner.sliding_window_size,
                               model_runner.model_config.hf_config)
        if window is None:
            self.window_kv_indptr = None
            logger.info("mixkv triton: no local layers, no window index lists")
        elif self.window_kv_indptr is None:  # pragma: no cover - stock always allocates
            raise RuntimeError("triton backend built no window index buffer for a windowed plan")
        else:
            logger.info("mixkv triton: decode attends over the last %d keys", window)
        self.sliding_window_size = window
