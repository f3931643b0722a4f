"""The same MixAttention model in plain PyTorch: no SGLang, no KV cache, no pools.

Used by tests and checks. Every forward recomputes the whole sequence, so what it
returns depends on nothing but the weights, the plan and the token ids: the SGLang
path (chunked prefill, radix-cache hits, windowed pools, evictions) must match it.

Ada-KV, written here apart from the server's ``sglang_mixkv.adakv`` so the two can
disagree: :meth:`Reference.adakv_kept` computes each global producer's kept prompt
positions per KV head (scores in float64; ties broken by head, then position) and
:meth:`Reference.logits` / :meth:`Reference.generate` take kept sets as masks: a query
after the prompt sees, in a global producer's KV (and its consumers'), only its head's
kept prompt positions and the tokens since the prompt; prompt rows see everything.
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


@dataclass(frozen=True)
class AdaBudget:
    """The reference's own copy of Ada-KV's settings (see ``serve --adakv-*``)."""

    budget: int
    window: int = 32
    alpha: float = 0.2
    kernel: int = 7
    scoring: str = "producer"  # or "readers"
    rule: str = "adakv"  # or the baselines "recent" (sink + most recent) and "random"
    sink: int = 4
    seed: int = 0


#: kept prompt positions: {global producer: [per KV head: positions]}, and the prompt length
Kept = dict[int, list[list[int]]]


@dataclass
class Generation:
    tokens: list[int]
    logprobs: list[float]  # log-softmax of each chosen token


class Reference:
    def __init__(self, model_dir: str | Path, dtype: torch.dtype = torch.float32):
        from safetensors.torch import load_file

        self.model_dir = model_dir = Path(model_dir)
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
    def logits(self, ids: list[int], kept: Kept | None = None,
               prompt_len: int | None = None) -> torch.Tensor:
        """[len(ids), vocab] float32 logits of the next token at every position; with
        ``kept``, rows from ``prompt_len`` on see only the kept prompt positions of the
        global producers named there (and of their consumers)."""
        return self._forward(ids, kept, prompt_len)[0]

    def _forward(self, ids: list[int], kept: Kept | None = None, prompt_len: int | None = None,
                 capture: bool = False):
        """Logits, and with ``capture`` every layer's post-RoPE q and its K."""
        n = len(ids)
        pos = torch.arange(n)
        x = self.w["model.embed_tokens.weight"][torch.tensor(ids)]
        kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        masks = {kind: attention_mask(n, self.window if kind == plans.LOCAL else None)
                 for kind in (plans.GLOBAL, plans.LOCAL)}
        captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
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
            if capture:
                captured[i] = (q, k)
            mask = masks[layer.kind]
            if kept is not None and layer.source in kept:
                mask = self._kept_mask(n, kept[layer.source], prompt_len)
            o = F.scaled_dot_product_attention(
                q.view(n, self.heads, self.head_dim).transpose(0, 1),
                k.view(n, self.kv_heads, self.head_dim).transpose(0, 1),
                v.view(n, self.kv_heads, self.head_dim).transpose(0, 1),
                attn_mask=mask, enable_gqa=True,
            ).transpose(0, 1).reshape(n, -1)
            x = x + o @ self.w[p + "self_attn.o_proj.weight"].T
            h = rms_norm(x, self.w[p + "post_attention_layernorm.weight"], self.eps)
            gate = h @ self.w[p + "mlp.gate_proj.weight"].T
            up = h @ self.w[p + "mlp.up_proj.weight"].T
            x = x + (F.silu(gate) * up) @ self.w[p + "mlp.down_proj.weight"].T
        x = rms_norm(x, self.w["model.norm.weight"], self.eps)
        return (x @ self.w["lm_head.weight"].T).float(), captured

    def _kept_mask(self, n: int, heads: list[list[int]], prompt_len: int) -> torch.Tensor:
        """[query heads, n, n]: causal; rows >= prompt_len see only their KV head's kept
        prompt positions and everything from prompt_len on."""
        causal = attention_mask(n, None)
        per_kv = []
        for positions in heads:
            seen = torch.zeros(n, dtype=torch.bool)
            seen[list(positions)] = True
            seen[prompt_len:] = True
            rows = torch.arange(n).unsqueeze(1) < prompt_len
            per_kv.append(causal & (rows | seen.unsqueeze(0)))
        return torch.stack(per_kv).repeat_interleave(self.heads // self.kv_heads, dim=0)

    @torch.no_grad()
    def adakv_kept(self, prompt: list[int], cfg: AdaBudget, tp: int = 1) -> Kept:
        """Each global producer's kept positions per KV head (selection + window) after
        ``prompt``, as Ada-SnapKV chooses them (FFY0/AdaKV's ``AdaptiveSnapKVCluster``,
        GQA mean); ``tp``: budgets allocated within each tensor-parallel rank's heads.
        Empty when the prompt is shorter than the budget (no compression)."""
        n, w = len(prompt), cfg.window
        if n < cfg.budget:
            return {}
        if cfg.rule != "adakv":
            return {prod: [sorted(sel) + list(range(n - w, n))
                           for sel in self._baseline(prompt, n - w, prod, cfg)]
                    for prod in self.plan.global_producers}
        return {prod: [sorted(sel) + list(range(n - w, n)) for sel in self._allocate(scores, cfg, tp)]
                for prod, scores in self.adakv_scores(prompt, cfg).items()}

    @torch.no_grad()
    def adakv_scores(self, prompt: list[int], cfg: AdaBudget) -> dict[int, torch.Tensor]:
        """Per global producer, the pooled float64 scores [Hkv, P - w] of the positions
        before the observation window: the last w queries of the scoring layers attend to
        all P keys (causal inside the window), averaged over queries, layers and each KV
        head's query heads, then max-pooled."""
        n, w = len(prompt), cfg.window
        _, captured = self._forward(prompt, capture=True)
        group = self.heads // self.kv_heads
        out = {}
        for prod in self.plan.global_producers:
            readers = [i for i, layer in enumerate(self.plan.layers) if layer.source == prod]
            if cfg.scoring == "producer":
                readers = [prod]
            keys = captured[prod][1].double().view(n, self.kv_heads, self.head_dim)
            per_reader = []
            for r in readers:
                q = captured[r][0].double().view(n, self.heads, self.head_dim)[n - w:]
                att = torch.zeros(self.heads, w, n, dtype=torch.float64)
                for hq in range(self.heads):
                    logits = q[:, hq] @ keys[:, hq // group].T * self.head_dim ** -0.5
                    for r_ in range(w):  # query at position n - w + r_ sees keys <= it
                        logits[r_, n - w + r_ + 1:] = float("-inf")
                    att[hq] = torch.softmax(logits, dim=-1)
                per_reader.append(att.mean(dim=1)[:, : n - w])  # [Hq, n - w]
            per_q = torch.stack(per_reader).mean(dim=0)
            per_kv = per_q.view(self.kv_heads, group, n - w).mean(dim=1)
            pad = cfg.kernel // 2
            padded = F.pad(per_kv, (pad, pad), value=float("-inf"))
            out[prod] = padded.unfold(1, cfg.kernel, 1).max(dim=-1).values
        return out

    def _baseline(self, prompt: list[int], length: int, layer: int,
                  cfg: AdaBudget) -> list[list[int]]:
        """The score-free rules, per KV head: B - w positions of the ``length`` before the
        window. ``recent``: positions below ``sink`` and the latest; ``random``: the first
        B - w of a permutation drawn, per head h, by a CPU generator seeded
        ``seed * 1,000,003 + layer * 1,009 + h + 7,919 * crc32(prompt ids as int64 LE)``
        (the rule's definition)."""
        import struct
        import zlib

        key = zlib.crc32(struct.pack(f"<{len(prompt)}q", *prompt))
        b = cfg.budget - cfg.window
        if cfg.rule == "recent":
            sink = min(cfg.sink, b)
            return [list(range(sink)) + list(range(length - b + sink, length))] * self.kv_heads
        if cfg.rule == "random":
            return [torch.randperm(length, generator=torch.Generator().manual_seed(
                cfg.seed * 1_000_003 + layer * 1_009 + h + 7_919 * key))[:b].tolist()
                for h in range(self.kv_heads)]
        raise ValueError(f"unknown rule {cfg.rule!r}")

    @staticmethod
    def _allocate(scores: torch.Tensor, cfg: AdaBudget, tp: int) -> list[list[int]]:
        """Per head, the selected positions: a top-(heads x (B - w)) over every
        (head, position) of one rank counts each head's picks; head h keeps its
        round((1 - alpha) x picks + int(alpha x (B - w))) best. Ties: lower head, then
        lower position first."""
        hkv, length = scores.shape
        b_sel = cfg.budget - cfg.window
        floor = int(b_sel * cfg.alpha)
        per_rank = hkv // tp
        kept = []
        for rank in range(tp):
            heads = range(rank * per_rank, (rank + 1) * per_rank)
            cells = sorted(((-float(scores[h, j]), h, j) for h in heads for j in range(length)))
            picks = {h: 0 for h in heads}
            for _, h, _ in cells[: per_rank * b_sel]:
                picks[h] += 1
            for h in heads:
                cap = min(length, int(torch.round(torch.tensor(picks[h] * (1 - cfg.alpha) + floor))))
                order = sorted(range(length), key=lambda j: (-float(scores[h, j]), j))
                kept.append(order[:cap])
        return kept

    def prompt_logprobs(self, ids: list[int]) -> list[float]:
        """log p(ids[t] | ids[:t]) for t >= 1 (SGLang's input_token_logprobs[1:])."""
        lp = torch.log_softmax(self.logits(ids), -1)
        return [lp[t - 1, ids[t]].item() for t in range(1, len(ids))]

    def teacher_forced(self, ids: list[int], out: list[int],
                       kept: Kept | None = None) -> tuple[Generation, list[float]]:
        """What :meth:`generate` gives, checked in one forward pass: the greedy token (and
        its log-probability) at every output position, given the prompt and the tokens of
        ``out`` before it, and the prompt's log-probabilities (:meth:`prompt_logprobs`).
        ``out`` equals ``generate(ids, len(out)).tokens`` exactly when it equals these
        tokens (at its first difference the greedy token here is generate's)."""
        seq = list(ids) + list(out[:-1])
        lp = torch.log_softmax(self.logits(seq, kept, len(ids)), -1)
        tail = lp[len(ids) - 1:]
        tokens = tail.argmax(-1)
        gen = Generation(tokens.tolist(), tail.gather(-1, tokens[:, None]).squeeze(1).tolist())
        return gen, [lp[t - 1, ids[t]].item() for t in range(1, len(ids))]

    def generate(self, ids: list[int], max_new_tokens: int, kept: Kept | None = None) -> Generation:
        """Greedy decoding, recomputing the full sequence at every step; ``kept``: Ada-KV
        kept sets applied after the prompt (``ids``)."""
        seq, out, lps = list(ids), [], []
        for _ in range(max_new_tokens):
            lp = torch.log_softmax(self.logits(seq, kept, len(ids))[-1], -1)
            tok = int(lp.argmax())
            out.append(tok)
            lps.append(lp[tok].item())
            seq.append(tok)
        return Generation(out, lps)


def server_kept(debug: Path, rid: str) -> Kept:
    """{global producer: [per KV head: kept positions]} a server with
    ``MIXKV_ADAKV_DEBUG_JSONL=debug`` logged for request ``rid`` (empty: not compressed)."""
    heads: dict[int, dict[int, list[int]]] = {}
    for line in (debug.read_text().splitlines() if debug.exists() else []):
        row = json.loads(line)
        if row["rid"] == rid:
            heads.setdefault(row["layer"], {})[row["head"]] = row["positions"]
    return {layer: [hs[h] for h in sorted(hs)] for layer, hs in heads.items()}
