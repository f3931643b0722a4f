"""The server's own timeline: SGLang's Prometheus ``/metrics``, sampled while a run goes on.

While the runner sends a level, a :class:`Sampler` reads ``GET /metrics`` about once a
second and appends one JSONL line per sample to ``timeline.jsonl`` in the run folder:
``t`` (seconds on the run's clock, the one ``meta.json``'s level windows use), ``unix``,
the ``level`` and ``repeat`` being run (None between levels) and the columns of
:data:`METRICS`. It works with any SGLang server started with ``--enable-metrics``; a
server without ``/metrics`` (or not SGLang) gives a note in ``meta.json`` and the run
goes on. Parsing uses ``prometheus_client``'s text parser.

Metric names are SGLang 0.5.17's (``sglang/srt/observability/metrics_collector.py``).
Its gauges are snapshots the scheduler publishes after every prefill batch and every
``--decode-log-interval`` decode steps (40 by default), so a sample can lag the scheduler
by that much; counters (``*_total``) are exact. Pool usage is the used share of each pool:
``full_token_usage`` for the global pool, ``swa_token_usage`` for the local one (only
when the server has one: it publishes ``max_total_num_tokens_swa`` then). SGLang creates
the retraction counter at the first retraction, so a sample of a server that has the
other metrics but not that one records 0 retractions (the same for cached tokens).

:func:`level_summary` turns a timeline into one row per level run: peak and median
running requests, peak queue, peak pool usage, retractions and cache hits in the level's
window, and :func:`what_bounded` says from those data what limited the level.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd

TIMELINE = "timeline.jsonl"

#: column -> (SGLang sample name, how label sets combine: "sum" or "max")
METRICS: dict[str, tuple[str, str]] = {
    "running": ("sglang:num_running_reqs", "sum"),
    "queued": ("sglang:num_queue_reqs", "sum"),
    "token_usage": ("sglang:token_usage", "max"),
    "global_usage": ("sglang:full_token_usage", "max"),
    "local_usage": ("sglang:swa_token_usage", "max"),
    "global_used_tokens": ("sglang:kv_used_tokens", "sum"),
    "local_used_tokens": ("sglang:swa_used_tokens", "sum"),
    "global_capacity": ("sglang:max_total_num_tokens", "max"),
    "local_capacity": ("sglang:max_total_num_tokens_swa", "max"),  # hybrid pools only
    "retracted_total": ("sglang:num_retracted_requests_total", "sum"),
    "cached_tokens_total": ("sglang:cached_tokens_total", "sum"),
    "prompt_tokens_total": ("sglang:prompt_tokens_total", "sum"),
    "generation_tokens_total": ("sglang:generation_tokens_total", "sum"),
    "cache_hit_rate": ("sglang:cache_hit_rate", "max"),
    "gen_throughput": ("sglang:gen_throughput", "sum"),
}
#: a pool this full (share of its tokens in use) counts as the limit; so does one too full
#: for another request of the running ones' average size (``peak / (peak + 1)``)
FULL = 0.85


def parse(text: str, metrics: dict[str, tuple[str, str]] = METRICS) -> dict[str, float]:
    """The ``metrics`` columns (default :data:`METRICS`; same form) found in a Prometheus
    text exposition, label sets combined as each says; columns not found are absent."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {name: (col, how) for col, (name, how) in metrics.items()}
    wanted = "\n".join(ln for ln in text.splitlines()
                       if ln.startswith("# ") or ln.split("{", 1)[0].split(" ", 1)[0] in names)
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(wanted):
        for s in fam.samples:
            if s.name not in names or math.isnan(s.value):
                continue
            col, how = names[s.name]
            out[col] = s.value if col not in out else (
                out[col] + s.value if how == "sum" else max(out[col], s.value))
    return out


