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
* Shared prefixes (``shared_prefix=(groups, length)``): request ``i`` starts with group
  ``i % groups``'s ``length`` ids (the same for every request of the group, drawn from
  their own stream), then its own ids up to ``input_len``.
* A trace (:func:`load_trace`: JSON lines of input and output lengths, optional arrival
  times) gives each request its own lengths and due time (seconds after the first).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt
from pydantic import ValidationError

MEASURED, WARMUP, PREFIX = 0, 1, 3  # stream tags mixed into the seed


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
    due: Optional[float] = None  # a trace's arrival time (None: the level's arrival process)

    @property
    def input_len(self) -> int:
        return len(self.input_ids)


def _prompt(seed: int, stream: int, index: int, input_len: int, ids: IdRange) -> list[int]:
    rng = np.random.default_rng([seed, stream, index])
    return rng.integers(ids.lo, ids.hi, size=input_len).tolist()


def parse_shared_prefix(text: str) -> tuple[int, int]:
    """``GROUPS:TOKENS`` -> ``(groups, tokens)``; ValueError when it is not that."""
    try:
        groups, tokens = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"{text!r}: write GROUPS:TOKENS, e.g. 4:256") from None
    return groups, tokens


def make_requests(num_prompts: int, input_len: int, output_len: int, seed: int,
                  ids: IdRange, warmup: bool = False,
                  shared_prefix: tuple[int, int] | None = None) -> list[Request]:
    """``num_prompts`` requests of exactly ``input_len`` prompt ids, ``output_len`` out;
    ``shared_prefix = (groups, length)``: request i opens with group ``i % groups``'s
    prefix of ``length`` ids."""
    if input_len < 1 or output_len < 1:
        raise ValueError("input_len and output_len must be >= 1")
    stream = WARMUP if warmup else MEASURED
    if shared_prefix is None or warmup:
        return [Request(i, _prompt(seed, stream, i, input_len, ids), output_len, warmup)
                for i in range(num_prompts)]
    groups, length = shared_prefix
    if groups < 1 or not 0 < length < input_len:
        raise ValueError(f"--shared-prefix {groups}:{length}: need at least one group and a "
                         f"prefix shorter than the prompt ({input_len} tokens)")
    prefixes = [_prompt(seed, PREFIX, g, length, ids) for g in range(groups)]
    return [Request(i, prefixes[i % groups] + _prompt(seed, stream, i, input_len - length, ids),
                    output_len) for i in range(num_prompts)]


class TraceError(ValueError):
    """A trace line that cannot be replayed; the message names the file and the line."""


class TraceEntry(BaseModel):
    """One line of a trace: lengths (``input_len``/``output_len``, or mooncake's
    ``input_length``/``output_length``) and an optional arrival time."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    input_len: PositiveInt = Field(validation_alias=AliasChoices("input_len", "input_length"))
    output_len: PositiveInt = Field(validation_alias=AliasChoices("output_len", "output_length"))
    timestamp: Optional[NonNegativeFloat] = None


def load_trace(path: Path, time_unit: float = 1.0,
               max_context: int | None = None) -> list[TraceEntry]:
    """The entries of a JSON-lines trace. ``time_unit``: seconds per timestamp unit
    (0.001 for millisecond traces); timestamps must be on every line or none, and never
    go backwards; ``max_context``: the server's context (prompt + output must fit).
    Raises TraceError naming the line."""
    out: list[TraceEntry] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                e = TraceEntry.model_validate(json.loads(line))
            except (json.JSONDecodeError, ValidationError) as err:
                why = err.errors()[0] if isinstance(err, ValidationError) else None
                text = (f"{'.'.join(map(str, why['loc']))}: {why['msg']}" if why else str(err))
                raise TraceError(f"{path} line {n}: {text}") from None
            if max_context is not None and e.input_len + e.output_len > max_context:
                raise TraceError(f"{path} line {n}: {e.input_len} prompt + {e.output_len} output "
                                 f"tokens exceed the server's context of {max_context}")
            if out and (out[0].timestamp is None) != (e.timestamp is None):
                raise TraceError(f"{path} line {n}: timestamps must be on every line or on none")
            if out and e.timestamp is not None and e.timestamp < out[-1].timestamp:
                raise TraceError(f"{path} line {n}: timestamp {e.timestamp} goes backwards "
                                 f"(the line before: {out[-1].timestamp})")
            out.append(e.model_copy(update={"timestamp": None if e.timestamp is None
                                            else e.timestamp * time_unit}))
    if not out:
        raise TraceError(f"{path}: no requests")
    return out


def trace_requests(entries: list[TraceEntry], seed: int, ids: IdRange) -> list[Request]:
    """One request per entry: its lengths, random ids (seeded as :func:`make_requests`),
    due at its timestamp minus the first one."""
    t0 = entries[0].timestamp
    return [Request(i, _prompt(seed, MEASURED, i, e.input_len, ids), e.output_len,
                    due=None if t0 is None else e.timestamp - t0)
            for i, e in enumerate(entries)]


def arrival_offsets(n: int, rate: float, seed: int) -> np.ndarray:
    """Due times (seconds from the level's start) of ``n`` requests: Poisson at ``rate``/s."""
    if math.isinf(rate):
        return np.zeros(n)
    if rate <= 0:
        raise ValueError("request rate must be > 0 (or inf)")
    rng = np.random.default_rng([seed, 2])
    return np.cumsum(rng.exponential(1.0 / rate, size=n))
