"""Measured capacity: how many long requests a server actually holds at once.

The third of the three capacity numbers (formula, allocated pool, run). A probe sends
``n`` identical-length streaming requests at once. A request is *held* from its first
streamed token to its last; the probe succeeds when all ``n`` were held at the same
moment, all completed, and the server retracted none (SGLang's
``num_retracted_requests_total``, from ``/metrics``). It stops early, aborting the rest,
at the first retraction or when a request ends before another has started (then they
were never all held). :func:`max_held` searches for the largest ``n`` that succeeds:
upward from a small ``n`` (not from any estimate) by doubling until a probe fails,
then bisecting. Serve with a running-request cap above what the pools can hold, so the
pools, not the cap, end the search.

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
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import aiohttp
import numpy as np

from harness import sampler
from harness.runner import FlushError, flush_cache
from sglang_mixkv.defaults import ADMIN_API_KEY_ENV, API_KEY_ENV, auth_headers

POLL_S = 0.5  # seconds between /metrics reads while a probe runs
RETRACTED = sampler.METRICS["retracted_total"]  # SGLang's counter, summed over label sets


@dataclass
class ProbeResult:
    sent: int
    max_held: int  # most requests held at once before any retraction
    retracted: int
    completed: int
    #: the fewest output tokens any request had streamed when the first one completed:
    #: the held requests were at least input_len + this long at once (None: none completed)
    min_output_at_first_end: int | None = None

    @property
    def all_at_once(self) -> bool:
        return self.max_held == self.sent and self.retracted == 0 and self.completed == self.sent

    def to_json(self) -> dict:
        return asdict(self) | {"all_at_once": self.all_at_once}


async def retracted_total(session: aiohttp.ClientSession, url: str) -> int:
    """SGLang's ``num_retracted_requests_total`` counter (0 before the first retraction)."""
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    return int(sampler.parse(text, {"retracted": RETRACTED}).get("retracted", 0))


def peak_overlap(intervals: list[tuple[float, float]], before: float = float("inf")) -> int:
    """Most intervals [start, end) open at one instant earlier than ``before``."""
    events = sorted([(s, 1) for s, e in intervals if s < before]
                    + [(e, -1) for s, e in intervals if s < before])
    held = peak = 0
    for _, step in events:  # ends sort before starts at the same instant
        held += step
        peak = max(peak, held)
    return peak


async def wait_idle(session: aiohttp.ClientSession, url: str, timeout: float = 300) -> None:
    """Until the server runs and queues no request (aborted requests drain first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get(url + "/get_load") as r:
            if sum(x["num_reqs"] for x in await r.json()) == 0:
                return
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"{url} still busy after {timeout:.0f} s")


async def probe(url: str, n: int, input_len: int, output_len: int, *, vocab: int,
                seed: int = 0, timeout: float = 3600) -> ProbeResult:
    """Send ``n`` requests of ``input_len`` random prompt tokens and ``output_len``
    output tokens at once (after the server is idle and its cache flushed)."""
    rng = np.random.default_rng(seed)
    prompts = rng.integers(3, vocab, size=(n, input_len)).tolist()
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    ok: dict[int, bool] = {}
    streamed = [0] * n
    at_first_end: list[int] = []
    headers = auth_headers(os.environ.get(API_KEY_ENV))  # a server started with --api-key
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                     headers=headers) as session:
        await wait_idle(session, url)
        flushed = await flush_cache(session, url, os.environ.get(ADMIN_API_KEY_ENV))
        if flushed != "ok":  # a probe on a warm cache would measure something else
            raise FlushError(f"{url}/flush_cache: {flushed} (the probe needs the admin key in "
                             f"${ADMIN_API_KEY_ENV})")
        base = await retracted_total(session, url)

        async def one(i: int, ids: list[int]) -> None:
            body = {"input_ids": ids, "stream": True, "sampling_params": {
                "max_new_tokens": output_len, "temperature": 0, "ignore_eos": True}}
            tokens = 0
            try:
                async with session.post(url + "/generate", json=body) as r:
                    async for line in r.content:
                        if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                            continue
                        tokens = json.loads(line[5:])["meta_info"]["completion_tokens"]
                        streamed[i] = tokens
                        if tokens and i not in starts:
                            starts[i] = time.monotonic()
                        if tokens == output_len and not at_first_end:
                            at_first_end.append(min(streamed))
            finally:  # also when cancelled: the connection closes and SGLang aborts it
                ends[i] = time.monotonic()
                ok[i] = tokens == output_len

        tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(prompts)]
        first_retraction = float("inf")
        while not all(t.done() for t in tasks):
            if await retracted_total(session, url) > base:
                first_retraction = time.monotonic()
                break
            if len(starts) < n and any(i in ends for i in range(n)):
                break  # one ended before another started: never all held at once
            await asyncio.sleep(POLL_S)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await wait_idle(session, url)
        retracted = await retracted_total(session, url) - base
    held = peak_overlap([(s, ends[i]) for i, s in starts.items()], first_retraction)
    return ProbeResult(sent=n, max_held=held, retracted=retracted, completed=sum(ok.values()),
                       min_output_at_first_end=at_first_end[0] if at_first_end else None)


async def max_held(url: str, n_cap: int, input_len: int, output_len: int, *, vocab: int,
                   seed: int = 0,
                   on_probe: Callable[[dict], None] | None = None) -> dict:
    """Largest n <= n_cap whose probe succeeds: from 1 upward in doubling steps
    until one fails, then bisect between the last success and the first failure. Every
    probe is recorded; ``capped``: no probe failed up to ``n_cap`` (the search ended at
    the cap, not at the pools)."""
    lo, hi, n, history = 0, None, 1, []  # lo succeeded (0: trivially), hi failed
    while True:
        n = min(n, n_cap)
        t0 = time.monotonic()
        r = await probe(url, n, input_len, output_len, vocab=vocab, seed=seed + len(history))
        history.append(r.to_json() | {"seconds": round(time.monotonic() - t0, 1)})
        if on_probe is not None:
            on_probe(history[-1])
        if r.all_at_once:
            lo = n
        else:
            hi = n
        if hi is None and n < n_cap:
            n *= 2
        elif hi is None or hi - lo <= 1:
            break
        else:
            n = (lo + hi) // 2
    return {"max_held": lo, "first_failed": hi, "capped": hi is None, "probes": history}
