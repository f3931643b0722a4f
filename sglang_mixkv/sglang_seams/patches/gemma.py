"""Seam: what SGLang 0.5.17 needs to serve Gemma 4 / Gemma 3n text models, on CPU and
exactly (against transformers 5.12.1's forward of the same folder).

Faults found by serving tiny random configs written by transformers 5.12.1:

``adjust_config_with_unaligned_cpu_tp`` (``configs/update_config.py:193-268``, run for
every model on the CPU device, ``model_executor/model_runner.py:1044-1047``) pads each of
``moe_intermediate_size``, ``intermediate_size``, ... to a multiple of the tensor-parallel
padding with ``attr_value % padding`` (``update_intermediate_size``, ``:140-175``). Gemma 4's
config has ``moe_intermediate_size: null`` and Gemma 3n's ``intermediate_size`` is a list
(one per layer): ``TypeError``, scheduler down. An AROUND hook leaves a None alone (nothing
to pad), and a list alone when every entry is already a multiple of the padding (always
at tp 1); a list that would need padding is refused with a message (SGLang pads one
number, not a list).

SGLang renames Gemma 4's per-kind attention fields only for the multimodal config
(``model_type`` ``gemma4``, ``utils/hf_transformers/config.py:159-187``): base fields
for full-attention layers (``head_dim`` = ``global_head_dim``, ``num_key_value_heads`` =
``num_global_key_value_heads``) and ``swa_*`` for sliding ones, which
``Gemma4DecoderLayer`` (``models/gemma4_causal.py:530-535``), ``Gemma4Attention``
(``:304-309``) and the hybrid pool (``mem_cache/kv_cache_configurator.py:1259-1267``)
read. A text-only folder (``gemma4_text``, ``Gemma4ForCausalLM``) keeps transformers'
names, so full layers get the sliding head dim and the pool stops on the missing
``swa_num_key_value_heads``. An AFTER hook on the ``get_config`` that ``ModelConfig``
calls (``configs/model_config.py:298``) applies the same renaming to ``gemma4_text``.

Gemma 3n's sliding layers saw one token too many, on every backend: SGLang's window
convention is W-1 (``RadixAttention.sliding_window_size``; the model's own
``get_attention_sliding_window_size`` returns ``sliding_window - 1``,
``models/gemma3n_causal.py:34-35``), but ``Gemma3nAttention`` hands its
``RadixAttention`` the config's W (``:409, 420``). Measured: prompt logprobs off by up
to 0.2 past the window, exact within it. An AFTER hook on ``Gemma3nAttention.__init__``
sets W-1. The same hook refuses a config whose KV-shared layers SGLang would point at
the wrong producer: SGLang hard-codes "sliding reads the layer two before the shared
tail, full the one before" (``:373-382``), transformers reads the last earlier layer of
the same type.
"""

from __future__ import annotations

from typing import Any, Callable

UPDATE_INTERMEDIATE = "sglang.srt.configs.update_config.update_intermediate_size"
MODEL_GET_CONFIG = "sglang.srt.configs.model_config.get_config"


def _intermediate_value(model_config: Any, attr: str) -> Any:
    """The value ``update_intermediate_size`` would read (text config first)."""
    hf = getattr(model_config, "hf_config", None)
    for holder in (getattr(hf, "text_config", None), hf, model_config):
        if holder is not None and hasattr(holder, attr):
            return getattr(holder, attr)
    return None


def pad_numbers_only(original: Callable, model_config: Any, attr: str, padding: int, *args: Any,
                     **kwargs: Any) -> Any:
    """AROUND hook on ``update_intermediate_size``: None and aligned per-layer lists are
    left as they are; everything else goes to SGLang."""
    value = _intermediate_value(model_config, attr)
    if value is None:
        return model_config
    if isinstance(value, (list, tuple)):
        if all(v % padding == 0 for v in value):
            return model_config
        raise ValueError(
            f"{attr} is a per-layer list {list(value)} that tensor parallelism on CPU would "
            f"have to pad to multiples of {padding}; SGLang 0.5.17 pads a single number only: "
            "use a --tp-size that divides every entry")
    return original(model_config, attr, padding, *args, **kwargs)


def gemma4_text_names(config: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER hook on ``model_config.get_config``: a ``gemma4_text`` config gets SGLang's
    names for per-kind attention fields, as ``gemma4`` configs do. Idempotent (the
    config is cached): a config that already has ``swa_head_dim`` is left alone."""
    if getattr(config, "model_type", None) != "gemma4_text" or hasattr(config, "swa_head_dim"):
        return None
    rename_gemma4_attention(config)
    return None


def rename_gemma4_attention(text_config: Any) -> None:
    """transformers' Gemma 4 names (base = sliding, ``global_*`` = full) to SGLang's
    (base = full, ``swa_*`` = sliding), in place."""
    sliding_dim, sliding_heads = text_config.head_dim, text_config.num_key_value_heads
    text_config.swa_head_dim = text_config.swa_v_head_dim = sliding_dim
    text_config.swa_num_key_value_heads = sliding_heads
    if getattr(text_config, "global_head_dim", None) is not None:
        text_config.head_dim = text_config.global_head_dim
    if getattr(text_config, "num_global_key_value_heads", None) is not None:
        text_config.num_key_value_heads = text_config.num_global_key_value_heads
    if not hasattr(text_config, "v_head_dim"):
        text_config.v_head_dim = text_config.head_dim


SOFTCAP = "sglang.srt.layers.logits_processor.fused_softcap"


def softcap_cpu_tensors(original: Callable, logits: Any, cap: float) -> Any:
    """AROUND hook on the logits processor's ``fused_softcap`` (Triton,
    ``kernels/ops/activation/softcap.py:71-119``): CPU logits get ``cap * tanh(x / cap)``
    in place with torch, the formula of SGLang's own CPU branch
    (``layers/logits_processor.py:744-750``). Triton's interpreter has no
    ``libdevice.tanh`` (it returns None), and SGLang takes the Triton branch whenever
    its ``is_cpu()`` (an AMX CPU build) is false. Other devices: SGLang's kernel."""
    if logits.device.type != "cpu":
        return original(logits, cap)
    import torch

    torch.tanh(logits.div_(cap), out=logits).mul_(cap)
    return logits


GEMMA3N_ATTENTION_INIT = "sglang.srt.models.gemma3n_causal.Gemma3nAttention.__init__"


def gemma3n_window_and_producer(result: Any, self: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER ``Gemma3nAttention.__init__``: sliding layers attend over W keys (SGLang's
    W-1 convention); a shared layer must read transformers' producer (ValueError)."""
    if self.is_sliding:
        self.attn.sliding_window_size = self.config.sliding_window - 1
    if self.kv_shared_layer_index is not None:
        from sglang_mixkv import gemma

        want = gemma.plan_of(self.config).layers[self.layer_id].source
        if want != self.kv_shared_layer_index:
            raise ValueError(
                f"Gemma 3n layer {self.layer_id} reads layer {want}'s KV (the last earlier "
                f"{self.config.layer_types[self.layer_id]} layer), but SGLang 0.5.17 wires it "
                f"to layer {self.kv_shared_layer_index}: this layer_types pattern is not "
                "servable with SGLang's Gemma 3n")
    return None
