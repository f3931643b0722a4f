"""The bench report: throughput and latency per variant and level with their spread and
significance, the roofline bound beside each level, what bounded each level (the
server's timeline), and KV capacity three ways (formula, allocated pools, measured)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from harness.slo import parse as parse_slo
from mixkv_bench import variants
from mixkv_bench.bench_roofline import roofline_columns
from mixkv_bench.settings import DECODE_LOG_INTERVAL, Settings, bench_size
from sglang_mixkv import kv_math as cap
from sglang_mixkv.defaults import eviction_interval, parse_bytes

def harness_dir(vdir: Path, round_no: int | None = None) -> Path:
    """Where a variant's harness run goes: ``harness/``, or ``harness/round-K/`` (K from 1)
    when the bench runs in rounds."""
    return vdir / "harness" if round_no is None else vdir / "harness" / f"round-{round_no + 1}"


def harness_dirs(vdir: Path) -> list[Path]:
    """A variant's harness runs that hold records, in round order."""
    one = harness_dir(vdir)
    if (one / "requests.jsonl").exists():
        return [one]
    rounds = [d for d in one.glob("round-*") if (d / "requests.jsonl").exists()]
    return sorted(rounds, key=lambda d: int(d.name.split("-")[1]))


def load_variant(dirs: list[Path]):
    """Every record of a variant's runs; with rounds, ``repeat`` is the round (0-based)."""
    import pandas as pd

    from harness import metrics

    frames = []
    for k, d in enumerate(dirs):
        df = metrics.load_run(d)
        if len(dirs) > 1 and len(df):
            df["repeat"] = k
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def write_report(run: Path, st: Settings) -> Path:
    import pandas as pd

    from harness import metrics
    from harness import report as hreport

    runs_of = {p: harness_dirs(run / p) for p in st.plans}
    runs_of = {p: d for p, d in runs_of.items() if d}
    done = [d for dirs in runs_of.values() for d in dirs]
    parts = [f"# sglang-mixkv bench: {run.name}", ""]
    meta = json.loads((run / "meta.json").read_text()) if (run / "meta.json").exists() else {}
    if meta:
        hw = meta.get("hardware", {})
        parts += [f"- command: `{meta.get('command')}`",
                  f"- commit: `{meta.get('git', {}).get('commit')}`"
                  + (" (dirty)" if meta.get("git", {}).get("dirty") else ""),
                  f"- versions: {json.dumps(meta.get('versions'))}",
                  f"- hardware: {', '.join(hw.get('gpus') or []) or 'no GPU'}; CPU {hw.get('cpu')} "
                  f"x{hw.get('cpu_count')}; {hw.get('memory_gib')} GiB RAM",
                  workload_line(run, st), ""]
    if done:
        slo = parse_slo(st.slo) if st.slo else None
        per_run = pd.concat([metrics.per_run(load_variant(d), slo) for d in runs_of.values()],
                            ignore_index=True)
        summary = metrics.aggregate(per_run)
        hreport.plot(summary, run)  # throughput.png, latency.png
        summary = metrics.speedup(summary, "standard", runs=per_run)
        summary, hw = roofline_columns(summary, run, st)
        summary.to_csv(run / "summary.csv", index=False)
        per_run.to_csv(run / "runs.csv", index=False)
        rounds = any(len(d) > 1 for d in runs_of.values())
        parts += throughput_section(summary, hw, st, rounds)
        parts += bounds_section(summary, done, [d[0] for d in runs_of.values()], run, hw)
    missing = [p for p in st.plans if p not in runs_of and not (run / p / "probe.json").exists()]
    if missing:
        parts += [f"Not measured (bench stopped or failed): {', '.join(missing)}", ""]
    captab = capacity_table(run, st)
    if len(captab):
        captab.to_csv(run / "capacity.csv", index=False)
        plot_capacity(captab, run / "capacity.png")
        parts += ["## KV capacity", "",
                  capacity_text(st), "",
                  captab.to_markdown(index=False), "", "![capacity](capacity.png)", ""]
    (run / "report.md").write_text("\n".join(parts))
    return run / "report.md"

