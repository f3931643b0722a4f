"""Gemma 3n / Gemma 4 E-series: tiny random folders, the published shapes, and their KV
capacity with SGLang's stock pools beside ours.

- :func:`write_tiny` writes a tiny random Gemma folder with transformers (the
  independent reference the server tests compare against), a word-level tokenizer
  beside it.
- :data:`PUBLISHED` holds the text configs of the four public E-series checkpoints,
  each value from the sources in :data:`SOURCES` (none of the ``config.json`` files
  themselves was readable from here; the conversion scripts that wrote them were).
- :func:`capacity_rows` puts, per model and GPU, SGLang 0.5.17's own pool (every layer
  a buffer: :func:`sglang_mixkv.kv_math.stock_pool_split`) beside ours (producers only,
  local ones window-bounded: :func:`sglang_mixkv.kv_math.pool_split`), at the KV budget
  left after the text model's weights, counted by instantiating transformers' model on
  the meta device (per-layer input embeddings included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sglang_mixkv import gemma
from sglang_mixkv import kv_math as cap
from sglang_mixkv.defaults import eviction_interval
from sglang_mixkv.model_folder import write_tokenizer

_S, _F = "sliding_attention", "full_attention"

#: text configs of the public checkpoints (``google/<name>-it``; the multimodal
#: ``*ForConditionalGeneration`` wraps them as ``text_config``)
PUBLISHED: dict[str, dict[str, Any]] = {
    "gemma-3n-e2b": dict(
        model_type="gemma3n_text", num_hidden_layers=30, hidden_size=2048,
        intermediate_size=[8192] * 30, num_attention_heads=8, num_key_value_heads=2,
        head_dim=256, sliding_window=512, layer_types=([_S] * 4 + [_F]) * 6,
        num_kv_shared_layers=10, hidden_size_per_layer_input=256, vocab_size=262400,
        vocab_size_per_layer_input=262144, max_position_embeddings=32768,
        activation_sparsity_pattern=[0.95] * 10 + [0.0] * 20, laurel_rank=64,
        altup_num_inputs=4, final_logit_softcapping=30.0),
    "gemma-3n-e4b": dict(
        model_type="gemma3n_text", num_hidden_layers=35, hidden_size=2048,
        intermediate_size=[16384] * 35, num_attention_heads=8, num_key_value_heads=2,
        head_dim=256, sliding_window=512, layer_types=([_S] * 4 + [_F]) * 7,
        num_kv_shared_layers=15, hidden_size_per_layer_input=256, vocab_size=262400,
        vocab_size_per_layer_input=262144, max_position_embeddings=32768,
        activation_sparsity_pattern=[0.95] * 10 + [0.0] * 25, laurel_rank=64,
        altup_num_inputs=4, final_logit_softcapping=30.0),
    "gemma-4-e2b": dict(
        model_type="gemma4_text", num_hidden_layers=35, hidden_size=1536,
        intermediate_size=6144, use_double_wide_mlp=True, num_attention_heads=8,
        num_key_value_heads=1, head_dim=256, global_head_dim=512,
        num_global_key_value_heads=None, attention_k_eq_v=False, sliding_window=512,
        layer_types=([_S] * 4 + [_F]) * 7, num_kv_shared_layers=20,
        hidden_size_per_layer_input=256, vocab_size=262144, vocab_size_per_layer_input=262144,
        max_position_embeddings=131072, final_logit_softcapping=30.0),
    "gemma-4-e4b": dict(
        model_type="gemma4_text", num_hidden_layers=42, hidden_size=2560,
        intermediate_size=10240, use_double_wide_mlp=False, num_attention_heads=8,
        num_key_value_heads=2, head_dim=256, global_head_dim=512,
        num_global_key_value_heads=None, attention_k_eq_v=False, sliding_window=512,
        layer_types=([_S] * 5 + [_F]) * 7, num_kv_shared_layers=18,
        hidden_size_per_layer_input=256, vocab_size=262144, vocab_size_per_layer_input=262144,
        max_position_embeddings=131072, final_logit_softcapping=30.0),
}

SOURCES = {
    "gemma-3n": "transformers src/transformers/models/gemma3n/convert_gemma3n_weights.py "
                "@0d9e0ea8 (_VARIANTS gemma3n_e2b / gemma3n_e4b) and configuration_gemma3n.py "
                "@01854809 (defaults); google-deepmind/gemma gm/nn/gemma3n/_gemma3n.py @14336dba",
    "gemma-4": "transformers src/transformers/models/gemma4/convert_gemma4_weights.py @0f3f0632 "
               "(_VARIANTS gemma-4-e2b / gemma-4-e4b) and configuration_gemma4.py @008e5743; "
               "google-deepmind/gemma gm/nn/gemma4/_gemma4.py @b2dc124b; NVIDIA/TensorRT-Edge-LLM "
               "tests/python-unittests/test_gemma4_config.py @33435397 (E2B text_config "
               "'faithful to the published checkpoint'); ollama x/models/gemma4/gemma4_test.go "
               "@017eb8ae (E2B, E4B)",
}


def source_of(name: str) -> str:
    return SOURCES["gemma-4" if name.startswith("gemma-4") else "gemma-3n"]


def transformers_config(fields: dict[str, Any]):
    """transformers' text config for ``fields`` (Gemma 3n or 4)."""
    fields = dict(fields)
    kind = fields.pop("model_type")
    if kind == "gemma4_text":
        from transformers import Gemma4TextConfig as Config
    elif kind == "gemma3n_text":
        from transformers import Gemma3nTextConfig as Config
    else:
        raise ValueError(f"not a Gemma 3n / 4 text config: {kind}")
    return Config(**fields)


