"""Render one run, or several runs (variants) side by side: CSV, Markdown, PNG plots.

``render([run_dir], out)`` writes into ``out``:
``summary.csv`` (+ ``summary.parquet`` when pyarrow is installed), ``report.md``,
``throughput.png`` (tokens/s and requests/s vs concurrency, with each level's run-to-run
range) and ``latency.png`` (TTFT, TPOT, ITL, E2E p50 and p99 vs concurrency), one line
per variant label, and, when the runs sampled the server's ``/metrics``,
``timeline.png`` (running and queued requests, global and local pool usage over time,
one row per variant) with a table of what bounded each level (:mod:`harness.sampler`).
It works on partial runs (interrupted, crashed): it only reads what was written.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

from harness import metrics, sampler  # noqa: E402
from harness.sysinfo import provenance_lines  # noqa: E402
from harness.slo import SLO  # noqa: E402
from harness.slo import parse as slo_parse  # noqa: E402

TABLE_COLUMNS = {
    "label": "variant", "level": "conc", "rate": "rate", "runs": "runs", "ok": "ok",
    "failed": "failed",
    "cancelled": "cancelled", "mismatched": "len mismatch", "duration_s": "time s",
    "req_per_s": "req/s", "input_tok_per_s": "in tok/s", "output_tok_per_s": "out tok/s",
    "output_tok_per_s_spread": "out tok/s spread", "total_tok_per_s": "total tok/s",
    "ttft_mean_ms": "TTFT mean", "ttft_p50_ms": "TTFT p50", "ttft_p99_ms": "TTFT p99",
    "ttft_from_due_p99_ms": "TTFT-from-due p99",
    "tpot_mean_ms": "TPOT mean", "tpot_p50_ms": "TPOT p50", "tpot_p99_ms": "TPOT p99",
    "itl_p50_ms": "ITL p50", "itl_p90_ms": "ITL p90", "itl_p99_ms": "ITL p99",
    "e2e_mean_ms": "E2E mean", "e2e_p50_ms": "E2E p50", "e2e_p99_ms": "E2E p99",
    "prefix_hit_rate": "prefix hit rate",
    "slo_attainment": "SLO attainment", "goodput_req_per_s": "goodput req/s",
    "goodput_tok_per_s": "goodput out tok/s",
}


def run_slo(metas: list[dict]) -> SLO | None:
    """The SLO the runs were measured against (``config.slo`` of their meta.json)."""
    texts = {m.get("config", {}).get("slo") for m in metas} - {None}
    if len(texts) > 1:
        raise ValueError(f"runs measured against different SLOs: {sorted(texts)}")
    return slo_parse(texts.pop()) if texts else None


def _meta(run_dir: Path) -> dict:
    p = Path(run_dir) / "meta.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def load(run_dirs: list[Path]) -> tuple[pd.DataFrame, list[dict]]:
    """Records of all runs concatenated, and each run's ``meta.json`` (``{}`` if absent)."""
    frames, metas = [], []
    for d in run_dirs:
        df, meta = metrics.load_run(d), _meta(d)
        if df.empty:
            df = pd.DataFrame(columns=["label"])
        if "label" not in meta:
            meta["label"] = df["label"].iloc[0] if len(df) else Path(d).name
        meta["run_dir"] = str(d)
        frames.append(df)
        metas.append(meta)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), metas


