"""Workloads: seeded random token-id prompts of exact lengths, and arrival times.

Invariants (what the tests check):

* ``make_requests(...)[i].input_ids`` has exactly ``input_len`` ids, all in
  ``[id_range.lo, id_range.hi)``, and depends only on ``(seed, i, input_len, id_range)``:
  the same on every run, for every variant, whatever ``num_prompts`` is (request ``i`` of
  a 300-prompt run is request ``i`` of a 30-prompt run).
* Warm-up prompts come from a separate stream, so they never share a prefix with the
  measured prompts beyond chance.
* ``arrival_offsets(n, rate, seed)`` is non-decreasing, starts at the first gap (Poisson
  process of ``rate`` requests/s), and is all zeros for ``rate=inf`` (everything due at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MEASURED, WARMUP = 0, 1  # stream tags mixed into the seed


@dataclass(frozen=True)
class Profile:
    """A named benchmark shape. ``concurrency`` is the default sweep."""

    name: str
    num_prompts: int
    input_len: int
    output_len: int
    concurrency: tuple[int, ...]
    warmup: int
    timeout: float  # default per-request timeout, seconds


PROFILES: dict[str, Profile] = {
    # The MixAttention paper's serving test: 300 prompts, 31K in / 1K out, one H100.
    "paper": Profile("paper", 300, 31_000, 1_000, (1, 8, 32, 64, 128, 300), 2, 7200.0),
    # Tiny model on a 2-core CPU: seconds.
    "cpu-smoke": Profile("cpu-smoke", 24, 256, 16, (1, 8), 2, 300.0),
    # Tiny model on a 2-core CPU: a few minutes.
    "cpu": Profile("cpu", 64, 1024, 32, (1, 8, 32, 64), 2, 600.0),
}


@dataclass(frozen=True)
class IdRange:
    """Half-open range ``[lo, hi)`` of token ids to draw prompts from."""

    lo: int
    hi: int

    def __post_init__(self):
        if not 0 <= self.lo < self.hi:
            raise ValueError(f"empty token id range [{self.lo}, {self.hi})")

    @classmethod
    def parse(cls, text: str) -> "IdRange":
        """``"3:512"`` -> ``IdRange(3, 512)``."""
        lo, hi = text.split(":")
        return cls(int(lo), int(hi))

    @classmethod
    def for_vocab(cls, vocab_size: int, first_id: int = 3) -> "IdRange":
        """Default range: skip the first ``first_id`` ids (special tokens in our models)."""
        return cls(first_id, vocab_size)


@dataclass(frozen=True)
class Request:
    index: int
    input_ids: list[int]
    output_len: int
    warmup: bool = False

    @property
    def input_len(self) -> int:
        return len(self.input_ids)


def _prompt(seed: int, stream: int, index: int, input_len: int, ids: IdRange) -> list[int]:
    rng = np.random.default_rng([seed, stream, index])
    return rng.integers(ids.lo, ids.hi, size=input_len).tolist()


def make_requests(num_prompts: int, input_len: int, output_len: int, seed: int,
                  ids: IdRange, warmup: bool = False) -> list[Request]:
    """``num_prompts`` requests of exactly ``input_len`` prompt ids, ``output_len`` out."""
    if input_len < 1 or output_len < 1:
        raise ValueError("input_len and output_len must be >= 1")
    stream = WARMUP if warmup else MEASURED
    return [Request(i, _prompt(seed, stream, i, input_len, ids), output_len, warmup)
            for i in range(num_prompts)]


def arrival_offsets(n: int, rate: float, seed: int) -> np.ndarray:
    """Due times (seconds from the level's start) of ``n`` requests: Poisson at ``rate``/s."""
    if math.isinf(rate):
        return np.zeros(n)
    if rate <= 0:
        raise ValueError("request rate must be > 0 (or inf)")
    rng = np.random.default_rng([seed, 2])
    return np.cumsum(rng.exponential(1.0 / rate, size=n))
