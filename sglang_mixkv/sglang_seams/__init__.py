"""Every place sglang-mixkv reaches into SGLang 0.5.17: an SGLang upgrade looks here.

SGLang runs :func:`register` in the launcher and in every scheduler process (entry
point ``mixkv`` in group ``sglang.srt.plugins``, see ``pyproject.toml``); it registers
our model class, two attention backends and every hook of :func:`hooks`, one list.
Two rooms:

``mixkv/``: seams for models a plan describes (``served.plan_for(hf_config)`` is not
None); every other model passes through them unchanged.

- :mod:`.mixkv.pools`: KV pools with buffers for producer layers only (Gemma 3n / 4's
  shared tail too), a window-bounded local pool, the rest to the global pool;
- :mod:`.mixkv.radix`: the SWA radix cache releases a request's cached local KV as it
  leaves the request's window, so a running request pins one window;
- :mod:`.mixkv.triton`: the ``triton`` backend (the GPU default) decodes over W keys
  like its extend, and builds no window lists for plans without local layers;
- :mod:`.mixkv.fast_prefill`: which rows of an extend batch the consumer-only tail
  computes, the narrowed batch it attends with, which chunks are a request's last;
- :mod:`.mixkv.gemma_tail`: the same for SGLang's Gemma 3n / 4 text models (their
  KV-shared tail on those rows);
- :mod:`.mixkv.adakv`: Ada-KV's per-head budgets: private requests in the radix cache,
  scoring and compaction after the prompt, freeing, decode over the kept cells.

``patches/``: fixes for any model served with this plugin installed.

- :mod:`.patches.admin_auth`: admin routes answer the admin key only; keys come from
  the environment, never argv, and stay out of logs and ``/server_info``;
- :mod:`.patches.validation`: token ids and vocabulary-sized options out of range get a
  400 before anything reaches the scheduler (stock 0.5.17 lets them kill the server);
- :mod:`.patches.crash_fixes`: valid requests that stopped stock 0.5.17's scheduler;
- :mod:`.patches.parser_names`: an unknown parser name in ``/parse_function_call`` or
  ``/separate_reasoning`` is a 400 listing the known ones (stock: a 500);
- :mod:`.patches.torch_native`: the ``torch_native`` backend reads SWA layers through
  the full->SWA index map (stock reads them with full-pool indices) and honours windows;
- :mod:`.patches.rotary_cpu`: SGLang's rotary embedding on plain torch without CUDA;
- :mod:`.patches.fork_cpu`: without CUDA, the scheduler and detokenizer processes are
  forked from the launcher instead of spawned (no second import of SGLang);
- :mod:`.patches.gemma`: Gemma 3n / 4 load on CPU and match transformers (config
  fields, soft-capping under Triton's interpreter, Gemma 3n's window).

:mod:`.launch` holds what ``serve`` must know about SGLang's command line.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from sglang_mixkv.model_folder import ARCHITECTURE


class Hook(NamedTuple):
    """One ``HookRegistry`` entry: SGLang's dotted target, our function, BEFORE /
    AFTER / AROUND / REPLACE."""

    target: str
    fn: Callable
    kind: str


def hooks(cuda: bool) -> list[Hook]:
    """Every hook this plugin installs (``cuda``: whether torch sees a GPU)."""
    from sglang_mixkv.sglang_seams.mixkv import adakv, fast_prefill, gemma_tail, pools, radix
    from sglang_mixkv.sglang_seams.patches import admin_auth as auth
    from sglang_mixkv.sglang_seams.patches import crash_fixes as fix
    from sglang_mixkv.sglang_seams.patches import fork_cpu
    from sglang_mixkv.sglang_seams.patches import gemma
    from sglang_mixkv.sglang_seams.patches import parser_names
    from sglang_mixkv.sglang_seams.patches import validation as val

    listed = [
        # mixkv/: planned models only
        Hook(pools.POOL_CONFIGURATOR, pools.choose_pool_configurator, "AROUND"),
        Hook(pools.HYBRID_LAYER_IDS, pools.producer_layer_ids, "AROUND"),
        Hook(pools.IS_HYBRID_SWA, pools.hybrid_if_planned, "AROUND"),
        Hook(pools.DERIVE_HYBRID, pools.keep_hybrid_memory, "AROUND"),
        Hook(radix.RADIX_FACTORY, radix.radix_cache_factory, "AROUND"),
        Hook(radix.EVICT_SWA, radix.evict_swa_then_release, "AROUND"),
        Hook(fast_prefill.INIT_NEW, fast_prefill.mark_last_chunks, "AFTER"),
        *(Hook(target, gemma_tail.text_model_on_tail_rows, "AROUND")
          for target in gemma_tail.TEXT_MODELS),
        *(Hook(target, gemma_tail.tail_layer_on_rows, "AROUND")
          for target in gemma_tail.DECODER_LAYERS),
        Hook(adakv.INIT_NEW, adakv.remember_batch, "AFTER"),
        Hook(adakv.MAX_PREFIX, adakv.max_prefix_len, "AROUND"),
        Hook(adakv.RESET_RETRACT, adakv.drop_on_retract, "AFTER"),
        Hook(adakv.UNCACHED_SIZES, adakv.count_parked_prefills, "AROUND"),
        *(Hook(target, adakv.cache_unfinished, "AROUND") for target in adakv.CACHE_UNFINISHED),
        *(Hook(target, adakv.count_release, "BEFORE") for target in adakv.RELEASE),
        # patches/: every model
        Hook(auth.DECIDE, auth.admin_routes_need_the_admin_key, "AROUND"),
        Hook(auth.CHECK_ARGS, auth.keys_from_environment, "BEFORE"),
        Hook(auth.ARGS_REPR, auth.repr_without_keys, "AFTER"),
        Hook(auth.SERVER_INFO_JSON, auth.json_without_keys, "AFTER"),
        Hook(val.GENERATE_REQUEST, val.validate_generate_request, "AROUND"),
        Hook(val.COMPLETION_TO_INTERNAL, val.validate_completion, "AFTER"),
        Hook(val.CREATE_ABORT_TASK, val.validate_before_stream, "BEFORE"),
        Hook(fix.TOKEN_IDS_LOGPROBS, fix.token_ids_logprobs_as_tensors, "AFTER"),
        Hook(fix.SAMPLER_LOGITS, fix.no_all_masked_rows, "AROUND"),
        Hook(fix.LOGPROB_META, fix.input_top_logprobs_always, "AFTER"),
        *(Hook(target, fix.expert_records_need_a_recorder, "BEFORE")
          for target in fix.EXPERT_RECORDS),
        Hook(parser_names.TOOL_PARSER_INIT, parser_names.known_tool_parser, "BEFORE"),
        Hook(parser_names.REASONING_PARSER_INIT, parser_names.known_reasoning_parser, "BEFORE"),
        Hook(gemma.UPDATE_INTERMEDIATE, gemma.pad_numbers_only, "AROUND"),
        Hook(gemma.MODEL_GET_CONFIG, gemma.gemma4_text_names, "AFTER"),
        Hook(gemma.SOFTCAP, gemma.softcap_cpu_tensors, "AROUND"),
        Hook(gemma.GEMMA3N_ATTENTION_INIT, gemma.gemma3n_window_and_producer, "AFTER"),
    ]
    if not cuda:  # xgrammar's pinned bitmask and its CUDA kernel; children forked
        listed += [Hook(fix.GRAMMAR_BITMASK, fix.unpinned_token_bitmask, "REPLACE"),
                   Hook(fix.GRAMMAR_APPLY, fix.apply_vocab_mask_on_cpu, "AROUND"),
                   Hook(fork_cpu.SET_ENVS, fork_cpu.fork_children, "AFTER")]
    return listed


def _torch_native(runner):
    from sglang_mixkv.sglang_seams.patches.torch_native import WindowedTorchNativeBackend

    return WindowedTorchNativeBackend(runner)


def _triton(runner):
    from sglang_mixkv.sglang_seams.mixkv.triton import WindowedTritonBackend

    if runner.model_config.is_encoder_decoder:
        raise ValueError("cross attention is not supported by the triton attention backend")
    return WindowedTritonBackend(runner)


#: SGLang's ``--attention-backend`` names we replace, and the factories SGLang calls.
ATTENTION_BACKENDS = {"torch_native": _torch_native, "triton": _triton}


_registered = False


def register() -> None:
    """Plugin entry point; a second call in the same process does nothing
    (``HookRegistry.register`` appends, so hooks must be registered once)."""
    global _registered
    if _registered:
        return
    _registered = True
    import torch
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS as BACKENDS
    from sglang.srt.models.registry import ModelRegistry
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sglang_mixkv.model import MixAttentionForCausalLM
    from sglang_mixkv.sglang_seams.patches.rotary_cpu import use_plain_torch_rotary

    cuda = torch.cuda.is_available()
    ModelRegistry.models[ARCHITECTURE] = MixAttentionForCausalLM
    BACKENDS.update(ATTENTION_BACKENDS)
    for hook in hooks(cuda):
        HookRegistry.register(hook.target, hook.fn, HookType[hook.kind])
    if not cuda:
        use_plain_torch_rotary()