def throughput_section(summary, hw, st: Settings, rounds: bool = True) -> list[str]:
    """The throughput and latency table: medians of the runs, the output tok/s range and
    spread, the speed-up over standard with its range and significance, and the roofline
    bound with the measured fraction of it."""
    import pandas as pd

    t = summary.copy()
    t["out_tok_per_s_range"] = [f"{a:.4g}-{b:.4g}" for a, b in zip(t["output_tok_per_s_min"],
                                                                   t["output_tok_per_s_max"])]
    t["speedup_range"] = [f"{a:.2f}-{b:.2f}" if pd.notna(a) and label != "standard" else "-"
                          for a, b, label in zip(t["speedup_low"], t["speedup_high"], t["label"])]
    t["speedup_95ci"] = [f"{a:.2f}-{b:.2f}" if pd.notna(a) else "-"
                         for a, b in zip(t["speedup_ci_low"], t["speedup_ci_high"])]
    cols = ["label", "level", "runs", "ok", "failed", "output_tok_per_s", "out_tok_per_s_range",
            "output_tok_per_s_spread", "speedup_vs_standard", "speedup_range", "speedup_95ci",
            "significant", "roofline_out_tok_per_s", "roofline_fraction", "ttft_p50_ms",
            "tpot_p50_ms", "itl_p99_ms", "e2e_p50_ms", "prefix_hit_rate", "slo_attainment",
            "goodput_req_per_s", "goodput_tok_per_s"]
    if not st.shared_prefix:
        cols.remove("prefix_hit_rate")
    bound = ("" if hw is None else
             f" `roofline_*`: the lower bound of `mixkv_bench.roofline` for the same plan, "
             f"workload, level and pools on {hw.describe()}; `roofline_fraction` = measured / "
             "bound output tok/s.")
    runs = int(t["runs"].max())
    how = (f"in {runs} rounds: each round started every variant's server afresh and ran its "
           "sweep once, variants in turn (round k starting at the k-th variant), so a drift "
           "of the machine's speed reaches every variant" if runs > 1 and rounds else
           f"{runs} times, one variant's runs back to back" if runs > 1 else "once")
    return ["## Throughput and latency", "",
            f"Each level ran {how}. Counts are summed over the runs, every "
            "other number is the median of the runs; `out_tok_per_s_range` and "
            "`output_tok_per_s_spread` ((max - min) / median) show the run-to-run spread. "
            "`speedup_range`: worst run over standard's best to best over its worst. "
            "`speedup_95ci` and `significant`: a 95% Student's t interval (scipy.stats) of the "
            "geometric-mean ratio of the variant's output tok/s to standard's, paired by run "
            "(each round's ratio is one sample, so a slow round that slows both cancels); `yes` "
            "when the interval excludes 1, `no` when it holds 1 (inside the run-to-run noise). "
            "Not a bootstrap: over 3 runs a percentile bootstrap interval is the runs' "
            "[min, max] and covers far less than 95%." + bound,
            "", t[[c for c in cols if c in t]].to_markdown(index=False, floatfmt=".3g"), "",
            *slo_section(t, st),
            "![throughput](throughput.png)", "", "![latency](latency.png)", ""]


def slo_section(summary, st: Settings) -> list[str]:
    """Per variant, the highest concurrency level whose SLO attainment (median of the
    runs) reaches ``st.slo_target``, and its goodput."""
    if not st.slo or "slo_attainment" not in summary:
        return []
    import pandas as pd

    rows = []
    for label, g in summary.groupby("label", sort=False):
        met = g[g["slo_attainment"] >= st.slo_target].sort_values("level")
        best = met.iloc[-1] if len(met) else None
        rows.append({"variant": label,
                     "highest level meeting the SLO": int(best["level"]) if best is not None else "none",
                     "attainment there": best["slo_attainment"] if best is not None else None,
                     "goodput req/s there": best["goodput_req_per_s"] if best is not None else None,
                     "best goodput req/s (any level)": g["goodput_req_per_s"].max()})
    return [f"SLO {parse_slo(st.slo).describe()} (ms), target attainment {st.slo_target:.0%}: a "
            "request is good when it succeeded and met every objective (TTFT and E2E from "
            "sending it, TPOT = (E2E - TTFT) / (output tokens - 1)); attainment = good / "
            "requests of the level, goodput = good requests per second (vLLM's `--goodput`, "
            "AIPerf's good request fraction).", "",
            pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"), "",
            "![goodput](goodput.png)", ""]