class Sampler:
    """Samples ``url/metrics`` every ``interval`` seconds into ``path`` until stopped.

    ``t0`` is the run's ``time.perf_counter()`` origin; :meth:`mark` sets the level and
    repeat each following sample carries. Never raises into the run: a failed fetch is
    a sample with ``error`` set."""

    def __init__(self, url: str, path: Path, interval: float = 1.0, t0: float | None = None):
        self.url, self.path, self.interval = url, Path(path), interval
        self.t0 = time.perf_counter() if t0 is None else t0
        self.level: int | None = None
        self.repeat: int | None = None
        self.samples = 0
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None

    def mark(self, level: int | None, repeat: int | None = None) -> None:
        self.level, self.repeat = level, repeat

    async def _fetch(self) -> tuple[int | None, str]:
        assert self._session is not None
        async with self._session.get(self.url + "/metrics",
                                     timeout=aiohttp.ClientTimeout(total=10)) as r:
            return r.status, await r.text()

    async def start(self) -> str | None:
        """Check ``/metrics`` once; start sampling and return None, or return why not."""
        try:
            import prometheus_client.parser  # noqa: F401
        except ImportError:
            return "no server timeline: the prometheus_client package is not installed here"
        self._session = aiohttp.ClientSession()
        try:
            status, text = await self._fetch()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            status, text = None, f"{type(e).__name__}: {e}"
        found = parse(text) if status == 200 else {}
        if status != 200 or "running" not in found:
            await self._session.close()
            self._session = None
            why = f"HTTP {status}" if status is not None else text
            return (f"no server timeline: GET /metrics gave {why if status != 200 else 'no sglang metrics'}"
                    "; start SGLang with --enable-metrics to record running requests and pool usage")
        self._task = asyncio.create_task(self._loop())
        return None

    async def _loop(self) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            nxt = time.perf_counter()
            while True:
                row: dict[str, Any] = {"t": round(time.perf_counter() - self.t0, 4),
                                       "unix": time.time(), "level": self.level,
                                       "repeat": self.repeat}
                try:
                    status, text = await self._fetch()
                    row.update(parse(text) if status == 200 else {"error": f"HTTP {status}"})
                    if "running" in row:  # counters SGLang creates at their first increment
                        row.setdefault("retracted_total", 0.0)
                        row.setdefault("cached_tokens_total", 0.0)
                    if "local_capacity" not in row:
                        row.pop("local_usage", None)  # SGLang's gauge exists, at 0, without a local pool
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
                    row["error"] = f"{type(e).__name__}: {e}"
                f.write(json.dumps(row) + "\n")
                f.flush()
                self.samples += 1
                nxt += self.interval
                if nxt < time.perf_counter():  # a slow answer: skip the missed ticks
                    nxt = time.perf_counter() + self.interval
                await asyncio.sleep(nxt - time.perf_counter())

    async def stop(self) -> None:
        """One last sample's worth of waiting is not needed: cancel and close."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None


# ---- reading a timeline back ------------------------------------------------------------
def load(run_dir: Path) -> pd.DataFrame:
    """``timeline.jsonl`` of a run folder (empty frame if none); a torn last line is skipped."""
    p = Path(run_dir) / TIMELINE
    if not p.is_file():
        return pd.DataFrame()
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return pd.DataFrame(rows)


def level_summary(tl: pd.DataFrame, windows: list[dict]) -> pd.DataFrame:
    """One row per level run (``windows``: ``meta.json``'s ``levels``, each with level,
    repeat, start and end on the timeline's clock): samples in the window, peak and
    median running, peak queued, peak pool usage, retractions and cached tokens (counter
    increase over the window, from the last sample before it)."""
    cols = ["level", "repeat", "samples", "peak_running", "median_running", "peak_queued",
            "peak_global_usage", "peak_local_usage", "retractions", "cached_tokens"]
    if tl.empty or not windows:
        return pd.DataFrame(columns=cols)
    tl = tl.sort_values("t")
    rows = []
    for w in windows:
        inside = tl[(tl["t"] >= w["start"]) & (tl["t"] <= w["end"])]
        before = tl[tl["t"] < w["start"]].tail(1)
        span = pd.concat([before, inside])

        def peak(col: str) -> float:
            return float(inside[col].max()) if col in inside and inside[col].notna().any() else np.nan

        def increase(col: str) -> float:
            if col not in span or span[col].notna().sum() < 2:
                return np.nan
            v = span[col].dropna()
            return float(v.iloc[-1] - v.iloc[0])

        rows.append({
            "level": w["level"], "repeat": w.get("repeat", 0), "samples": len(inside),
            "peak_running": peak("running"),
            "median_running": float(inside["running"].median()) if "running" in inside and len(inside) else np.nan,
            "peak_queued": peak("queued"),
            "peak_global_usage": peak("global_usage"), "peak_local_usage": peak("local_usage"),
            "retractions": increase("retracted_total"), "cached_tokens": increase("cached_tokens_total"),
        })
    return pd.DataFrame(rows, columns=cols)


def what_bounded(row: dict, level: int, prompts: int, max_running: int | None) -> str:
    """What limited one level, from its timeline summary (a row of :func:`level_summary`,
    or the same keys aggregated over repeats). ``level`` and ``prompts``: the client's
    concurrency and request count; ``max_running``: the server's cap, if known."""
    want = min(level, prompts)
    peak = row.get("peak_running")
    if row.get("samples") == 0:
        return "no sample: the level was shorter than the sampling interval"
    if peak is None or (isinstance(peak, float) and math.isnan(peak)):
        return "no server timeline"
    def number(key: str) -> float:  # 0 for a missing gauge (None or NaN)
        v = row.get(key)
        return 0 if v is None or (isinstance(v, float) and math.isnan(v)) else v

    peak, queued, retr = int(peak), number("peak_queued"), number("retractions")
    usage = {"global": row.get("peak_global_usage"), "local": row.get("peak_local_usage")}
    # full: no room for one more request of the running ones' average size, or FULL
    limit = min(FULL, peak / (peak + 1)) if peak > 0 else FULL
    full = [f"{k} pool {v:.0%} full" for k, v in usage.items()
            if v is not None and not math.isnan(v) and v >= limit]
    if retr and not math.isnan(retr) and retr > 0:
        return f"KV pool: {int(retr)} retraction(s) ({', '.join(full) or 'pool full'})"
    if peak >= want:
        return f"not admission: all {want} ran at once (the forward passes bound it)"
    if max_running and peak >= max_running:
        return f"--max-running-requests: {peak} of {want} ran, up to {int(queued)} queued"
    if full:
        return f"KV capacity: at most {peak} of {want} ran, up to {int(queued)} queued ({', '.join(full)})"
    return f"admission: at most {peak} of {want} ran, up to {int(queued)} queued"
