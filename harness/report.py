"""Render one run, or several runs (variants) side by side: CSV, Markdown, PNG plots.

``render([run_dir], out)`` writes into ``out``:
``summary.csv`` (+ ``summary.parquet`` when pyarrow is installed), ``report.md``,
``throughput.png`` (tokens/s and requests/s vs concurrency) and ``latency.png``
(TTFT, TPOT, ITL, E2E p50 and p99 vs concurrency), one line per variant label.
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

from harness import metrics  # noqa: E402

TABLE_COLUMNS = {
    "label": "variant", "level": "conc", "rate": "rate", "ok": "ok", "failed": "failed",
    "cancelled": "cancelled", "mismatched": "len mismatch", "duration_s": "time s",
    "req_per_s": "req/s", "input_tok_per_s": "in tok/s", "output_tok_per_s": "out tok/s",
    "total_tok_per_s": "total tok/s",
    "ttft_mean_ms": "TTFT mean", "ttft_p50_ms": "TTFT p50", "ttft_p99_ms": "TTFT p99",
    "ttft_from_due_p99_ms": "TTFT-from-due p99",
    "tpot_mean_ms": "TPOT mean", "tpot_p50_ms": "TPOT p50", "tpot_p99_ms": "TPOT p99",
    "itl_p50_ms": "ITL p50", "itl_p90_ms": "ITL p90", "itl_p99_ms": "ITL p99",
    "e2e_mean_ms": "E2E mean", "e2e_p50_ms": "E2E p50", "e2e_p99_ms": "E2E p99",
}


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
            ax.plot(g["level"], g[col], marker="o", label=name(label, rate))
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
    return paths


def markdown(summary: pd.DataFrame, df: pd.DataFrame, metas: list[dict],
             plots: list[Path]) -> str:
    parts = ["# Serving benchmark report", "", "## Runs", "", _runs_md(metas), ""]
    parts += ["## Per concurrency level", "",
              "Throughput counts successful requests only; latencies in ms over successful "
              "requests; TTFT-from-due includes waiting for a concurrency slot.", ""]
    parts.append(table(summary).to_markdown(index=False, floatfmt=".4g") if len(summary)
                 else "_no finished requests_")
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
    summary = metrics.summarize(df)
    files = {"csv": out / "summary.csv"}
    summary.to_csv(files["csv"], index=False)
    if importlib.util.find_spec("pyarrow") and len(summary):
        files["parquet"] = out / "summary.parquet"
        summary.to_parquet(files["parquet"], index=False)
    plots = plot(summary, out) if len(summary) else []
    files.update({p.stem: p for p in plots})
    files["md"] = out / "report.md"
    files["md"].write_text(markdown(summary, df, metas, plots))
    return files
