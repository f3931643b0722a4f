"""Per-level aggregates of a run's request records (pandas).

One row per (label, level, rate), over every run of the level (``--repeats``): counts
summed, the other columns the median of the runs, with each run's range for the
throughputs and median latencies (:data:`SPREAD`); :func:`per_run` gives the runs
themselves. Conventions:

* Warm-up records are dropped. Cancelled requests (Ctrl-C) are counted but are neither
  successes nor failures; failed ones are ``failed``; successful ones whose server-reported
  lengths differ from the requested ones are also counted in ``mismatched``.
* ``duration`` runs from the level's start (t = 0, the first due time) to the end of its
  last request, so throughputs are ``successful work / duration`` (per run).
* Token counts are the server's (``prompt_tokens``, ``completion_tokens``), falling back
  to the requested input length / the tokens seen in the stream when it gave none.
* Latency statistics are over successful requests, in milliseconds: mean and the
  50/90/99th percentiles (numpy's default linear interpolation, via pandas).
  ``tpot = (e2e - ttft) / (output tokens - 1)`` per request; ``itl`` pools every
  inter-token gap of every successful request of the level.
* With an SLO (:mod:`harness.slo`): ``slo_good`` requests met every objective,
  ``slo_attainment`` = good / requests, ``goodput_req_per_s`` and ``goodput_tok_per_s`` =
  good requests and their output tokens / duration.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.slo import SLO
from harness.slo import good as good_requests

QUANTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99}
LATENCIES = ("ttft", "ttft_from_due", "tpot", "itl", "e2e", "e2e_from_due")
KEYS = ["label", "level", "rate"]
RUN_KEYS = KEYS + ["repeat"]
#: per-level counts: summed over the runs of a level (everything else: their median)
COUNTS = ("requests", "ok", "failed", "cancelled", "mismatched", "input_tokens",
          "output_tokens", "cached_tokens", "slo_good")
#: columns whose run-to-run range (min, max, spread) every summary carries
SPREAD = ("req_per_s", "output_tok_per_s", "total_tok_per_s", "ttft_p50_ms", "tpot_p50_ms",
          "itl_p50_ms", "e2e_p50_ms")


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


def _level(g: pd.DataFrame, slo: SLO | None = None) -> pd.Series:
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
    row["prefix_hit_rate"] = row["cached_tokens"] / row["input_tokens"] if row["input_tokens"] else np.nan
    if slo is not None:
        live = g[~cancelled]
        out_all = live["completion_tokens"].fillna(live["stream_tokens"])
        tpot_all = (live["e2e"] - live["ttft"]) / (out_all - 1).where(out_all > 1)
        good = good_requests(ok[~cancelled], live["ttft"], tpot_all, live["e2e"], slo)
        row["slo_good"] = int(good.sum())
        row["slo_attainment"] = row["slo_good"] / row["requests"] if row["requests"] else np.nan
        row["goodput_req_per_s"] = row["slo_good"] / dur
        row["goodput_tok_per_s"] = out_all[good].sum() / dur
    return pd.Series(row)


def per_run(df: pd.DataFrame, slo: SLO | None = None) -> pd.DataFrame:
    """One row per (label, level, rate, repeat) of the non-warm-up records: each run of a
    level on its own (records without ``repeat`` are run 0); with ``slo``, its goodput."""
    if df.empty:
        return pd.DataFrame(columns=RUN_KEYS)
    df = df[~df["warmup"].astype(bool)].copy()
    if df.empty:
        return pd.DataFrame(columns=RUN_KEYS)
    df["rate"] = pd.to_numeric(df["rate"]).fillna(math.inf)
    df["repeat"] = pd.to_numeric(df["repeat"]).fillna(0).astype(int) if "repeat" in df else 0
    rows = df.groupby(RUN_KEYS, sort=False).apply(_level, slo=slo, include_groups=False)
    return rows.reset_index().sort_values(["label", "rate", "level", "repeat"], kind="stable",
                                           ignore_index=True)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (label, level, rate) from :func:`per_run` rows: counts summed over the
    runs, every other column the median of the runs; ``runs`` their number; for each of
    :data:`SPREAD` its ``_min`` and ``_max`` over the runs and ``_spread`` = (max - min) /
    median. With one run the row is that run (spread 0)."""
    if runs.empty:
        return pd.DataFrame(columns=KEYS)
    cols = [c for c in runs.columns if c not in RUN_KEYS]
    g = runs.groupby(KEYS, sort=False)
    out = g[cols].median()
    out[[c for c in COUNTS if c in out]] = g[[c for c in COUNTS if c in out]].sum()
    out.insert(0, "runs", g.size())
    for c in SPREAD:
        lo, hi = g[c].min(), g[c].max()
        out[f"{c}_min"], out[f"{c}_max"] = lo, hi
        out[f"{c}_spread"] = (hi - lo) / out[c]
    ints = [c for c in COUNTS if c in out]
    out[ints] = out[ints].astype(int)
    return out.reset_index()


