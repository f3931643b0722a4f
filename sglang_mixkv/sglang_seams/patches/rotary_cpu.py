"""Patch: SGLang 0.5.17's ``RotaryEmbedding`` on a machine without CUDA.

``layers/rotary_embedding/base.py`` chooses its kernel path from a module flag
``_is_cpu`` computed at import from the device SGLang detects; on a CPU-only box with a
CUDA-less torch it still takes the path that imports ``vllm._custom_ops`` (not
installed), so any stock model with rotary embeddings fails to load. Setting the flag
keeps SGLang's own plain-torch rotary path. Our model uses :mod:`sglang_mixkv.rope`
and needs none of this; stock models served with this plugin (the Llama oracle, Gemma)
do.
"""

from __future__ import annotations


def use_plain_torch_rotary() -> None:
    """Idempotent; only for a process whose torch has no CUDA."""
    import sglang.srt.layers.rotary_embedding.base as rope_base

    rope_base._is_cpu = True
