"""Every place sglang-mixkv reaches into SGLang 0.5.17: an SGLang upgrade looks here.

SGLang runs :func:`register` in the launcher and in every scheduler process (entry
point ``mixkv`` in group ``sglang.srt.plugins``, see ``pyproject.toml``). One module
per seam:

- here: registers :class:`~sglang_mixkv.model.MixAttentionForCausalLM` in SGLang's
  model registry, and on a machine without CUDA keeps SGLang's RotaryEmbedding on its
  plain-torch path (stock 0.5.17 imports ``vllm._custom_ops`` there);
- :mod:`.pools`: sizes the KV pools of MixAttention models - buffers for producer layers
  only, a window-bounded local pool, the rest to the global pool;
- :mod:`.torch_native`: the ``torch_native`` backend, reading SWA layers through the
  full->SWA index map and gathering only the window;
- :mod:`.triton`: the ``triton`` backend (the GPU default), decode over W keys like
  extend, and no window lists for plans without local layers.

Everything except the model and the pools is a no-op or a bug fix for other models.
"""

from __future__ import annotations

import torch

from sglang_mixkv.sizes import ARCHITECTURE


def _torch_native(runner):
    from sglang_mixkv.sglang_seams.torch_native import WindowedTorchNativeBackend

    return WindowedTorchNativeBackend(runner)


def _triton(runner):
    from sglang_mixkv.sglang_seams.triton import WindowedTritonBackend

    if runner.model_config.is_encoder_decoder:
        raise ValueError("cross attention is not supported by the triton attention backend")
    return WindowedTritonBackend(runner)


def register() -> None:
    """Plugin entry point. Idempotent."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.models.registry import ModelRegistry
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sglang_mixkv.model import MixAttentionForCausalLM
    from sglang_mixkv.sglang_seams import pools

    ModelRegistry.models[ARCHITECTURE] = MixAttentionForCausalLM
    ATTENTION_BACKENDS["torch_native"] = _torch_native
    ATTENTION_BACKENDS["triton"] = _triton
    HookRegistry.register(pools.POOL_CONFIGURATOR, pools.choose_pool_configurator,
                          HookType.AROUND)
    if not torch.cuda.is_available():
        import sglang.srt.layers.rotary_embedding.base as rope_base

        rope_base._is_cpu = True  # plain-torch rotary instead of vllm's kernel
