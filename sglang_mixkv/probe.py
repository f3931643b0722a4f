"""Measured capacity: how many long requests a server actually holds at once.

The third of the three capacity numbers (formula, allocated pool, run). A probe sends
``n`` identical streaming requests at once. A request is *held* from its first streamed
token to its last; the probe succeeds when all ``n`` were held at the same moment, all
completed, and the server retracted none (SGLang's ``num_retracted_requests_total``, from
``/metrics``). :func:`max_held` searches for the largest ``n`` that succeeds, starting
from the formula's estimate and probing upward, then bisecting.

Use short prompts and long outputs: when a prefill chunk admits many prompts at once,
the requests decode nearly in lockstep and reach their full ``input_len + output_len``
tokens within a few steps of each other, so "held at once" means the KV of ``n``
(nearly) full-length requests was resident at once; the stagger (prefill batches
needed for ``n`` prompts) is the slack. Works against any SGLang server started with
``--enable-metrics``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict, dataclass

import aiohttp
import numpy as np

POLL_S = 0.2


@dataclass
class ProbeResult:
    sent: int
    max_held: int  # most requests held at once before any retraction
    retracted: int
    completed: int

    @property
    def all_at_once(self) -> bool:
        return self.max_held == self.sent and self.retracted == 0 and self.completed == self.sent

    def to_json(self) -> dict:
        return asdict(self) | {"all_at_once": self.all_at_once}


async def retracted_total(session: aiohttp.ClientSession, url: str) -> int:
    """SGLang's ``num_retracted_requests_total`` counter (0 before the first retraction)."""
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    return int(sum(float(v) for v in re.findall(
        r"^sglang:num_retracted_requests_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)))


def peak_overlap(intervals: list[tuple[float, float]], before: float = float("inf")) -> int:
    """Most intervals [start, end) open at one instant earlier than ``before``."""
    events = sorted([(s, 1) for s, e in intervals if s < before]
                    + [(e, -1) for s, e in intervals if s < before])
    held = peak = 0
    for _, step in events:  # ends sort before starts at the same instant
        held += step
        peak = max(peak, held)
    return peak


async def probe(url: str, n: int, input_len: int, output_len: int, *, vocab: int,
                seed: int = 0, timeout: float = 3600) -> ProbeResult:
    rng = np.random.default_rng(seed)
    prompts = rng.integers(3, vocab, size=(n, input_len)).tolist()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        await session.post(url + "/flush_cache")
        base = await retracted_total(session, url)

        async def one(ids: list[int]) -> tuple[float, float, bool]:
            body = {"input_ids": ids, "stream": True, "sampling_params": {
                "max_new_tokens": output_len, "temperature": 0, "ignore_eos": True}}
            first, tokens = None, 0
            async with session.post(url + "/generate", json=body) as r:
                async for line in r.content:
                    if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                        continue
                    tokens = json.loads(line[5:])["meta_info"]["completion_tokens"]
                    if first is None and tokens:
                        first = time.monotonic()
            return first or time.monotonic(), time.monotonic(), tokens == output_len

        tasks = [asyncio.create_task(one(p)) for p in prompts]
        first_retraction = float("inf")
        while not all(t.done() for t in tasks):
            if first_retraction == float("inf") and await retracted_total(session, url) > base:
                first_retraction = time.monotonic()
            await asyncio.sleep(POLL_S)
        done = await asyncio.gather(*tasks)
        retracted = await retracted_total(session, url) - base
    return ProbeResult(sent=n, max_held=peak_overlap([(s, e) for s, e, _ in done], first_retraction),
                       retracted=retracted, completed=sum(ok for *_, ok in done))


async def max_held(url: str, n_start: int, n_cap: int, input_len: int, output_len: int, *,
                   vocab: int, seed: int = 0) -> dict:
    """Largest n <= n_cap whose probe succeeds: from n_start upward in doubling steps
    until one fails, then bisect. Every probe is recorded."""
    lo, hi = 0, n_cap + 1  # lo succeeded (0: trivially), hi failed (n_cap+1: never tried)
    n, step, history = max(1, min(n_start, n_cap)), 1, []
    while hi - lo > 1:
        r = await probe(url, n, input_len, output_len, vocab=vocab, seed=seed + len(history))
        history.append(r.to_json())
        lo, hi = (n, hi) if r.all_at_once else (lo, n)
        if hi == n_cap + 1:  # no failure yet: keep growing
            n, step = min(n_cap, lo + step), step * 2
        else:
            n = (lo + hi) // 2
    return {"max_held": lo, "capped": lo == n_cap, "probes": history}
