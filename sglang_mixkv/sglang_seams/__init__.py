"""Every place sglang-mixkv reaches into SGLang 0.5.17: an SGLang upgrade looks here.

SGLang runs :func:`register` in the launcher and in every scheduler process (entry
point ``mixkv`` in group ``sglang.srt.plugins``, see ``pyproject.toml``). One module
per seam:

- here: registers :class:`~sglang_mixkv.model.MixAttentionForCausalLM` in SGLang's
  model registry, and on a machine without CUDA keeps SGLang's RotaryEmbedding on its
  plain-torch path (stock 0.5.17 imports ``vllm._custom_ops`` there);
- :mod:`.pools`: sizes the KV pools of MixAttention models - buffers for producer layers
  only, a window-bounded local pool, the rest to the global pool;
- :mod:`.radix`: the SWA radix cache releases a request's cached local KV as it leaves
  the request's window, so a running request pins one window;
- :mod:`.torch_native`: the ``torch_native`` backend, reading SWA layers through the
  full->SWA index map and gathering only the window;
- :mod:`.triton`: the ``triton`` backend (the GPU default), decode over W keys like
  extend, and no window lists for plans without local layers;
- :mod:`.fast_prefill`: which rows of an extend batch the consumer-only tail must
  compute, the narrowed batch it attends with, and which chunks are a request's last;
- :mod:`.validation`: token ids and vocabulary-sized options outside the vocabulary get
  a 400 before anything reaches the scheduler (stock 0.5.17 lets them kill the server);
- :mod:`.crash_fixes`: valid requests that stopped stock 0.5.17's scheduler (grammars on
  CPU, ``token_ids_logprob`` beside requests without it, all-masked logit rows).

The model, pools, radix cache, triton window and fast prefill act on MixAttention models
only; validation, the crash fixes and the torch_native/rotary fixes apply to any model
served with this plugin installed.
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
    from sglang_mixkv.sglang_seams import crash_fixes, fast_prefill, pools, radix, validation

    ModelRegistry.models[ARCHITECTURE] = MixAttentionForCausalLM
    ATTENTION_BACKENDS["torch_native"] = _torch_native
    ATTENTION_BACKENDS["triton"] = _triton
    HookRegistry.register(pools.POOL_CONFIGURATOR, pools.choose_pool_configurator,
                          HookType.AROUND)
    radix.register(HookRegistry)
    HookRegistry.register(fast_prefill.INIT_NEW, fast_prefill.mark_last_chunks, HookType.AFTER)
    validation.register(HookRegistry)
    crash_fixes.register(HookRegistry)
    if not torch.cuda.is_available():
        import sglang.srt.layers.rotary_embedding.base as rope_base

        rope_base._is_cpu = True  # plain-torch rotary instead of vllm's kernel