def table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with readable column names (the Markdown table)."""
    cols = [c for c in TABLE_COLUMNS if c in summary]
    t = summary[cols].rename(columns=TABLE_COLUMNS)
    if "rate" in t:
        t["rate"] = t["rate"].map(lambda r: "all" if math.isinf(r) else f"{r:g}")
    return t


def _runs_md(metas: list[dict]) -> str:
    lines = ["| variant | status | workload | api | url | commit | hardware | run folder |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in metas:
        c = m.get("config", {})
        hw = m.get("hardware", {})
        gpus = "; ".join(hw.get("gpus", [])) or hw.get("cpu", "?")
        work = (f"{c.get('num_prompts', '?')} x {c.get('input_len', '?')} in / "
                f"{c.get('output_len', '?')} out, seed {c.get('seed', '?')}")
        commit = (m.get("git", {}).get("commit") or "?")
        commit = commit[:12] if not commit.startswith("unknown") else "none"
        lines.append(f"| {m['label']} | {m.get('status', '?')} | {work} | {c.get('api', '?')} "
                     f"| {c.get('url', '?')} | {commit} | {gpus} | {m['run_dir']} |")
    return "\n".join(lines)


def _axes(ax, levels: list[int], title: str) -> None:
    """Log-2 concurrency axis ticked at the measured levels; linear y from 0."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(bottom=0)
    ax.set(xlabel="max concurrency", title=title)
    ax.grid(alpha=0.3)


