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
``scattered`` places them at random non-overlapping positions in the context; ``mixed``
draws one of the two per sequence (a model trained on it recalls by content, not place).

Regime ``agnostic``: the queries come only after the context (the keys are not known when
the context is read, as in SCBench's multi-turn setting). ``aware``: the context is
followed by a question block, the keys that will be asked in the order they will be
asked, and then the queries as before (SnapKV's and Ada-KV's setting: a long document,
then the question, then the answer). ``mixed`` draws one per batch (the two differ in
length).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

FIRST_TOKEN = 3  # after <unk> <s> </s>
LAYOUTS = ("zoology", "scattered", "mixed")
REGIMES = ("agnostic", "aware", "mixed")
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
    layout: str = "zoology"  # or "scattered", "mixed"
    regime: str = "agnostic"  # or "aware", "mixed"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r}: one of {', '.join(LAYOUTS)}")
        if self.regime not in REGIMES:
            raise ValueError(f"regime {self.regime!r}: one of {', '.join(REGIMES)}")
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
    def question(self) -> int:
        """Tokens of the question block (``aware``: one per query; the longer for ``mixed``)."""
        return self.queries if self.regime != "agnostic" else 0

    @property
    def prompt(self) -> int:
        """Tokens before the first query: <s>, the context, the question block."""
        return 1 + self.context + self.question

    @property
    def length(self) -> int:
        """Tokens of a sequence: the prompt, a key and its value per query (``mixed``:
        the longer regime's)."""
        return self.prompt + 2 * self.queries

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Batch:
    """``ids`` [B, length]; ``answer_pos`` [B, queries]: positions of the values the
    model must predict (from the logits one position earlier); ``distance`` [B, queries]:
    tokens from the pair's value in the context to the query's answer; ``scattered``
    [B]: which sequences have the scattered layout."""

    ids: torch.Tensor
    answer_pos: torch.Tensor
    distance: torch.Tensor
    scattered: torch.Tensor | None = None  # [B] bool: the sequence's layout is scattered


def sample(task: RecallTask, batch: int, generator: torch.Generator) -> Batch:
    """``batch`` sequences drawn with ``generator`` (regime ``mixed``: one draw for the
    batch; layout ``mixed``: one per sequence)."""
    t, g = task, generator
    if t.regime == "mixed":
        aware = float(torch.rand((), generator=g)) < 0.5
        t = replace(t, regime="aware" if aware else "agnostic")
    key0, val0, fill0 = FIRST_TOKEN, FIRST_TOKEN + t.keys, FIRST_TOKEN + t.keys + t.values
    ids = torch.empty(batch, t.length, dtype=torch.long)
    answer_pos = torch.empty(batch, t.queries, dtype=torch.long)
    distance = torch.empty(batch, t.queries, dtype=torch.long)
    layout = torch.empty(batch, dtype=torch.bool)  # True: scattered
    for b in range(batch):
        keys = torch.randperm(t.keys, generator=g)[: t.pairs] + key0
        values = torch.randint(val0, val0 + t.values, (t.pairs,), generator=g)
        context = torch.randint(fill0, fill0 + t.filler, (t.context,), generator=g)
        scattered = t.layout == "scattered" or (
            t.layout == "mixed" and float(torch.rand((), generator=g)) < 0.5)
        if not scattered:
            starts = torch.arange(t.pairs) * 2
        else:  # non-overlapping slots: choose pair starts among context - pairs slots
            slots = torch.randperm(t.context - t.pairs, generator=g)[: t.pairs].sort().values
            starts = slots + torch.arange(t.pairs)
        context[starts], context[starts + 1] = keys, values
        asked = torch.randperm(t.pairs, generator=g)[: t.queries]
        tail = torch.stack([keys[asked], values[asked]], dim=1).reshape(-1)
        question = keys[asked][: t.question]
        ids[b] = torch.cat([torch.tensor([BOS]), context, question, tail])
        answer_pos[b] = t.prompt + 2 * torch.arange(t.queries) + 1
        distance[b] = answer_pos[b] - (1 + starts[asked] + 1)
        layout[b] = scattered
    return Batch(ids, answer_pos, distance, layout)


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
