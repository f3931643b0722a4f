"""In-process checks against the installed SGLang 0.5.17 (no server)."""

from __future__ import annotations

import pytest
import torch

from sglang_mixkv.plan import PRESET_NAMES, resolve
from sglang_mixkv.model_folder import ARCHITECTURE, SIZES, write_model_folder


def test_plugin_registers_the_model_backends_and_every_hook():
    """SGLang swallows import errors in model packages; our plugin must really load, and
    every hook target must exist in SGLang 0.5.17 (an upgrade that moves one fails here,
    not inside a server)."""
    import pkgutil

    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.models.registry import ModelRegistry
    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_mixkv import sglang_seams
    from sglang_mixkv.model import MixAttentionForCausalLM

    load_plugins()
    assert ModelRegistry.models[ARCHITECTURE] is MixAttentionForCausalLM
    assert ModelRegistry.resolve_model_cls([ARCHITECTURE])[0] is MixAttentionForCausalLM
    for name, factory in sglang_seams.ATTENTION_BACKENDS.items():
        assert ATTENTION_BACKENDS[name] is factory
    listed = sglang_seams.hooks(cuda=torch.cuda.is_available())
    # 7 (3 for Gemma's layer lists) + 4 (Gemma fast prefill) + 9 (Ada-KV) mixkv/ hooks,
    # 4 admin/key hooks, 3 validation, 6 crash fixes + 2 CPU-only ones, 2 parser names,
    # 4 Gemma fixes, and on CPU the forked subprocesses
    assert len(listed) == 42 - 3 * torch.cuda.is_available()
    for hook in listed:
        assert callable(pkgutil.resolve_name(hook.target)), hook.target
        registered = [fn for _, fn, _ in HookRegistry._hooks[hook.target]]
        assert registered.count(hook.fn) == 1, hook.target  # once, though register() ran again
    sglang_seams.register()  # a second call (SGLang loads plugins per process) adds nothing
    assert all([fn for _, fn, _ in HookRegistry._hooks[h.target]].count(h.fn) == 1 for h in listed)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_sglang_builds_buffers_for_producers_only(name, tmp_path):
    """SGLang's ModelConfig reads our config.json and its hybrid pool gets one K and one
    V buffer per producer layer, none for consumers."""
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    size = SIZES["tiny"]
    plan = resolve(name, size.num_layers)
    mc = ModelConfig(str(write_model_folder(tmp_path / name, size, name)))
    if not mc.is_hybrid_swa:  # a plain plan: SGLang's stock pool, every layer a producer
        assert not plan.has_consumers and not plan.local_producers
        return
    assert mc.full_attention_layer_ids == plan.global_producers
    assert mc.swa_attention_layer_ids == plan.local_producers
    pool = SWAKVPool(size=64, size_swa=32, page_size=1, dtype=torch.float32,
                     head_num=size.kv_heads, head_dim=size.head_dim,
                     swa_attention_layer_ids=mc.swa_attention_layer_ids,
                     full_attention_layer_ids=mc.full_attention_layer_ids, device="cpu")
    assert len(pool.full_kv_pool.k_buffer) == len(pool.full_kv_pool.v_buffer) == len(plan.global_producers)
    assert len(pool.swa_kv_pool.k_buffer) == len(pool.swa_kv_pool.v_buffer) == len(plan.local_producers)
    assert sorted(pool.layers_mapping) == plan.producers
    # every consumer reads a layer that has a buffer
    assert {plan.layers[i].source for i in range(len(plan))} <= set(pool.layers_mapping)


def test_without_cuda_the_launcher_forks_its_subprocesses(monkeypatch):
    """The hook after SGLang's ``spawn`` (engine.py:1670) leaves ``fork`` for this process;
    ``MIXKV_SPAWN=1`` keeps ``spawn``. (Every server test runs forked children.)"""
    import multiprocessing

    from sglang_mixkv.sglang_seams.patches import fork_cpu

    before = multiprocessing.get_start_method(allow_none=True)
    try:
        multiprocessing.set_start_method("spawn", force=True)
        monkeypatch.setenv(fork_cpu.OPT_OUT, "1")
        fork_cpu.fork_children(None)
        assert multiprocessing.get_start_method() == "spawn"
        monkeypatch.delenv(fork_cpu.OPT_OUT)
        fork_cpu.fork_children(None)
        assert multiprocessing.get_start_method() == "fork"
    finally:
        multiprocessing.set_start_method(before, force=True)


def test_an_unknown_parser_name_is_a_400_listing_the_known_ones():
    """``/parse_function_call`` and ``/separate_reasoning`` build the parser the client
    names; stock SGLang raised ValueError there (a 500). The server's own names (chat
    serving, the scheduler) are the same constructors, so known names must still pass."""
    from fastapi import HTTPException
    from sglang.srt.function_call.function_call_parser import FunctionCallParser
    from sglang.srt.parser.reasoning_parser import ReasoningParser
    from sglang.srt.plugins import load_plugins

    load_plugins()
    for build, field in ((lambda n: FunctionCallParser(tools=[], tool_call_parser=n),
                          "tool_call_parser"),
                         (lambda n: ReasoningParser(model_type=n), "reasoning_parser")):
        for name in ("nope", None, 5):
            with pytest.raises(HTTPException) as e:
                build(name)
            assert e.value.status_code == 400 and f"{field} {name!r}" in e.value.detail
            assert "qwen25" in e.value.detail or "deepseek-r1" in e.value.detail
    assert FunctionCallParser(tools=[], tool_call_parser="qwen25").detector is not None
    assert ReasoningParser(model_type="DeepSeek-R1").detector is not None
