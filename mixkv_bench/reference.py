"""The same MixAttention model in plain PyTorch: no SGLang, no KV cache, no pools.

Used only by tests and checks. Every forward recomputes the whole sequence, so what it
returns depends on nothing but the weights, the plan and the token ids: the SGLang
path (chunked prefill, radix-cache hits, windowed pools, evictions) must match it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sglang_mixkv import plan as plans
from sglang_mixkv.rope import Rope


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (x32 * weight.float()).to(x.dtype)


def attention_mask(n: int, window: int | None) -> torch.Tensor:
    """[n, n] bool: query i sees key j iff j <= i (and i - j < window for local)."""
    i = torch.arange(n).unsqueeze(1)
    j = torch.arange(n).unsqueeze(0)
    mask = j <= i
    if window is not None:
        mask &= (i - j) < window
    return mask


@dataclass
class Generation:
    tokens: list[int]
    logprobs: list[float]  # log-softmax of each chosen token


class Reference:
    def __init__(self, model_dir: str | Path, dtype: torch.dtype = torch.float32):
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        self.cfg = json.loads((model_dir / "config.json").read_text())
        self.plan = plans.from_config(self.cfg)
        self.w = {k: v.to(dtype) for k, v in load_file(str(model_dir / "model.safetensors")).items()}
        c = self.cfg
        self.heads, self.kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
        self.head_dim = c.get("head_dim") or c["hidden_size"] // self.heads
        self.eps = c["rms_norm_eps"]
        self.window = c.get("sliding_window")
        self.rope = Rope(self.head_dim, c["max_position_embeddings"], c.get("rope_theta", 10000.0))

    @torch.no_grad()
    def logits(self, ids: list[int]) -> torch.Tensor:
        """[len(ids), vocab] float32 logits of the next token at every position."""
        n = len(ids)
        pos = torch.arange(n)
        x = self.w["model.embed_tokens.weight"][torch.tensor(ids)]
        kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        masks = {kind: attention_mask(n, self.window if kind == plans.LOCAL else None)
                 for kind in (plans.GLOBAL, plans.LOCAL)}
        for i, layer in enumerate(self.plan.layers):
            p = f"model.layers.{i}."
            h = rms_norm(x, self.w[p + "input_layernorm.weight"], self.eps)
            q = h @ self.w[p + "self_attn.q_proj.weight"].T
            if layer.source == i:
                k = h @ self.w[p + "self_attn.k_proj.weight"].T
                v = h @ self.w[p + "self_attn.v_proj.weight"].T
                q, k = self.rope(pos, q, k)
                kv[i] = (k, v)
            else:
                q, _ = self.rope(pos, q)
                k, v = kv[layer.source]
            o = F.scaled_dot_product_attention(
                q.view(n, self.heads, self.head_dim).transpose(0, 1),
                k.view(n, self.kv_heads, self.head_dim).transpose(0, 1),
                v.view(n, self.kv_heads, self.head_dim).transpose(0, 1),
                attn_mask=masks[layer.kind], enable_gqa=True,
            ).transpose(0, 1).reshape(n, -1)
            x = x + o @ self.w[p + "self_attn.o_proj.weight"].T
            h = rms_norm(x, self.w[p + "post_attention_layernorm.weight"], self.eps)
            gate = h @ self.w[p + "mlp.gate_proj.weight"].T
            up = h @ self.w[p + "mlp.up_proj.weight"].T
            x = x + (F.silu(gate) * up) @ self.w[p + "mlp.down_proj.weight"].T
        x = rms_norm(x, self.w["model.norm.weight"], self.eps)
        return (x @ self.w["lm_head.weight"].T).float()

    def prompt_logprobs(self, ids: list[int]) -> list[float]:
        """log p(ids[t] | ids[:t]) for t >= 1 (SGLang's input_token_logprobs[1:])."""
        lp = torch.log_softmax(self.logits(ids), -1)
        return [lp[t - 1, ids[t]].item() for t in range(1, len(ids))]

    def generate(self, ids: list[int], max_new_tokens: int) -> Generation:
        """Greedy decoding, recomputing the full sequence at every step."""
        seq, out, lps = list(ids), [], []
        for _ in range(max_new_tokens):
            lp = torch.log_softmax(self.logits(seq)[-1], -1)
            tok = int(lp.argmax())
            out.append(tok)
            lps.append(lp[tok].item())
            seq.append(tok)
        return Generation(out, lps)