def plot(summary: pd.DataFrame, out: Path) -> list[Path]:
    """``throughput.png`` and ``latency.png``; one line per (label, rate)."""
    groups = list(summary.groupby(["label", "rate"], sort=False))
    levels = sorted(summary["level"].unique().tolist())
    multi_rate = summary["rate"].nunique() > 1

    def name(label, rate):
        return f"{label} @ {rate:g}/s" if multi_rate and not math.isinf(rate) else str(label)

    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, col, title in zip(axes, ["output_tok_per_s", "total_tok_per_s", "req_per_s"],
                              ["output tokens/s", "total tokens/s", "requests/s"]):
        for (label, rate), g in groups:
            line, = ax.plot(g["level"], g[col], marker="o", label=name(label, rate))
            if f"{col}_min" in g and (g.get("runs", 1) > 1).any():  # run-to-run range
                ax.fill_between(g["level"], g[f"{col}_min"], g[f"{col}_max"],
                                color=line.get_color(), alpha=0.2)
        _axes(ax, levels, title)
    axes[0].legend()
    fig.tight_layout()
    paths.append(out / "throughput.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for ax, m in zip(axes, ["ttft", "tpot", "itl", "e2e"]):
        for i, ((label, rate), g) in enumerate(groups):
            color = f"C{i}"
            ax.plot(g["level"], g[f"{m}_p50_ms"], marker="o", color=color,
                    label=f"{name(label, rate)} p50")
            ax.plot(g["level"], g[f"{m}_p99_ms"], marker="x", ls="--", color=color,
                    label=f"{name(label, rate)} p99")
        _axes(ax, levels, f"{m.upper()} (ms)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if "slo_attainment" in summary:  # goodput.png: attainment and goodput vs concurrency
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, col, title in zip(axes, ["slo_attainment", "goodput_req_per_s"],
                                  ["SLO attainment", "goodput (good requests/s)"]):
            for (label, rate), g in groups:
                ax.plot(g["level"], g[col], marker="o", label=name(label, rate))
            _axes(ax, levels, title)
        axes[0].set_ylim(0, 1.05)
        axes[0].legend()
        fig.tight_layout()
        paths.append(out / "goodput.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# ---- the server's timeline ------------------------------------------------------------
BOUNDS_COLUMNS = {"label": "variant", "level": "conc", "runs": "runs", "samples": "samples",
                  "peak_running": "peak running", "median_running": "median running",
                  "peak_queued": "peak queued", "peak_global_usage": "global pool peak",
                  "peak_local_usage": "local pool peak", "retractions": "retractions",
                  "cached_tokens": "cached tokens",
                  "bounded_by": "what bounded it (server timeline)"}


def timeline_bounds(run_dirs: list[Path]) -> tuple[pd.DataFrame, list[str]]:
    """Per (variant, level): the server's timeline over every run of the level (peaks are
    the maximum over the runs, the median running the median of the runs' medians,
    retractions summed) and what bounded it (:func:`harness.sampler.what_bounded`); plus a
    note for every run folder without a timeline."""
    rows, notes, runs = [], [], {}
    for d in map(Path, run_dirs):  # several folders of one label (rounds) are pooled
        meta = _meta(d)
        label = meta.get("label") or d.name
        tl = sampler.load(d)
        if tl.empty or "running" not in tl:
            why = (meta.get("timeline") or {}).get("note") or "no timeline.jsonl in the run folder"
            notes.append(f"{label}: {why}")
            continue
        info = json.loads((d / "server_info.json").read_text()) if (d / "server_info.json").is_file() else {}
        prompts = (meta.get("config") or {}).get("num_prompts")
        per = sampler.level_summary(tl, meta.get("levels", []))
        pers, _, _ = runs.setdefault(label, ([], info, prompts))
        pers.append(per)
    for label, (pers, info, prompts) in runs.items():
        per = pd.concat(pers, ignore_index=True)
        for level, g in per.groupby("level", sort=False):
            agg = {"samples": int(g["samples"].sum()),
                   "peak_running": g["peak_running"].max(), "median_running": g["median_running"].median(),
                   "peak_queued": g["peak_queued"].max(), "peak_global_usage": g["peak_global_usage"].max(),
                   "peak_local_usage": g["peak_local_usage"].max(),
                   "retractions": g["retractions"].sum(min_count=1),
                   "cached_tokens": g["cached_tokens"].sum(min_count=1)}
            rows.append({"label": label, "level": int(level), "runs": len(g), **agg,
                         "bounded_by": sampler.what_bounded(agg, int(level), prompts or int(level),
                                                            info.get("max_running_requests"))})
    return pd.DataFrame(rows, columns=list(BOUNDS_COLUMNS)), notes


def bounds_table(bounds: pd.DataFrame) -> pd.DataFrame:
    t = bounds[[c for c in BOUNDS_COLUMNS if c in bounds]].copy()
    for c in ("peak_global_usage", "peak_local_usage"):
        if c in t:
            t[c] = t[c].map(lambda v: "-" if pd.isna(v) else f"{v:.0%}")
    return t.rename(columns=BOUNDS_COLUMNS)


def plot_timeline(run_dirs: list[Path], path: Path) -> Path | None:
    """``path``: per variant (one row each) running and queued requests, and global and
    local pool usage, over the run's time; each level run shaded and named. None when no
    run has a timeline."""
    items = []
    for d in map(Path, run_dirs):
        tl, meta = sampler.load(d), _meta(d)
        if not tl.empty and "running" in tl:
            items.append((meta.get("label") or d.name, tl.sort_values("t"), meta.get("levels", [])))
    if not items:
        return None
    fig, axes = plt.subplots(len(items), 2, figsize=(15, 2.4 * len(items) + 0.8), squeeze=False)
    for (label, tl, windows), (a, b) in zip(items, axes):
        step = dict(drawstyle="steps-post", marker=".", markersize=3)  # gauges hold until the next sample
        a.plot(tl["t"], tl["running"], color="C0", label="running", **step)
        if "queued" in tl:
            a.plot(tl["t"], tl["queued"], color="C3", label="queued", **step)
        for col, name, color in (("global_usage", "global pool", "C2"), ("local_usage", "local pool", "C4")):
            if col in tl and tl[col].notna().any():
                b.plot(tl["t"], tl[col] * 100, color=color, label=name, **step)
        for i, w in enumerate(windows):
            for ax in (a, b):
                ax.axvspan(w["start"], w["end"], color="0.5", alpha=0.08 + 0.08 * (i % 2), lw=0)
            a.text((w["start"] + w["end"]) / 2, 1.0, f"c={w['level']}", transform=a.get_xaxis_transform(),
                   ha="center", va="bottom", fontsize=7)
        a.set_ylabel(f"{label}\nrequests")
        a.set_ylim(bottom=0)
        b.set(ylabel="pool usage %", ylim=(0, 105))
        for ax in (a, b):
            ax.grid(alpha=0.3)
            ax.legend(loc="upper right", fontsize=7)
    axes[-1][0].set_xlabel("seconds since the run started")
    axes[-1][1].set_xlabel("seconds since the run started")
    fig.suptitle("Server timeline (SGLang /metrics): running and queued requests, KV pool usage")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def markdown(summary: pd.DataFrame, df: pd.DataFrame, metas: list[dict],
             plots: list[Path], bounds: pd.DataFrame | None = None,
             notes: list[str] = ()) -> str:
    parts = ["# Serving benchmark report", "", "## Runs", "", _runs_md(metas), ""]
    for m in metas:  # every run's command, commit, versions and hardware
        lines = provenance_lines(m)
        parts += ([f"Run `{m.get('label')}`:", ""] if len(metas) > 1 else []) + lines + [""]
    parts += ["## Per concurrency level", "",
              "Throughput counts successful requests only; latencies in ms over successful "
              "requests; TTFT-from-due includes waiting for a concurrency slot. With several "
              "runs per level: counts summed, other columns the median of the runs, "
              "spread = (max - min) / median of the runs' output tok/s.", ""]
    parts.append(table(summary).to_markdown(index=False, floatfmt=".4g") if len(summary)
                 else "_no finished requests_")
    if (slo := run_slo(metas)) is not None:
        parts += ["", f"SLO: {slo.describe()} (ms). A request is good when it succeeded and "
                  "met every objective (TTFT and E2E from sending it; TPOT = (E2E - TTFT) / "
                  "(output tokens - 1)); SLO attainment = good / requests of the level; goodput = "
                  "good requests, and their output tokens, per second of the level (vLLM's "
                  "`--goodput`, AIPerf's good request fraction)."]
    if "prefix_hit_rate" in summary:
        parts += ["", "Prefix hit rate: the server's cached prompt tokens (`cached_tokens`) / "
                  "prompt tokens of the level's successful requests."]
    if (bounds is not None and len(bounds)) or notes:
        every = sorted({t["interval_s"] for m in metas if (t := m.get("timeline") or {}).get("interval_s")})
        when = f"every {' / '.join(f'{x:g}' for x in every)} s" if every else "periodically"
        parts += ["", "## Server timeline", "",
                  f"From SGLang's `/metrics`, sampled {when} (`timeline.jsonl`)."]
        if bounds is not None and len(bounds):
            parts += ["", bounds_table(bounds).to_markdown(index=False, floatfmt=".4g")]
        parts += [""] + [f"- {n}" for n in notes]
    fails, mism = metrics.failures(df), metrics.mismatches(df)
    parts += ["", f"## Failures ({int(fails['count'].sum()) if len(fails) else 0})", ""]
    parts.append(fails.to_markdown(index=False) if len(fails) else "none")
    parts += ["", f"## Length mismatches ({len(mism)})", ""]
    parts.append(mism.head(50).to_markdown(index=False) if len(mism) else "none")
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    cmds = [f"- {m['label']}: `{m['command']}`" for m in metas if m.get("command")]
    if cmds:
        parts += ["", "## Commands", ""] + cmds
    return "\n".join(parts) + "\n"


def render(run_dirs: list[Path], out: Path) -> dict[str, Path]:
    """Write the report files for ``run_dirs`` into ``out``; return them by kind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df, metas = load([Path(d) for d in run_dirs])
    summary = metrics.summarize(df, run_slo(metas))
    files = {"csv": out / "summary.csv"}
    summary.to_csv(files["csv"], index=False)
    if importlib.util.find_spec("pyarrow") and len(summary):
        files["parquet"] = out / "summary.parquet"
        summary.to_parquet(files["parquet"], index=False)
    plots = plot(summary, out) if len(summary) else []
    if tl_plot := plot_timeline(run_dirs, out / "timeline.png"):
        plots.append(tl_plot)
    files.update({p.stem: p for p in plots})
    bounds, notes = timeline_bounds(run_dirs)
    notes += [f"{m['label']}: {m['flush_note']}" for m in metas if m.get("flush_note")]
    files["md"] = out / "report.md"
    files["md"].write_text(markdown(summary, df, metas, plots, bounds, notes))
    return files