def _causal_lm(config):
    if config.model_type == "gemma4_text":
        from transformers import Gemma4ForCausalLM as Model
    else:
        from transformers import Gemma3nForCausalLM as Model
    return Model


def text_params(fields: dict[str, Any]) -> int:
    """Parameters of the text model (``*ForCausalLM``: what SGLang's text classes load),
    counted on transformers' model built on the meta device; tied embeddings once."""
    import torch

    config = transformers_config(fields)
    with torch.device("meta"):
        model = _causal_lm(config)(config)
    return sum(p.numel() for p in model.parameters())


# ---- tiny random folders ---------------------------------------------------------------
#: tiny shapes: 6 layers, window 8, the last 2 layers KV-shared (one of each type), float32
TINY: dict[str, dict[str, Any]] = {
    "gemma4": dict(
        model_type="gemma4_text", vocab_size=512, vocab_size_per_layer_input=512,
        hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, global_head_dim=32, hidden_size_per_layer_input=8,
        sliding_window=8, num_kv_shared_layers=2, layer_types=[_S, _S, _F, _S, _S, _F],
        max_position_embeddings=1024, final_logit_softcapping=30.0),
    "gemma3n": dict(
        model_type="gemma3n_text", vocab_size=512, vocab_size_per_layer_input=512,
        hidden_size=64, intermediate_size=[128] * 6, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, hidden_size_per_layer_input=8, sliding_window=8,
        num_kv_shared_layers=2, laurel_rank=8, layer_types=[_S, _S, _S, _F, _S, _F],
        activation_sparsity_pattern=[0.95] + [0.0] * 5, max_position_embeddings=1024,
        final_logit_softcapping=30.0),
}


def write_tiny(out: str | Path, family: str, seed: int = 0, **overrides: Any) -> Path:
    """A tiny random Gemma text folder (``family``: ``gemma4`` or ``gemma3n``) written by
    transformers' ``save_pretrained``, float32, with a word-level tokenizer."""
    import torch

    if family not in TINY:
        raise ValueError(f"unknown Gemma family {family!r}; known: {sorted(TINY)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = transformers_config({**TINY[family], **overrides, "pad_token_id": 0,
                                  "bos_token_id": 1, "eos_token_id": 2})
    model_class = _causal_lm(config)
    config.architectures = [model_class.__name__]
    torch.manual_seed(seed)
    model_class(config).to(torch.float32).save_pretrained(out)
    write_tokenizer(out, config.vocab_size)
    return out


def write_tiny_multimodal(out: str | Path, seed: int = 0) -> Path:
    """A tiny random ``Gemma4ForConditionalGeneration`` checkpoint (the published
    checkpoints' class: text model under ``model.language_model``, one-layer vision and
    audio towers) written by transformers, float32, with a word-level tokenizer."""
    import torch
    from transformers import (Gemma4AudioConfig, Gemma4Config, Gemma4ForConditionalGeneration,
                              Gemma4VisionConfig)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = transformers_config({**TINY["gemma4"], "pad_token_id": 0, "bos_token_id": 1,
                                "eos_token_id": 2})
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                global_head_dim=16)
    audio = Gemma4AudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              output_proj_dims=64)
    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(Gemma4Config(text_config=text, vision_config=vision,
                                                        audio_config=audio))
    model.to(torch.float32).save_pretrained(out)
    write_tokenizer(out, text.vocab_size)
    return out