def summarize(df: pd.DataFrame, slo: SLO | None = None) -> pd.DataFrame:
    """One row per (label, level, rate) of the non-warm-up records, over all runs of the
    level (:func:`per_run` then :func:`aggregate`); ``rate`` inf = all at once."""
    return aggregate(per_run(df, slo))


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


#: the significance test's confidence level
CONFIDENCE = 0.95


def ratio_interval(runs: pd.Series, base: pd.Series) -> tuple[float, float, str]:
    """A ``CONFIDENCE`` interval of the ratio of a variant's throughput to the baseline's,
    from their runs (indexed by repeat): Student's t on log ratios (scipy.stats), so the
    interval is of the geometric-mean ratio. When both ran the same repeats each repeat's
    ratio is one sample (``paired``: a round's slow machine slows both); otherwise
    Welch's t on the two sides' log throughputs (``unpaired``). Not a bootstrap: with the
    3 runs a bench affords, a percentile bootstrap interval is just the runs' [min, max]
    and covers far less than 95%."""
    from scipy import stats

    common = runs.index.intersection(base.index)
    if len(common) == len(runs) == len(base):
        logs = np.log(runs.loc[common].to_numpy(float) / base.loc[common].to_numpy(float))
        if np.ptp(logs) == 0:  # every run gave the same ratio: no spread to test against
            return float(np.exp(logs[0])), float(np.exp(logs[0])), "paired"
        ci = stats.ttest_1samp(logs, 0.0).confidence_interval(CONFIDENCE)
        return float(np.exp(ci.low)), float(np.exp(ci.high)), "paired"
    ci = stats.ttest_ind(np.log(runs.to_numpy(float)), np.log(base.to_numpy(float)),
                         equal_var=False).confidence_interval(CONFIDENCE)
    return float(np.exp(ci.low)), float(np.exp(ci.high)), "unpaired"


def speedup(summary: pd.DataFrame, baseline: str, runs: pd.DataFrame | None = None,
            col: str = "output_tok_per_s") -> pd.DataFrame:
    """``summary`` (one row per label and level, from :func:`summarize`) with the speed-up
    of every label over ``baseline`` at the same level and rate: ``speedup_vs_<baseline>``
    (median over median) and ``speedup_low`` / ``speedup_high`` (worst run over the
    baseline's best, best over its worst). With ``runs`` (:func:`per_run` rows of both),
    ``speedup_ci_low`` / ``speedup_ci_high``: the interval of :func:`ratio_interval`, and
    ``significant``: ``yes`` when it excludes 1, ``no`` when it holds 1 (the difference
    is inside the run-to-run noise), ``n/a`` with fewer than two runs on either side.
    Without ``runs``,
    ``significant`` says whether the two labels' ranges are disjoint. The baseline's own
    rows get 1.0 and ``-``."""
    out = summary.copy()
    name = f"speedup_vs_{baseline}"
    lo, hi = f"{col}_min", f"{col}_max"
    base = out[out["label"] == baseline].set_index(["level", "rate"])
    by_run = None if runs is None else runs.set_index(KEYS + ["repeat"])[col].sort_index()
    rows = []
    for _, r in out.iterrows():
        key = (r["level"], r["rate"])
        if key not in base.index:
            rows.append((np.nan, np.nan, np.nan, np.nan, np.nan, "n/a (no baseline)"))
            continue
        b = base.loc[key]
        ratio = r[col] / b[col]
        low, high = r[lo] / b[hi], r[hi] / b[lo]
        ci_low = ci_high = np.nan
        if r["label"] == baseline:
            verdict = "-"
        elif min(r["runs"], b["runs"]) < 2:
            verdict = "n/a (1 run)"
        elif by_run is not None:
            mine = by_run.loc[(r["label"], *key)]
            theirs = by_run.loc[(baseline, *key)]
            ci_low, ci_high, how = ratio_interval(mine, theirs)
            verdict = (f"yes ({how})" if ci_low > 1 or ci_high < 1
                       else f"no ({how}: interval holds 1)")
        elif r[lo] > b[hi] or r[hi] < b[lo]:
            verdict = "yes"
        else:
            verdict = "no (inside run-to-run spread)"
        rows.append((ratio, low, high, ci_low, ci_high, verdict))
    cols = [name, "speedup_low", "speedup_high", "speedup_ci_low", "speedup_ci_high", "significant"]
    out[cols] = pd.DataFrame(rows, index=out.index)
    return out
