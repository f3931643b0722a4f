"""The roofline of a published Gemma 3n / Gemma 4 E-series shape: stock SGLang 0.5.17
beside sglang-mixkv, on the paper's workload.

    python -m sglang_mixkv.roofline --model gemma-4-e2b [--gpu H100] [--json]

The bound is :func:`mixkv_bench.roofline.bound`'s (prefill and decode do not overlap;
decode runs a full batch of min(level, prompts, max-running, requests the pools hold)).
What differs from our own model's cost model is where the work is, so it is read from
transformers' model of the shape, built on the meta device (no weights):

* **Linear work per token** is the parameter count of every ``nn.Linear`` a token
  passes through: per decoder layer (attention projections, the MLP, which is double
  wide in Gemma 4 E2B's KV-shared layers, the per-layer-input gate and projection,
  Gemma 3n's LAuReL and AltUp router; KV-shared layers have no K/V projections in
  transformers; SGLang's fused ``qkv_proj`` computes and drops them, 1-4% of such a
  layer's work, in stock and ours alike, not counted), plus the
  model's own (the per-layer-input projection, Gemma 3n's AltUp projections) and the LM
  head (one row per prompt in prefill, every request in decode). Gemma 3n's AltUp stream
  mixing (O(16 x hidden) per token), norms, RoPE and soft-capping are left out.
* **Gathered, not streamed**: the token embedding and the per-layer input embeddings
  (2.35B parameters in E2B) are read one row per token. The LM head is tied to the
  embedding and streamed in full each forward.
* **Attention**: ``4 x heads x head_dim`` FLOPs per (query, key), with the head dim of
  the layer's kind (Gemma 4's full layers: ``global_head_dim``); a sliding layer attends
  its last ``sliding_window`` tokens. Every layer reads its producer's K/V (KV-shared
  layers read the layer they share, in SGLang and here alike), so decode bytes per
  request are the same for both; only producers write.
* **Stock SGLang vs ours**: the pools (how many 31K + 1K requests each holds, from
  :func:`mixkv_bench.gemma.capacity_rows`: stock sizes every layer, ours the producers
  only, sliding ones window-bounded) and fast prefill (ours runs the KV-shared tail on
  the rows whose logits are read; stock SGLang 0.5.17 runs it on every row).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from mixkv_bench import gemma
from mixkv_bench import roofline as rl
from sglang_mixkv import gemma as gemma_plan
from sglang_mixkv import kv_math as cap
from sglang_mixkv import plan as plans

STOCK, OURS = "stock SGLang 0.5.17", "sglang-mixkv"
CHUNK = 8192  # --chunked-prefill-size for both (SGLang's default on an 80 GB GPU)


@dataclass(frozen=True)
class Shape:
    """Per-token costs of a published shape (bf16 weights and KV)."""

    name: str
    plan: plans.Plan
    dims: cap.KVDims
    window: int
    heads: int
    head_dims: tuple[int, int]  # (global, local) query head dims
    layer_macs: tuple[int, ...]  # multiply-adds per token of each decoder layer's linears
    model_macs: int  # the model's own linears (not the LM head), every row
    head_macs: int  # the LM head, per row whose logits are read
    streamed_bytes: int  # weights a forward reads in full (LM head included)
    gathered_row_bytes: int  # embedding rows a token reads (token + per-layer inputs)

    def attention_flops_per_key(self, i: int) -> int:
        dim = self.head_dims[0] if self.plan.kinds[i] == plans.GLOBAL else self.head_dims[1]
        return 4 * self.heads * dim

    def kv_bytes(self, i: int) -> int:
        """K + V bytes per token of the producer layer ``i`` reads."""
        kind = self.plan.layers[self.plan.layers[i].source].kind
        return self.dims.layer_bytes if kind == plans.GLOBAL else self.dims.local_layer_bytes

    def span_cap(self, i: int) -> int | None:
        return None if self.plan.kinds[i] == plans.GLOBAL else self.window


@cache
def shape(name: str) -> Shape:
    """A published shape's costs (bf16)."""
    if name not in gemma.PUBLISHED:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(gemma.PUBLISHED)}")
    return shape_of(name, gemma.PUBLISHED[name])


def shape_of(name: str, fields: dict, dtype_bytes: int = 2) -> Shape:
    """Read the costs of the text config ``fields`` from transformers' model of it, built
    on the meta device."""
    import torch

    config = gemma.transformers_config(fields)
    with torch.device("meta"):
        model = gemma._causal_lm(config)(config)

    def linear_params(module) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))

    layers = tuple(linear_params(layer) for layer in model.model.layers)
    own = linear_params(model.model) - sum(layers)
    head = model.lm_head.weight.numel()
    gathered = sum(m.embedding_dim for m in model.model.modules() if isinstance(m, torch.nn.Embedding))
    dims = gemma.kv_dims(fields, dtype_bytes)
    local_dim = fields["head_dim"]
    global_dim = fields.get("global_head_dim") or local_dim
    return Shape(name=name, plan=gemma_plan.plan_of(fields), dims=dims,
                 window=fields["sliding_window"], heads=fields["num_attention_heads"],
                 head_dims=(global_dim, local_dim), layer_macs=layers, model_macs=own,
                 head_macs=head, streamed_bytes=(sum(layers) + own + head) * dtype_bytes,
                 gathered_row_bytes=gathered * dtype_bytes)