def bounds_section(summary, done: list[Path], first: list[Path], run: Path, hw) -> list[str]:
    """What bounded each level: the roofline's batch limit and bounding resources beside
    the server's timeline (peak running and queued requests, pool usage, retractions) over
    every run in ``done``; the timeline plot shows each variant's ``first`` run."""
    from harness import report as hreport

    bounds, notes = hreport.timeline_bounds(done)
    tl_png = hreport.plot_timeline(first, run / "timeline.png")
    t = summary[["label", "level"]].copy()
    if "roofline_running" in summary:
        t["roofline_batch"] = [f"{int(n)} ({lim})" for n, lim in zip(summary["roofline_running"],
                                                                   summary["roofline_batch_limit"])]
        t["roofline_phases"] = [f"prefill {a}, decode {b}" for a, b in zip(summary["roofline_prefill"],
                                                                           summary["roofline_decode"])]
        t["ttft_p50_ms / bound"] = [f"{a:.3g} / {b:.3g}" for a, b in zip(summary["ttft_p50_ms"],
                                                                          summary["roofline_ttft_ms"])]
        t["tpot_p50_ms / bound"] = [f"{a:.3g} / {b:.3g}" for a, b in zip(summary["tpot_p50_ms"],
                                                                          summary["roofline_tpot_ms"])]
    if len(bounds):
        tl = hreport.bounds_table(bounds).rename(columns={"variant": "label", "conc": "level"})
        t = t.merge(tl.drop(columns=["runs"]), on=["label", "level"], how="left")
    parts = ["## What bounded each level", "",
             "`roofline_batch`: the requests the roofline lets run at once and what limits them "
             "(the level, the prompts, `--max-running-requests` or the KV pools, split as the "
             "server splits them); `roofline_phases`: the resource that bounds prefill and decode "
             "in the roofline (its KV-pool batch counts every request at its full length; "
             "SGLang admits on an estimate of the tokens still to come and can run a few more "
             "while they are short, retracting if it runs out). The rest is the server's own "
             "timeline (SGLang `/metrics`, sampled "
             "about once a second during each level; its gauges are published after every "
             f"prefill batch and every {DECODE_LOG_INTERVAL} decode steps, the bench's "
             "`--decode-log-interval`): peaks over the level's runs and, from "
             "them, what bounded the level.", "", t.to_markdown(index=False, floatfmt=".3g"), ""]
    parts += [f"- {n}" for n in notes] + ([""] if notes else [])
    if tl_png:
        parts += ["![timeline](timeline.png)", ""]
    return parts

def workload_line(run: Path, st: Settings) -> str:
    """The report's workload line: the sweep's, or the capacity probe's real requests."""
    size = f"model size `{st.size}`" + (f", {st.kv_heads} KV heads" if st.kv_heads else "")
    if any((run / p / "probe.json").exists() for p in st.plans):
        return (f"- workload (capacity probe): n requests sent at once, each {st.input_len} random "
                f"prompt tokens + {st.output_len} output tokens (ignore_eos), T = "
                f"{st.input_len + st.output_len}; n = 1, 2, 4, ... until a probe fails (a "
                "retraction, or a request not held at the same time as all others), then "
                f"bisected; {size}; KV budget {st.kv_budget}; server flags "
                f"`{shlex.join(st.server_args) or '(serve defaults)'}`")
    shared = ""
    if st.shared_prefix:
        groups, tokens = st.shared_prefix.split(":")
        shared = (f", prompts in {groups} groups sharing their first {tokens} tokens "
                  "(`prefix_hit_rate`: cached / prompt tokens)")
    dp = f", {st.dp} servers per variant behind sglang-router" if st.dp > 1 else ""
    return (f"- workload: {st.num_prompts} prompts x {st.input_len} in / {st.output_len} out, "
            f"concurrency {st.concurrency}, {size}{shared}{dp}")

def capacity_text(st: Settings) -> str:
    """What the capacity table's columns mean and where formula and pools differ."""
    return (f"Requests of T = {st.input_len + st.output_len} tokens. `formula_*`: "
            "`sglang_mixkv.kv_math` at the server's KV budget, one window of local KV per "
            "request (`formula_local_tokens`); `pool_requests`: the running requests the "
            "local pool was sized for (the formula's count for `make capacity`); `server_*`: "
            "the pools SGLang allocated (`/server_info`), `server_max_running` its running-"
            "request cap (for `make capacity` set well above what the pools hold, so the "
            "pools end the search); `pool_max_requests`: requests of T tokens those pools "
            "hold (`kv_math.pool_max_requests`: the global pool T slots each; the local "
            "pool, after two prefill chunks, one window + the eviction interval + 2 pages "
            "each - our radix cache releases a request's cached prompt as it leaves the "
            "window); `measured_max_held`: the most requests the server ran at the same time "
            "without a retraction (`make capacity`), `measured_first_failed` the smallest "
            "count that failed, `measured_min_tokens` the shortest of the held requests when "
            "the first one completed (they were all at least that long at once; the prefill "
            "stagger is the rest of T), `probes` how many probes the search took. The eviction "
            "interval, pages and chunks are the slack between formula and pools: a few "
            "percent at a few MiB of KV, less at GPU scale.")

