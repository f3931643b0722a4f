"""Per-level aggregates of a run's request records (pandas).

One row per (label, level, rate). Conventions:

* Warm-up records are dropped. Cancelled requests (Ctrl-C) are counted but are neither
  successes nor failures; failed ones are ``failed``; successful ones whose server-reported
  lengths differ from the requested ones are also counted in ``mismatched``.
* ``duration`` runs from the level's start (t = 0, the first due time) to the end of its
  last request, so throughputs are ``successful work / duration``.
* Token counts are the server's (``prompt_tokens``, ``completion_tokens``), falling back
  to the requested input length / the tokens seen in the stream when it gave none.
* Latency statistics are over successful requests, in milliseconds: mean and the
  50/90/99th percentiles (numpy's default linear interpolation, via pandas).
  ``tpot = (e2e - ttft) / (output tokens - 1)`` per request; ``itl`` pools every
  inter-token gap of every successful request of the level.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

QUANTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99}
LATENCIES = ("ttft", "ttft_from_due", "tpot", "itl", "e2e", "e2e_from_due")
KEYS = ["label", "level", "rate"]


def read_jsonl(path: Path) -> pd.DataFrame:
    """Records of one ``requests.jsonl``; a torn last line (crash mid-write) is skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pd.DataFrame(rows)


def load_run(run_dir: Path) -> pd.DataFrame:
    """All records of a run folder, with ``label`` from ``meta.json`` when present."""
    run_dir = Path(run_dir)
    df = read_jsonl(run_dir / "requests.jsonl")
    meta = run_dir / "meta.json"
    if meta.is_file() and len(df):
        df["label"] = json.loads(meta.read_text()).get("label", df["label"])
    return df


def stats(values: pd.Series, name: str) -> dict[str, float]:
    """Mean and percentiles of ``values`` (seconds) in ms; NaN when empty."""
    v = pd.to_numeric(values, errors="coerce").dropna() * 1e3
    out = {f"{name}_mean_ms": v.mean() if len(v) else np.nan}
    q = v.quantile(list(QUANTILES.values())) if len(v) else None
    for key, p in QUANTILES.items():
        out[f"{name}_{key}_ms"] = q.loc[p] if q is not None else np.nan
    return out


def _level(g: pd.DataFrame) -> pd.Series:
    cancelled = g["cancelled"].astype(bool)
    ok = g["ok"].astype(bool) & ~cancelled
    good = g[ok]
    duration = g["done"].max()
    out_tok = good["completion_tokens"].fillna(good["stream_tokens"])
    in_tok = good["prompt_tokens"].fillna(good["input_len"])
    row = {
        "requests": int((~cancelled).sum()), "ok": int(ok.sum()),
        "failed": int((~ok & ~cancelled).sum()), "cancelled": int(cancelled.sum()),
        "mismatched": int(good["mismatch"].notna().sum()),
        "duration_s": duration,
        "input_tokens": int(in_tok.sum()), "output_tokens": int(out_tok.sum()),
        "cached_tokens": int(good["cached_tokens"].fillna(0).sum()),
    }
    dur = duration if duration and duration > 0 else np.nan
    row["req_per_s"] = row["ok"] / dur
    row["input_tok_per_s"] = row["input_tokens"] / dur
    row["output_tok_per_s"] = row["output_tokens"] / dur
    row["total_tok_per_s"] = (row["input_tokens"] + row["output_tokens"]) / dur
    tpot = (good["e2e"] - good["ttft"]) / (out_tok - 1).where(out_tok > 1)
    series = {"ttft": good["ttft"], "ttft_from_due": good["ttft_from_due"], "tpot": tpot,
              "itl": good["itl"].explode(), "e2e": good["e2e"], "e2e_from_due": good["e2e_from_due"]}
    for name in LATENCIES:
        row.update(stats(series[name], name))
    return pd.Series(row)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (label, level, rate) of the non-warm-up records; ``rate`` inf = all at once."""
    if df.empty:
        return pd.DataFrame(columns=KEYS)
    df = df[~df["warmup"].astype(bool)].copy()
    if df.empty:
        return pd.DataFrame(columns=KEYS)
    df["rate"] = pd.to_numeric(df["rate"]).fillna(math.inf)
    rows = df.groupby(KEYS, sort=False).apply(_level, include_groups=False)
    return rows.reset_index().sort_values(["label", "rate", "level"], kind="stable",
                                           ignore_index=True)


def _statuses(s: pd.Series) -> str:
    return ",".join(sorted({str(int(x)) if pd.notna(x) else "-" for x in s}))


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """Failed (non-cancelled) measured requests grouped by label, level and error text."""
    cols = ["label", "level", "error", "count", "status"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    bad = df[~df["ok"].astype(bool) & ~df["cancelled"].astype(bool) & ~df["warmup"].astype(bool)]
    if bad.empty:
        return pd.DataFrame(columns=cols)
    bad = bad.assign(error=bad["error"].fillna("?").str.slice(0, 160))
    out = bad.groupby(["label", "level", "error"], sort=False).agg(
        count=("index", "size"), status=("status", _statuses))
    return out.reset_index()[cols]


def mismatches(df: pd.DataFrame) -> pd.DataFrame:
    """Successful measured requests whose lengths differ from the requested ones."""
    cols = ["label", "level", "index", "mismatch"]
    if df.empty or "mismatch" not in df:
        return pd.DataFrame(columns=cols)
    m = df[df["mismatch"].notna() & ~df["warmup"].astype(bool)]
    return m[cols].reset_index(drop=True)
