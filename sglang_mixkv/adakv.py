"""Ada-KV on MixAttention: after a prompt, each KV head of each global producer keeps its
own, adaptively sized share of the layer's token budget (Ada-SnapKV, arXiv 2407.11550).

This module is the algorithm and its arithmetic, in plain torch: what to keep
(:func:`select`) and where it lives afterwards (:func:`cut`, :func:`region_slots`). The
SGLang side (when it runs, compaction into the pool, freeing, attention over the kept
cells) is ``sglang_seams/mixkv/adakv.py``; the tests' reference computes kept sets with
its own code (``mixkv_bench/reference.py``).

**Selection** (FFY0/AdaKV ``AdaptiveSnapKVCluster`` with GQA support, ``gqa_func='mean'``):
for a prompt of P tokens and budget B (average kept prompt tokens per KV head, the
observation window included), compress iff ``P >= B``. The last ``w`` prompt queries
attend to all P keys (causal inside the window), softmax in float32, averaged over the w
queries and over each KV head's query heads; keys before the window are scored, then
max-pooled along positions (kernel k, padding k // 2). ``B_sel = B - w`` selected tokens per
head on average: one top-k over all heads' sorted scores (``k = H_kv * B_sel``) counts
``c_h`` picks per head; head h keeps its ``round((1 - alpha) * c_h + floor(alpha * B_sel))``
highest-scoring positions, plus the window. ``alpha = 1`` gives every head ``B_sel``:
SnapKV's uniform budget. Ties resolve in (head, position) order (stable sorts): pooling
makes exact plateaus, and a fixed rule makes the choice reproducible.

**Baselines** (``rule``): the same accounting, ``B_sel`` per head plus the window, chosen
without scores: StreamingLLM's attention sinks plus the most recent tokens (``recent``) or
a seeded random draw (``random``); :func:`baseline`.

**Where the kept KV lives.** A compressed request keeps the slots of prompt positions
``[cut, P)`` (``cut = page_floor(P - B - 1)``): ``(P - cut) * H_kv`` cells of one KV head
each, enough for every head's kept tokens (at most ``H_kv * B + H_kv / 2`` with rounding).
Head h's kept tokens are packed into cells ``[off[h], off[h + 1])`` of that region, in
position order; slots ``[0, cut)`` go back to the allocator. Decode tokens get normal
slots: every head appends its own K/V there.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from sglang_mixkv import plan as plans

if TYPE_CHECKING:  # torch is imported where it is used: `serve` reads the config only
    import torch

Scoring = Literal["producer", "readers"]
#: how a head's kept prompt tokens are chosen: Ada-KV's scores (``alpha`` 1: SnapKV), or
#: one of two score-free baselines under the same per-head budget: StreamingLLM's first
#: ``sink`` tokens plus the most recent, or a seeded random choice
Rule = Literal["adakv", "recent", "random"]
RULES = ("adakv", "recent", "random")
#: config.json key (``serve --adakv-budget`` sets it through ``--json-model-override-args``)
CONFIG_KEY = "mixkv_adakv"


class AdaKVError(ValueError):
    """A budget or setting this design cannot hold; the message names the bound."""


def check_server(streaming_session: bool, disaggregation_mode: str | None) -> None:
    """Raise AdaKVError for SGLang features that read a request's KV by its prompt slots
    after prefill, which compression has freed (``[0, cut)``) and rewritten (the region
    holds per-head cells): a streaming session's next turn extends its previous turn's
    slots (``session/streaming_session.py:256`` asserts, and the scheduler exits), and a
    prefill server sends ``req_to_token[r, :P]`` to its decode server
    (``disaggregation/prefill.py:1241``)."""
    if streaming_session:
        raise AdaKVError("--enable-streaming-session is not supported with Ada-KV: a session's "
                         "next turn would extend the previous turn's compressed KV as if whole")
    if disaggregation_mode not in (None, "null"):
        raise AdaKVError(f"--disaggregation-mode {disaggregation_mode} is not supported with "
                         "Ada-KV: the prefill server would send compressed KV by its prompt "
                         "slots, which compression freed and rewrote")


@dataclass(frozen=True)
class AdaKVConfig:
    """``budget``: average kept prompt tokens per KV head per layer, window included;
    ``window``: observation window (last prompt queries); ``alpha``: each head's floor
    share of ``budget - window``; ``kernel``: max-pooling width (odd); ``scoring``: whose
    queries score a shared KV head (the producer's, or every layer that reads it);
    ``rule``: what chooses the kept tokens (:data:`RULES`; the baselines give every head
    ``budget - window`` and ignore ``alpha``, ``kernel`` and ``scoring``); ``sink``: the
    first prompt tokens ``recent`` keeps; ``seed``: ``random``'s seed."""

    budget: int
    window: int = 32
    alpha: float = 0.2
    kernel: int = 7
    scoring: Scoring = "producer"
    rule: Rule = "adakv"
    sink: int = 4
    seed: int = 0

    @property
    def selected(self) -> int:
        """``B_sel``: selected prompt tokens per head on average (the window excluded)."""
        return self.budget - self.window

    def compresses(self, prompt_len: int) -> bool:
        """FFY0's rule: no compression while ``budget - window > prompt_len - window``."""
        return prompt_len >= self.budget

    def check(self, plan: plans.Plan, sliding_window: int | None) -> None:
        """Raise AdaKVError for a setting this design cannot hold."""
        if self.rule not in RULES:
            raise AdaKVError(f"--adakv-rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        for name in ("budget", "window", "kernel", "sink", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise AdaKVError(f"adakv {name} must be an integer, got {v!r}")
        if self.window < 1:
            raise AdaKVError(f"--adakv-window must be at least 1, got {self.window}")
        if self.budget <= self.window:
            raise AdaKVError(f"--adakv-budget {self.budget} must be above --adakv-window "
                             f"{self.window} (the budget includes the observation window)")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise AdaKVError(f"--adakv-alpha must be in [0, 1], got {self.alpha}")
        if self.sink < 0:
            raise AdaKVError(f"--adakv-sink must be at least 0, got {self.sink}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise AdaKVError(f"--adakv-kernel must be odd and positive (padding kernel // 2 "
                             f"keeps the row's length), got {self.kernel}")
        if self.scoring not in ("producer", "readers"):
            raise AdaKVError(f"--adakv-scoring must be producer or readers, got {self.scoring!r}")
        if not plan.global_producers:
            raise AdaKVError(f"plan {plan} has no global producer: Ada-KV compresses global "
                             "KV only (local layers hold a window already)")
        if plan.local_producers and sliding_window and self.budget < sliding_window:
            raise AdaKVError(
                f"--adakv-budget {self.budget} is below the sliding window {sliding_window}: "
                "a compressed request keeps its last budget + 1 prompt slots, and the local "
                "layers' last window lives in those slots (budget >= window)")

    def to_config(self) -> dict[str, Any]:
        return asdict(self)


def config_for(hf_config: Any) -> AdaKVConfig | None:
    """The Ada-KV settings of a served model (an HF config or a dict), or None."""
    get = hf_config.get if isinstance(hf_config, Mapping) else (
        lambda k, d=None: getattr(hf_config, k, d))
    raw = get(CONFIG_KEY)
    if not raw:
        return None
    return AdaKVConfig(**raw)


# ---- where the kept KV lives ----------------------------------------------------------------
def cut(prompt_len: int, budget: int, page: int = 1) -> int:
    """First prompt position whose slot a compressed request keeps (page-aligned)."""
    return max(0, (prompt_len - budget - 1) // page * page)


def region_slots(prompt_len: int, budget: int, page: int = 1) -> int:
    """Slots a compressed request keeps for its prompt (``P - cut``)."""
    return prompt_len - cut(prompt_len, budget, page)


# ---- selection ------------------------------------------------------------------------------
def window_scores(q_window: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Scores of the keys before the window, per query head: ``q_window`` [w, Hq, D] (the
    last w prompt positions, post-RoPE), ``keys`` [P, Hkv, D] -> [Hq, P - w], the
    float32 softmax over all P keys (causal inside the window) averaged over the w
    queries."""
    import torch

    w, hq, d = q_window.shape
    p, hkv, _ = keys.shape
    k = keys.float().repeat_interleave(hq // hkv, dim=1)  # [P, Hq, D]
    logits = torch.einsum("whd,phd->hwp", q_window.float(), k) * scale  # [Hq, w, P]
    rows = torch.arange(p - w, p, device=keys.device).unsqueeze(1)
    cols = torch.arange(p, device=keys.device).unsqueeze(0)
    logits = logits.masked_fill(~(cols <= rows), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return probs[:, :, : p - w].mean(dim=1)


def pooled(scores: torch.Tensor, hkv: int, kernel: int) -> torch.Tensor:
    """[Hq, L] query-head scores -> [Hkv, L]: averaged over each KV head's group, then
    max-pooled along positions."""
    import torch.nn.functional as F

    hq, length = scores.shape
    per_kv = scores.view(hkv, hq // hkv, length).mean(dim=1)
    return F.max_pool1d(per_kv.unsqueeze(0), kernel, stride=1, padding=kernel // 2).squeeze(0)


def head_budgets(scores: torch.Tensor, cfg: AdaKVConfig) -> torch.Tensor:
    """[Hkv, L] pooled scores -> [Hkv] selected tokens per head (window excluded)."""
    import torch

    hkv, length = scores.shape
    b_sel = cfg.selected
    ranked = torch.sort(scores, dim=-1, descending=True, stable=True).values
    flat = torch.sort(ranked.reshape(-1), descending=True, stable=True).indices[: hkv * b_sel]
    picks = torch.bincount(flat // length, minlength=hkv).double()
    floor = int(b_sel * cfg.alpha)
    caps = torch.round(picks * (1 - cfg.alpha) + floor).long()
    return caps.clamp(max=length)


def select(scores: torch.Tensor, cfg: AdaKVConfig) -> list[torch.Tensor]:
    """Per KV head, the kept prompt positions before the window, ascending: ``scores``
    [Hkv, P - w] are a layer's pooled scores (:func:`pooled`)."""
    import torch

    caps = head_budgets(scores, cfg)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return [torch.sort(order[h, : int(caps[h])]).values for h in range(scores.shape[0])]


def prompt_key(prompt: Sequence[int]) -> int:
    """CRC-32 of the prompt's token ids as little-endian int64s: what ``random`` mixes into
    its seed, so that every prompt gets its own draw."""
    return zlib.crc32(b"".join(int(t).to_bytes(8, "little", signed=True) for t in prompt))


def baseline(length: int, heads: int, cfg: AdaKVConfig, layer: int, first_head: int = 0,
             key: int = 0) -> list[torch.Tensor]:
    """The score-free rules' kept positions before the window, per KV head, ascending:
    ``length`` = P - w positions, ``B_sel`` per head. ``recent``: the first
    ``min(sink, B_sel)`` and the last ``B_sel - sink``. ``random``: head h of layer
    ``layer`` (``first_head + h`` counted over every tensor-parallel rank) keeps the first
    ``B_sel`` of ``torch.randperm(length)`` drawn from a CPU generator seeded
    ``seed * 1_000_003 + layer * 1_009 + head + 7_919 * key`` (``key``: the prompt's
    :func:`prompt_key`): a fixed choice per (seed, layer, head, prompt) that anyone can
    redraw."""
    import torch

    b_sel = cfg.selected
    if cfg.rule == "recent":
        sink = min(cfg.sink, b_sel)
        pos = torch.cat([torch.arange(sink), torch.arange(length - (b_sel - sink), length)])
        return [pos.clone() for _ in range(heads)]
    if cfg.rule == "random":
        out = []
        for h in range(heads):
            g = torch.Generator().manual_seed(
                cfg.seed * 1_000_003 + layer * 1_009 + first_head + h + 7_919 * key)
            out.append(torch.sort(torch.randperm(length, generator=g)[:b_sel]).values)
        return out
    raise ValueError(f"rule {cfg.rule!r} selects by scores (select)")


def kept_counts(kept: list[torch.Tensor], window: int) -> list[int]:
    """Tokens each head keeps of the prompt: its selection plus the window."""
    return [int(k.numel()) + window for k in kept]


def max_cells(hkv: int, cfg: AdaKVConfig) -> int:
    """An upper bound on the cells all heads of a layer keep: ``H_kv * B`` plus the
    rounding of :func:`head_budgets` (at most one half per head)."""
    return hkv * cfg.budget + math.ceil(hkv / 2)