class TransformersReference:
    """transformers' own model of a folder (``AutoModelForCausalLM``, float32): the
    independent reference a served Gemma folder is held to."""

    def __init__(self, folder: str | Path):
        import torch
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def greedy(self, ids: list[int], n: int) -> tuple[list[int], list[float]]:
        """``n`` greedy tokens (a full forward per step, no cache, EOS ignored) and the
        logprob of every token of ``ids + tokens`` from the second on."""
        import torch

        with torch.no_grad():
            seq = list(ids)
            for _ in range(n):
                seq.append(int(self.model(torch.tensor([seq])).logits[0, -1].argmax()))
            lp = torch.log_softmax(self.model(torch.tensor([seq])).logits[0].float(), -1)
        return seq[len(ids):], [lp[t - 1, seq[t]].item() for t in range(1, len(seq))]


# ---- capacity of the published shapes ---------------------------------------------------
def kv_dims(fields: dict[str, Any], dtype_bytes: int = 2) -> cap.KVDims:
    """Per-kind KV geometry: Gemma 4's full layers use ``global_head_dim`` (and
    ``num_global_key_value_heads`` when set), its sliding layers ``head_dim``."""
    heads, dim = fields["num_key_value_heads"], fields["head_dim"]
    if fields["model_type"] == "gemma4_text":
        return cap.KVDims(fields.get("num_global_key_value_heads") or heads,
                          fields.get("global_head_dim") or dim, dtype_bytes,
                          local_kv_heads=heads, local_head_dim=dim)
    return cap.KVDims(heads, dim, dtype_bytes)


def capacity_rows(names: list[str], gpu_mems: list[int], mem_fraction: float = 0.85,
                  request_tokens: int = cap.PAPER_REQUEST, chunk: int = 8192) -> list[dict]:
    """Per published model and GPU memory: SGLang's stock pool and ours at the same KV
    budget (bf16 weights and KV), and how many requests of ``request_tokens`` each holds."""
    rows = []
    for name in names:
        if name not in PUBLISHED:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(PUBLISHED)}")
        fields = PUBLISHED[name]
        plan = gemma.plan_of(fields)
        dims = kv_dims(fields)
        window = fields["sliding_window"]
        params = text_params(fields)
        hybrid = fields["model_type"] == "gemma4_text"
        for gpu_mem in gpu_mems:
            budget = cap.kv_budget(gpu_mem, mem_fraction, params * 2)
            if budget <= 0:
                raise ValueError(f"{name}: {gpu_mem / 2**30:.0f} GiB x {mem_fraction} cannot "
                                 f"hold {params * 2 / 2**30:.1f} GiB of weights")
            stock = cap.stock_pool_split(budget, plan, dims, hybrid=hybrid)
            n = cap.max_concurrent(budget, plan, dims, window, request_tokens)
            sizing = dict(window=window, chunk=chunk, page=1,
                          eviction_interval=eviction_interval(window), chunks_in_flight=2)
            ours = cap.pool_split(budget, plan, dims, max_running=max(1, n), **sizing)
            pt = cap.bytes_per_token(plan, dims)
            base = {"model": name, "gpu_mem_gib": gpu_mem / 2**30,
                    "text_params_b": params / 1e9, "kv_budget_gib": budget / 2**30,
                    "layers": len(plan)}
            n_full = fields["layer_types"].count(_F)
            stock_bytes = ((n_full * dims.layer_bytes, (len(plan) - n_full) * dims.local_layer_bytes)
                           if hybrid else (len(plan) * dims.layer_bytes, 0))
            rows.append({**base, "pools": "stock SGLang 0.5.17",
                         "layers_with_kv": len(plan),
                         "global_bytes_per_token": stock_bytes[0],
                         "local_bytes_per_token": stock_bytes[1],
                         "pool_global_tokens": stock.global_tokens,
                         "pool_local_tokens": stock.local_tokens,
                         "requests_held": stock.global_tokens // request_tokens})
            rows.append({**base, "pools": "sglang-mixkv",
                         "layers_with_kv": len(plan.producers),
                         "global_bytes_per_token": pt.global_bytes,
                         "local_bytes_per_token": pt.local_bytes,
                         "pool_global_tokens": ours.global_tokens,
                         "pool_local_tokens": ours.local_tokens,
                         "requests_formula": n,
                         "requests_held": cap.pool_max_requests(ours, plan, request_tokens,
                                                                **sizing)})
    return rows
