"""Multi-query associative recall (MQAR): the synthetic task a layer plan's quality is
measured on (the task behind Zoology's study of which architectures can recall).

A sequence is ``<s>``, a context of ``context`` tokens holding ``pairs`` key-value
pairs (each key followed by its value) among filler tokens, then ``queries`` of those
keys, each followed by its value. The model must give each query's value: the token
after the key's earlier occurrence, which may lie far behind the query. A sliding-window
layer cannot reach a pair outside its window; a global layer can.

Token ids (our tokenizer's ``<unk> <s> </s>`` first): keys ``[3, 3 + keys)``, values
after them, filler after those. Every draw comes from a seeded generator: the training
stream and the held-out evaluation sets use different seeds.

Layout ``zoology`` puts the pairs first and the filler after them (Zoology's MQAR);
``scattered`` places them at random non-overlapping positions in the context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

FIRST_TOKEN = 3  # after <unk> <s> </s>
BOS = 1


@dataclass(frozen=True)
class RecallTask:
    # defaults: the frozen task of results/quality, the issue's: 16 pairs among 64 keys,
    # a context of 8 windows of the recall size's 8, every pair queried
    context: int = 64  # tokens between <s> and the first query
    pairs: int = 16
    queries: int = 16
    keys: int = 64  # distinct key tokens
    values: int = 64
    filler: int = 32
    layout: str = "zoology"  # or "scattered"

    def __post_init__(self) -> None:
        if self.layout not in ("scattered", "zoology"):
            raise ValueError(f"layout {self.layout!r}: 'scattered' or 'zoology'")
        if 2 * self.pairs > self.context:
            raise ValueError(f"{self.pairs} pairs need {2 * self.pairs} context tokens, the "
                             f"context has {self.context}")
        if self.pairs > self.keys:
            raise ValueError(f"{self.pairs} pairs need as many distinct keys, there are {self.keys}")
        if not 1 <= self.queries <= self.pairs:
            raise ValueError(f"queries must be in [1, pairs={self.pairs}], got {self.queries}")

    @property
    def vocab(self) -> int:
        """Token ids the task uses (a model needs at least this vocabulary)."""
        return FIRST_TOKEN + self.keys + self.values + self.filler

    @property
    def length(self) -> int:
        """Tokens of a sequence: <s>, the context, a key and its value per query."""
        return 1 + self.context + 2 * self.queries

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Batch:
    """``ids`` [B, length]; ``answer_pos`` [B, queries]: positions of the values the
    model must predict (from the logits one position earlier); ``distance`` [B, queries]:
    tokens from the pair's value in the context to the query's answer."""

    ids: torch.Tensor
    answer_pos: torch.Tensor
    distance: torch.Tensor


def sample(task: RecallTask, batch: int, generator: torch.Generator) -> Batch:
    """``batch`` sequences drawn with ``generator``."""
    t, g = task, generator
    key0, val0, fill0 = FIRST_TOKEN, FIRST_TOKEN + t.keys, FIRST_TOKEN + t.keys + t.values
    ids = torch.empty(batch, t.length, dtype=torch.long)
    answer_pos = torch.empty(batch, t.queries, dtype=torch.long)
    distance = torch.empty(batch, t.queries, dtype=torch.long)
    for b in range(batch):
        keys = torch.randperm(t.keys, generator=g)[: t.pairs] + key0
        values = torch.randint(val0, val0 + t.values, (t.pairs,), generator=g)
        context = torch.randint(fill0, fill0 + t.filler, (t.context,), generator=g)
        if t.layout == "zoology":
            starts = torch.arange(t.pairs) * 2
        else:  # non-overlapping slots: choose pair starts among context - pairs slots
            slots = torch.randperm(t.context - t.pairs, generator=g)[: t.pairs].sort().values
            starts = slots + torch.arange(t.pairs)
        context[starts], context[starts + 1] = keys, values
        asked = torch.randperm(t.pairs, generator=g)[: t.queries]
        tail = torch.stack([keys[asked], values[asked]], dim=1).reshape(-1)
        ids[b] = torch.cat([torch.tensor([BOS]), context, tail])
        answer_pos[b] = 1 + t.context + 2 * torch.arange(t.queries) + 1
        distance[b] = answer_pos[b] - (1 + starts[asked] + 1)
    return Batch(ids, answer_pos, distance)


def heldout(task: RecallTask, n: int, seed: int) -> Batch:
    """The evaluation set: ``n`` sequences from ``seed`` (never a training seed)."""
    return sample(task, n, torch.Generator().manual_seed(seed))


def sample_repeat(task: RecallTask, batch: int, generator: torch.Generator) -> Batch:
    """An auxiliary training batch of the task's length: ``<s>``, a span of random key and
    value tokens, filler, then the span again (its length drawn per batch, so the repeat's
    offset is never the same: only finding the earlier occurrence of the current token
    and reading the token after it predicts the repeat, the circuit recall needs). Every
    repeated token but the first is a supervised answer. Never scored."""
    t, g = task, generator
    most = (t.length - 1) // 2
    span = int(torch.randint(max(2, most // 4), most + 1, (), generator=g))
    gap = t.length - 1 - 2 * span
    fill0 = FIRST_TOKEN + t.keys + t.values
    first = torch.randint(FIRST_TOKEN, fill0, (batch, span), generator=g)
    filler = torch.randint(fill0, fill0 + t.filler, (batch, gap), generator=g)
    ids = torch.cat([torch.full((batch, 1), BOS), first, filler, first], dim=1)
    answer_pos = (1 + span + gap + torch.arange(1, span)).expand(batch, -1)
    return Batch(ids, answer_pos.clone(), torch.full_like(answer_pos, span + gap))
