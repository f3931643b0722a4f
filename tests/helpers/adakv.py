"""Helpers for the Ada-KV server tests: the server's kept sets (its debug JSONL), planted
prompts, and comparisons with the reference's independent selection."""

from __future__ import annotations

import random

import torch

from mixkv_bench.reference import AdaBudget, Reference, server_kept  # noqa: F401 (re-exported)

#: Kept sets may differ only at positions whose pooled score is this close to the head's
#: cut-off score (float32 on the server, float64 in the reference; plateaus from
#: max-pooling are exact ties, broken the same way on both sides).
EPS = 1e-6




def assert_kept_match(server: dict, ref: Reference, prompt: list[int], cfg: AdaBudget,
                      tp: int = 1) -> None:
    """The server's kept sets equal the reference's, except at near-ties (EPS)."""
    want = ref.adakv_kept(prompt, cfg, tp=tp)
    assert set(server) == set(want), (sorted(server), sorted(want))
    if server == want:
        return
    scores = ref.adakv_scores(prompt, cfg)
    for layer, heads in want.items():
        for h, positions in enumerate(heads):
            differ = set(positions) ^ set(server[layer][h])
            if not differ:
                continue
            row = scores[layer][h]
            kept_scores = [float(row[p]) for p in positions if p < row.numel()]
            cutoff = min(kept_scores) if kept_scores else float("inf")
            far = [p for p in differ if p < row.numel() and abs(float(row[p]) - cutoff) > EPS]
            assert not far, f"layer {layer} head {h}: kept sets differ at {sorted(far)}"


def random_prompt(seed: int, n: int, vocab: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(n)]


def cutoff_gap(scores: torch.Tensor, kept: list[list[int]]) -> float:
    """The smallest, over heads, gap between a head's lowest kept score and its highest
    dropped one (positions before the window): how clear the kept sets are."""
    gaps = []
    for h, positions in enumerate(kept):
        chosen = {p for p in positions if p < scores.shape[1]}
        inside = [float(scores[h, p]) for p in chosen]
        outside = [float(scores[h, p]) for p in range(scores.shape[1]) if p not in chosen]
        if inside and outside:
            gaps.append(min(inside) - max(outside))
    return min(gaps) if gaps else float("inf")


def planted_prompt(ref: Reference, seed: int, n: int, cfg: AdaBudget,
                   copies: int = 4) -> tuple[list[int], set[int]]:
    """A random prompt with one token planted at ``copies`` positions before the window:
    of 32 tokens tried, the one whose copies the first global producer's heads keep most
    often, then with the clearest cut-off (:func:`cutoff_gap`). Returns the prompt and
    the planted positions."""
    base = random_prompt(seed, n, ref.cfg["vocab_size"])
    rng = random.Random(seed + 1)
    positions = set(rng.sample(range(n - cfg.window - 8), copies))
    producer = ref.plan.global_producers[0]
    best, best_key = None, None
    for token in rng.sample(range(3, ref.cfg["vocab_size"]), 32):
        prompt = [token if i in positions else t for i, t in enumerate(base)]
        kept = ref.adakv_kept(prompt, cfg)[producer]
        held = len(positions & {p for heads in kept for p in heads})
        key = (held, cutoff_gap(ref.adakv_scores(prompt, cfg)[producer], kept))
        if best_key is None or key > best_key:
            best, best_key = prompt, key
    return best, positions
