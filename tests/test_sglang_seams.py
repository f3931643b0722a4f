"""In-process checks against the installed SGLang 0.5.17 (no server)."""

from __future__ import annotations

import pytest
import torch

from sglang_mixkv.plan import PRESET_NAMES, resolve
from sglang_mixkv.sizes import ARCHITECTURE, SIZES, write_model_folder


def test_plugin_registers_model_backend_and_pool_hook():
    """SGLang swallows import errors in model packages; our plugin must really load."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.models.registry import ModelRegistry
    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_mixkv.model import MixAttentionForCausalLM
    from sglang_mixkv.sglang_seams.torch_native import WindowedTorchNativeBackend
    from sglang_mixkv.sglang_seams.triton import WindowedTritonBackend

    load_plugins()
    assert ModelRegistry.models[ARCHITECTURE] is MixAttentionForCausalLM
    assert ModelRegistry.resolve_model_cls([ARCHITECTURE])[0] is MixAttentionForCausalLM
    for name in ("torch_native", "triton"):
        assert ATTENTION_BACKENDS[name].__module__ == "sglang_mixkv.sglang_seams"
    assert WindowedTorchNativeBackend.__mro__[1].__name__ == "TorchNativeAttnBackend"
    assert WindowedTritonBackend.__mro__[1].__name__ == "TritonAttnBackend"
    assert any("create_memory_pool_configurator" in t for t in HookRegistry._hooks)


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