def prefill_cost(s: Shape, prompt_len: int, chunk: int, fast_prefill: bool) -> tuple[rl.Cost, int]:
    """One prompt's prefill (weights not included) and its chunk forwards alone; with
    ``fast_prefill`` the KV-shared tail runs on the last row only."""
    n, starts = prompt_len, range(0, prompt_len, chunk)
    tail = set(s.plan.tail) if fast_prefill else set()
    flops = 2 * (s.model_macs * n + s.head_macs)
    kv = float(s.gathered_row_bytes * n)
    for i in range(len(s.plan)):
        span = s.span_cap(i)
        if i in tail:
            flops += 2 * s.layer_macs[i] + s.attention_flops_per_key(i) * min(n, span or n)
            kv += s.kv_bytes(i) * min(n, span or n)
            continue
        flops += 2 * s.layer_macs[i] * n + s.attention_flops_per_key(i) * rl.causal_keys(n, span)
        if s.plan.is_producer(i):
            kv += s.kv_bytes(i) * n
        kv += s.kv_bytes(i) * sum(rl.chunk_keys(a, min(n, a + chunk), span) for a in starts)
    return rl.Cost(flops, kv), len(starts)


def decode_step_cost(s: Shape, batch: int, spans: list[float]) -> rl.Cost:
    """One decode step of ``batch`` requests at per-layer (mean) ``spans``: weights once;
    per request its embedding rows, every layer's read of its producer's K/V span and
    each producer's new K/V."""
    macs = sum(s.layer_macs) + s.model_macs + s.head_macs
    flops = 2 * macs + sum(s.attention_flops_per_key(i) * x for i, x in enumerate(spans))
    kv = (s.gathered_row_bytes + sum(s.kv_bytes(i) for i in s.plan.producers)
          + sum(s.kv_bytes(i) * x for i, x in enumerate(spans)))
    return rl.Cost(batch * flops, s.streamed_bytes + batch * kv)


def admitted(name: str, gpu_mem: int, mem_fraction: float, request_tokens: int) -> dict[str, int]:
    """Requests of ``request_tokens`` each pool holds at once (stock and ours)."""
    rows = gemma.capacity_rows([name], [gpu_mem], mem_fraction, request_tokens, chunk=CHUNK)
    return {r["pools"]: r["requests_held"] for r in rows}


def sweep(name: str, hw: rl.Hardware, wl: rl.Workload, mem_fraction: float = 0.85,
          max_running: int | None = None) -> "pd.DataFrame":  # noqa: F821
    """Stock SGLang and ours at every level of ``wl``, with ``speedup_vs_stock``.
    ``max_running`` (default: the workload's prompts) caps both the same."""
    import pandas as pd

    s = shape(name)
    held = admitted(name, hw.memory, mem_fraction, wl.input_len + wl.output_len)
    spans = rl.mean_spans(s.plan, wl.input_len + 1, wl.output_len - 1, s.window)
    rows = []
    for pools, fast in ((STOCK, False), (OURS, True)):
        one, forwards = prefill_cost(s, wl.input_len, CHUNK, fast)
        serving = rl.Serving(kv_budget=0, max_running=max_running or wl.num_prompts, chunk=CHUNK,
                             eviction_interval=0)
        for level in wl.concurrency:
            b = rl.bound(pools, level, hw, wl, serving, admits=held[pools], prefill_one=one,
                         forwards=forwards, weights=s.streamed_bytes,
                         step=lambda batch: decode_step_cost(s, batch, spans))
            rows.append({"model": name, **b.__dict__})
    df = pd.DataFrame(rows).rename(columns={"plan": "pools"})
    base = df[df["pools"] == STOCK].set_index("level")["output_tok_per_s"]
    df["speedup_vs_stock"] = df["output_tok_per_s"] / df["level"].map(base)
    return df


def assumptions(hw: rl.Hardware) -> list[str]:
    return [
        f"hardware: {hw.describe()}",
        "the bound of mixkv_bench.roofline (prefill and decode do not overlap; decode runs a "
        "full batch of min(level, prompts, max-running, requests the pools hold))",
        "work read from transformers' model of the shape: every nn.Linear a token passes "
        "(KV-shared layers have no K/V projections), attention per layer kind over its span; "
        "embedding and per-layer-input tables gathered by row, the tied LM head streamed; "
        "SGLang's shared layers still compute and drop K/V in their fused qkv_proj "
        "(gemma3n_causal.py:448, gemma4_causal.py:413; 1-4% of such a layer's linear work, "
        "in both, since ours serves SGLang's model class): not counted",
        f"pools: {STOCK} sizes every layer, {OURS} the non-shared ones (sliding ones "
        "window-bounded), at the KV budget memory x fraction - the text model's bf16 weights",
        f"fast prefill: {OURS} runs the KV-shared tail on the logit rows only, {STOCK} on "
        f"every row; chunk {CHUNK} for both",
    ]


def table(df: "pd.DataFrame") -> "pd.DataFrame":  # noqa: F821
    cols = {"pools": "pools", "level": "conc", "running": "running", "limited_by": "batch limit",
            "prefill_s": "prefill s", "decode_s": "decode s", "decode_bound": "decode bound",
            "output_tok_per_s": "out tok/s", "speedup_vs_stock": "vs stock",
            "ttft_ms": "TTFT ms >=", "tpot_ms": "TPOT ms >="}
    return df[list(cols)].rename(columns=cols)