def capacity_table(run: Path, st: Settings):
    """Per plan: the formula at the run's KV budget, the pools the server allocated
    (``/server_info``) and the requests of T tokens those pools hold
    (:func:`kv_math.pool_max_requests`), and, after ``make capacity``, the measured count
    (``probe.json``)."""
    import pandas as pd

    size = bench_size(st)
    dims = cap.KVDims.of(size)
    tokens = st.input_len + st.output_len
    rows = []
    for plan in st.plans:
        vdir = run / plan
        variant = variants.parse(plan)
        p = variant.resolve(size.num_layers)
        ada = variant.compression(st.input_len)
        pt = cap.bytes_per_token(p, dims)
        row = {"plan": plan, "global_producers": len(p.global_producers),
               "local_producers": len(p.local_producers),
               "kv_bytes_per_token": f"{pt.global_bytes} + {pt.local_bytes} x min(T,W)/T"}
        probe = vdir / "probe.json"
        info_file = vdir / ("probe_server_info.json" if probe.exists() else "server_info.json")
        pool_requests = None
        if probe.exists():
            pr = json.loads(probe.read_text())
            pool_requests = pr.get("pool_requests")
            best = [x for x in pr["probes"] if x["all_at_once"] and x["sent"] == pr["max_held"]]
            shortest = best[0].get("min_output_at_first_end") if best else None
            row.update(measured_max_held=pr["max_held"], measured_first_failed=pr.get("first_failed"),
                       measured_capped=pr["capped"], probes=len(pr["probes"]),
                       measured_min_tokens=None if shortest is None else st.input_len + shortest)
        if info_file.exists():
            info = json.loads(info_file.read_text())
            mem = info["internal_states"][0]["memory_usage"]
            budget = parse_bytes(st.kv_budget) if st.kv_budget else int(mem["kvcache"] * 2**30)
            g, s, running = mem.get("token_capacity"), mem.get("token_capacity_swa"), info["max_running_requests"]
            chunk = info.get("chunked_prefill_size") or 0
            page = info.get("page_size") or 1
            split = cap.PoolSplit(g if p.global_producers else 0, s if p.local_producers else 0, 0, 0)
            held = cap.pool_max_requests(
                split, p, tokens, window=size.window, chunk=max(chunk, 0), page=page,
                eviction_interval=eviction_interval(size.window),
                chunks_in_flight=1 if info.get("disable_overlap_schedule") else 2, adakv=ada)
            n = cap.max_concurrent(budget, p, dims, size.window, tokens, ada)
            row.update(
                kv_budget_gib=round(budget / 2**30, 4),
                formula_max_tokens=cap.max_tokens(budget, p, dims, size.window, tokens, ada),
                formula_max_requests=n,
                formula_local_tokens=n * min(tokens, size.window) if p.local_producers else None,
                pool_requests=pool_requests or running,
                server_global_tokens=g if p.global_producers else None,
                server_local_tokens=s if p.local_producers else None,
                server_kvcache_gib=mem.get("kvcache"), server_max_running=running,
                pool_max_requests=min(held, running),
            )
            if "measured_max_held" in row and n:
                row["measured_vs_formula"] = round(row["measured_max_held"] / n, 3)
        rows.append(row)
    df = pd.DataFrame(rows)
    first = ["plan", "global_producers", "local_producers", "kv_bytes_per_token", "kv_budget_gib",
             "formula_max_tokens", "formula_max_requests", "formula_local_tokens", "pool_requests",
             "server_global_tokens", "server_local_tokens", "server_kvcache_gib",
             "server_max_running", "pool_max_requests", "measured_max_held", "measured_vs_formula",
             "measured_first_failed", "measured_min_tokens", "probes"]
    return df[[c for c in first if c in df] + [c for c in df if c not in first]]

def plot_capacity(df, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in ("formula_max_requests", "pool_max_requests", "measured_max_held") if c in df]
    if not cols:
        return
    ax = df.set_index("plan")[cols].astype(float).plot.bar(figsize=(9, 4), rot=30)
    ax.set_ylabel("concurrent requests held")
    ax.set_title("KV capacity per variant: formula, allocated pool, measured")
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)
