"""``make bench`` / ``make capacity``: every variant served, measured, compared.

For each plan: start our server (own process group, log in the variant's folder), wait
until healthy, save ``/server_info``, then either run the harness sweep
(``python -m harness run``) or probe how many long requests it holds at once
(:mod:`sglang_mixkv.probe`), and stop the server. The run folder keeps each variant's
results as soon as they exist, so a stopped bench leaves the finished variants usable;
the report is rebuilt from whatever is there (``--report-only RUN``).

    results/<run>/
      meta.json            command, commit, versions, hardware, settings
      roofline.json        the roofline's hardware (measured or data sheet) and predicted duration
      <plan>/server.log, server_info.json, harness/ (requests.jsonl, summary...), probe.json
      report.md            throughput / latency per variant and level (median of the runs, spread),
                           speed-up and its significance, roofline bound and measured fraction,
                           what bounded each level (server timeline), capacity
      summary.csv capacity.csv throughput.png latency.png timeline.png capacity.png
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import requests

from harness.client import API_KEY_ENV, auth_headers, redact_argv, redact_server_info, redact_text
from harness.server import launched, launched_on_free_port
from sglang_mixkv import capacity as cap
from sglang_mixkv import plan as plans
from sglang_mixkv.serve import REPO, flag_given, flag_value, has_gpu
from sglang_mixkv.sizes import ModelSize, get_size, with_kv_heads

GPU_PLANS = ["standard", "swa", "ma", "ma-offset", "ma-endslide", "ma-pairs"]
DECODE_LOG_INTERVAL = 8  # decode steps between SGLang's /metrics gauge updates
SERVER_START_S = 1800  # paper size on a GPU: model folder, dummy weights, CUDA graphs


@dataclass
class Settings:
    plans: list[str]
    size: str
    num_prompts: int
    input_len: int
    output_len: int
    concurrency: list[int]
    warmup: int
    kv_budget: str | None  # None: SGLang profiles the GPU (--mem-fraction-static)
    mem_fraction: float | None
    max_running: int | None
    server_args: list[str] = field(default_factory=list)
    timeout: float = 7200.0
    port: int = 0  # 0: a free port for every server (started again on another if taken)
    repeats: int = 1  # runs of every level (the report shows their spread)
    kv_heads: int | None = None  # --kv-heads of every server (None: the size's)


def defaults(gpu: bool, capacity_only: bool = False) -> Settings:
    if gpu:
        if capacity_only:  # probe requests (see run_probe) of 2 windows of prompt, so each
            # request's cached prompt tail is a whole window, and 6K output tokens (T = 8K:
            # a probe decodes 6K steps; the search takes ~12 per variant). The budget must
            # be known to the formula: 60 GiB fits an 80 GB H100. The local pools are
            # sized for the formula's request count (max_running None).
            return Settings(GPU_PLANS, "paper", 1, 2_048, 6_144, [1], 0, "60GiB", None, None)
        # The paper's test: 300 prompts, 31K in, 1K out, one H100.
        # Levels 8, 64 and 300, two runs each, so that the roofline's prediction on an H100
        # at 60% of peak FLOP/s and 90% of its bandwidth stays under two hours of serving
        # (predict(); tests/test_bench_report.py checks it; all six levels twice would
        # not). Dropped: c=1 (the longest level by far, every variant bound by
        # reading the weights once per token), 32 and 128 (between their neighbours).
        # Kept: 8 (the decode-bandwidth regime), 64 (standard's pools hold fewer requests
        # of 32K than that: it queues) and 300 (the paper's all at once).
        return Settings(GPU_PLANS, "paper", 300, 31_000, 1_000, [8, 64, 300], 2,
                        None, None, 300, repeats=2)
    # CPU: the same code path, scaled to a few minutes on two cores. At 64 MiB of KV the
    # tiny `standard` holds ~18 requests of 576 tokens, the MixAttention variants all 32.
    if capacity_only:  # the probe's requests: 40 prompt tokens (> the 32-token window, so
        # each request's cached prompt tail is a whole window: what our radix cache releases)
        # + 536 output tokens (T = 576 = 18 windows). 64-token chunks keep the chunks in
        # flight (2 x 64 slots) small beside one window + interval + 2 pages (36 slots) per
        # request: the window dominates the local pool. 12 MiB keeps a probe under a minute.
        return Settings(GPU_PLANS, "tiny", 1, 40, 536, [1], 0, "12MiB", None, None,
                        server_args=["--chunked-prefill-size", "64"], timeout=1200.0)
    return Settings(GPU_PLANS, "tiny", 32, 512, 64, [1, 8, 32], 2, "64MiB", None, 32,
                    timeout=600.0, repeats=3)


# ---- one server at a time ------------------------------------------------------------
def server_command(plan: str, st: Settings, extra: list[str] = ()) -> tuple[list[str], str]:  # type: ignore[assignment]
    """Our serve command for ``plan`` and the URL it will answer on."""
    args = ["--plan", plan, "--size", st.size, "--port", str(st.port), "--enable-metrics"]
    if st.kv_budget:
        args += ["--kv-budget", st.kv_budget]
    if st.mem_fraction:
        args += ["--mem-fraction-static", str(st.mem_fraction)]
    if st.max_running:
        args += ["--max-running-requests", str(st.max_running)]
    if st.kv_heads:
        args += ["--kv-heads", str(st.kv_heads)]
    if not flag_given([*st.server_args, *extra], "--decode-log-interval"):
        # SGLang publishes its /metrics gauges (running, queued, pool usage) after each
        # prefill batch and every this many decode steps (default 40: less than once per
        # request of the CPU bench's 64 tokens); the timeline samples them.
        args += ["--decode-log-interval", str(DECODE_LOG_INTERVAL)]
    cmd = [sys.executable, "-m", "sglang_mixkv.serve", *args, *st.server_args, *extra]
    return cmd, f"http://127.0.0.1:{st.port}"


def save_server_info(url: str, out: Path) -> dict:
    info = requests.get(url + "/server_info", headers=auth_headers(os.environ.get(API_KEY_ENV)),
                        timeout=30).json()
    out.write_text(json.dumps(redact_server_info(info), indent=1, default=str) + "\n")
    return info


@contextlib.contextmanager
def served(plan: str, st: Settings, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Our server for ``plan`` (``env`` over ours) while the block runs; yields its URL.
    ``st.port`` 0: a free port, and a new one (and a new start) if another process takes
    it before the server binds it (SGLang would hang until the health timeout)."""
    try:
        if st.port:
            cmd, url = server_command(plan, st)
            with launched(cmd, url, log, timeout=SERVER_START_S, env=env):
                yield url
            return
        with launched_on_free_port(lambda port: server_command(plan, replace(st, port=port))[0],
                                   log, timeout=SERVER_START_S, env=env) as url:
            yield url
    finally:  # SGLang logs its arguments, an API key among them: keep it out of results
        key = os.environ.get(API_KEY_ENV)
        if key and log.exists():
            log.write_text(redact_text(log.read_text(errors="replace"), key))


# ---- per variant ---------------------------------------------------------------------
def run_sweep(plan: str, st: Settings, vdir: Path) -> None:
    with served(plan, st, vdir / "server.log") as url:
        save_server_info(url, vdir / "server_info.json")
        cmd = [sys.executable, "-m", "harness", "run", "--url", url, "--label", plan,
               "--out", str(vdir / "harness"), "--num-prompts", str(st.num_prompts),
               "--input-len", str(st.input_len), "--output-len", str(st.output_len),
               "--concurrency", ",".join(map(str, st.concurrency)), "--warmup", str(st.warmup),
               "--timeout", str(st.timeout), "--no-progress", "--repeats", str(st.repeats)]
        print("  " + shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)


def bench_size(st: Settings) -> ModelSize:
    """The model size every server of the run serves (``--kv-heads`` applied)."""
    return with_kv_heads(get_size(st.size), st.kv_heads)


def run_probe(plan: str, st: Settings, vdir: Path) -> None:
    """Measure how many requests of T = input_len + output_len tokens the server holds at
    once without retracting (:func:`sglang_mixkv.probe.max_held`).

    The local pool is sized for ``pool_requests`` running requests (``--max-running``,
    default: the formula's request count at the KV budget, as ``python -m
    sglang_mixkv.capacity`` sizes it), passed to the server's pool configurator
    (``MIXKV_POOL_MAX_RUNNING``); SGLang's own running-request cap is set well above
    what the pools can hold, so only the pools end the search. The search starts at one
    request, never at an estimate. Use decode-heavy requests (a short prompt, a long
    output) so that one prefill chunk admits several and they decode nearly in lockstep."""
    from sglang_mixkv.probe import max_held
    from sglang_mixkv.sglang_seams.pools import POOL_REQUESTS_ENV

    size = bench_size(st)
    p = plans.resolve(plan, size.num_layers)
    tokens = st.input_len + st.output_len
    if not st.kv_budget:
        raise ValueError("the capacity probe needs --kv-budget (the formula needs the budget)")
    budget = cap.parse_bytes(st.kv_budget)
    n_formula = cap.max_concurrent(budget, p, cap.KVDims.of(size), size.window, tokens)
    pool_requests = st.max_running or max(1, n_formula)
    n_cap = 2 * max(pool_requests, n_formula) + 8  # above what the pools can hold
    with served(plan, replace(st, max_running=n_cap), vdir / "probe-server.log",
                env={POOL_REQUESTS_ENV: str(pool_requests)}) as url:
        save_server_info(url, vdir / "probe_server_info.json")
        result = asyncio.run(max_held(
            url, n_cap, st.input_len, st.output_len, vocab=size.vocab,
            on_probe=lambda r: print(f"  {plan}: {r}", flush=True)))
    result.update(n_formula=n_formula, pool_requests=pool_requests, max_running=n_cap,
                  tokens=tokens, input_len=st.input_len, output_len=st.output_len)
    (vdir / "probe.json").write_text(json.dumps(result, indent=1) + "\n")


# ---- report ----------------------------------------------------------------------------
def capacity_table(run: Path, st: Settings):
    """Per plan: the formula at the run's KV budget, the pools the server allocated
    (``/server_info``) and the requests of T tokens those pools hold
    (:func:`capacity.pool_max_requests`), and, after ``make capacity``, the measured count
    (``probe.json``)."""
    import pandas as pd

    from sglang_mixkv.serve import eviction_interval

    size = bench_size(st)
    dims = cap.KVDims.of(size)
    tokens = st.input_len + st.output_len
    rows = []
    for plan in st.plans:
        vdir = run / plan
        p = plans.resolve(plan, size.num_layers)
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
            budget = cap.parse_bytes(st.kv_budget) if st.kv_budget else int(mem["kvcache"] * 2**30)
            g, s, running = mem.get("token_capacity"), mem.get("token_capacity_swa"), info["max_running_requests"]
            chunk = info.get("chunked_prefill_size") or 0
            page = info.get("page_size") or 1
            split = cap.PoolSplit(g if p.global_producers else 0, s if p.local_producers else 0, 0, 0)
            held = cap.pool_max_requests(
                split, p, tokens, window=size.window, chunk=max(chunk, 0), page=page,
                eviction_interval=eviction_interval(size.window),
                chunks_in_flight=1 if info.get("disable_overlap_schedule") else 2)
            n = cap.max_concurrent(budget, p, dims, size.window, tokens)
            row.update(
                kv_budget_gib=round(budget / 2**30, 4),
                formula_max_tokens=cap.max_tokens(budget, p, dims, size.window, tokens),
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


# ---- roofline --------------------------------------------------------------------------
ROOFLINE = "roofline.json"


def write_roofline(run: Path, st: Settings, choice: str) -> None:
    """Measure or look up the hardware (before any server starts: a quiet machine), save
    it with the predicted duration in ``roofline.json``, and print the prediction."""
    from sglang_mixkv import roofline as rl

    hw = bench_hardware(choice, st)
    pred = predict(st, hw)
    (run / ROOFLINE).write_text(json.dumps({
        "hardware": asdict(hw), "predicted": pred,
        "assumptions": rl.assumptions(hw, roofline_options(st))}, indent=1) + "\n")
    runs = f"{len(st.plans)} variants x levels {st.concurrency} x {st.repeats} run(s) + warm-up"
    line = f"[bench] roofline on {hw.describe()}: {runs} cannot take less than {_span(pred['bound_s'])}"
    if "expected_s" in pred:
        line += (f"; at {rl.ACHIEVABLE[0]:.0%} of its FLOP/s and {rl.ACHIEVABLE[1]:.0%} of its "
                 f"bandwidth about {_span(pred['expected_s'])}")
    print(line + " of serving, plus server start-ups", flush=True)


def _span(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def bench_hardware(choice: str, st: Settings):
    """The hardware the roofline bound is computed for. ``choice``: a built-in GPU name,
    ``this`` (a micro-benchmark of this machine, with the model's dtype, a copy the size
    of the largest plan's weights and the server's torch threads) or ``auto``: the
    built-in data sheet of the SXM GPU nvidia-smi names, else ``this``."""
    from harness.sysinfo import hardware
    from sglang_mixkv import roofline as rl

    if choice == "auto":
        choice = "this"
        gpus = hardware()["gpus"]
        name = gpus[0].split(",")[0].replace("NVIDIA", "").strip() if gpus else ""
        if name and not any(x in name.upper() for x in ("PCIE", "NVL")):
            with contextlib.suppress(ValueError):
                rl.gpu(name)
                choice = name
    return rl.hardware_from_args(choice, bench_size(st), st.plans, 1.0, 1.0)


def roofline_serving(spec: str, st: Settings, hw, vdir: Path | None = None):
    """The pool settings of ``spec``'s server: the bench's --kv-budget, else the budget
    SGLang reported (``server_info.json``), else memory x (--mem-fraction or 0.85) minus
    the weights; --max-running and the chunk size as the server got them."""
    from sglang_mixkv import roofline as rl

    size = bench_size(st)
    budget = cap.parse_bytes(st.kv_budget) if st.kv_budget else None
    info = vdir / "server_info.json" if vdir else None
    if budget is None and info and info.exists():
        budget = int(json.loads(info.read_text())["internal_states"][0]["memory_usage"]["kvcache"] * 2**30)
    chunk = flag_value(st.server_args, "--chunked-prefill-size")
    return rl.serving_for(size, plans.resolve(spec, size.num_layers), hw,
                          mem_fraction=st.mem_fraction or 0.85, kv_budget=budget,
                          max_running=st.max_running, chunk=chunk and int(chunk))


def roofline_levels(st: Settings, hw, run: Path | None = None, levels: list[int] | None = None,
                    num_prompts: int | None = None):
    """:func:`sglang_mixkv.roofline.sweep` for the bench's plans and workload (``standard``
    always as the speed-up's reference), each plan with its server's pool settings."""
    from sglang_mixkv import roofline as rl

    wl = rl.Workload(num_prompts or st.num_prompts, st.input_len, st.output_len,
                     tuple(levels or st.concurrency))
    specs = list(dict.fromkeys([*st.plans, "standard"]))
    servings = {p: roofline_serving(p, st, hw, run / p if run else None) for p in specs}
    return rl.sweep(bench_size(st), st.plans, hw, wl, servings, roofline_options(st))


def roofline_options(st: Settings):
    """The roofline's switches as the bench's servers run: fast prefill unless the
    server arguments turn it off."""
    from sglang_mixkv import roofline as rl

    return rl.Options(fast_prefill="--no-fast-prefill" not in st.server_args)


def predict(st: Settings, hw) -> dict:
    """Seconds of serving the bench cannot beat on ``hw`` (every plan: warm-up, then each
    level ``repeats`` times; server start-ups not counted), and on a built-in GPU the
    same at the fractions of peak DESIGN.md takes as achievable."""
    from sglang_mixkv import roofline as rl

    def total(h) -> float:
        t = st.repeats * roofline_levels(st, h)["duration_s"].sum()
        if st.warmup:
            t += roofline_levels(st, h, levels=[st.warmup], num_prompts=st.warmup)["duration_s"].sum()
        return float(t)

    out = {"bound_s": total(hw)}
    if any(hw.name == g.name for g in rl.GPUS.values()):  # a built-in GPU, not measured
        out["expected_s"] = total(hw.achieving(*rl.ACHIEVABLE))
        out["expected_at"] = {"flops_fraction": rl.ACHIEVABLE[0], "bw_fraction": rl.ACHIEVABLE[1]}
    return out


def roofline_columns(summary, run: Path, st: Settings):
    """``summary`` with the roofline's bound beside each measured level: its output tok/s,
    TTFT and TPOT floors, batch and bounding resources, and the measured fraction of the
    bound (None when the run folder has no roofline.json)."""
    from sglang_mixkv import roofline as rl

    if not (run / ROOFLINE).exists():
        return summary, None
    doc = json.loads((run / ROOFLINE).read_text())
    hw = rl.Hardware(**doc["hardware"])
    bounds = roofline_levels(st, hw, run).rename(columns={
        "plan": "label", "output_tok_per_s": "roofline_out_tok_per_s", "ttft_ms": "roofline_ttft_ms",
        "tpot_ms": "roofline_tpot_ms", "running": "roofline_running",
        "limited_by": "roofline_batch_limit", "prefill_bound": "roofline_prefill",
        "decode_bound": "roofline_decode"})
    keep = ["label", "level", "roofline_out_tok_per_s", "roofline_ttft_ms", "roofline_tpot_ms",
            "roofline_running", "roofline_batch_limit", "roofline_prefill", "roofline_decode"]
    out = summary.merge(bounds[keep], on=["label", "level"], how="left")
    out["roofline_fraction"] = out["output_tok_per_s"] / out["roofline_out_tok_per_s"]
    return out, hw


def write_report(run: Path, st: Settings) -> Path:
    import pandas as pd

    from harness import metrics
    from harness import report as hreport

    done = [run / p / "harness" for p in st.plans if (run / p / "harness" / "requests.jsonl").exists()]
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
        summary = pd.concat([metrics.summarize(metrics.load_run(d)) for d in done], ignore_index=True)
        hreport.plot(summary, run)  # throughput.png, latency.png
        summary = metrics.speedup(summary, "standard")
        summary, hw = roofline_columns(summary, run, st)
        summary.to_csv(run / "summary.csv", index=False)
        parts += throughput_section(summary, hw)
        parts += bounds_section(summary, done, run, hw)
    missing = [p for p in st.plans if not (run / p / "harness" / "requests.jsonl").exists()
               and not (run / p / "probe.json").exists()]
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


def throughput_section(summary, hw) -> list[str]:
    """The throughput and latency table: medians of the runs, the output tok/s range and
    spread, the speed-up over standard with its range and significance, and the roofline
    bound with the measured fraction of it."""
    import pandas as pd

    t = summary.copy()
    t["out_tok_per_s_range"] = [f"{a:.4g}-{b:.4g}" for a, b in zip(t["output_tok_per_s_min"],
                                                                   t["output_tok_per_s_max"])]
    t["speedup_range"] = [f"{a:.2f}-{b:.2f}" if pd.notna(a) and label != "standard" else "-"
                          for a, b, label in zip(t["speedup_low"], t["speedup_high"], t["label"])]
    cols = ["label", "level", "runs", "ok", "failed", "output_tok_per_s", "out_tok_per_s_range",
            "output_tok_per_s_spread", "speedup_vs_standard", "speedup_range", "significant",
            "roofline_out_tok_per_s", "roofline_fraction", "ttft_p50_ms", "tpot_p50_ms",
            "itl_p99_ms", "e2e_p50_ms"]
    bound = ("" if hw is None else
             f" `roofline_*`: the lower bound of `sglang_mixkv.roofline` for the same plan, "
             f"workload, level and pools on {hw.describe()}; `roofline_fraction` = measured / "
             "bound output tok/s.")
    return ["## Throughput and latency", "",
            f"Each level ran {int(t['runs'].max())} time(s); counts are summed over the runs, every "
            "other number is the median of the runs; `out_tok_per_s_range` and "
            "`output_tok_per_s_spread` ((max - min) / median) show the run-to-run spread. "
            "`speedup_range`: worst run over standard's best to best over its worst; "
            "`significant`: `yes` only when every run of the variant beats (or loses to) every "
            "run of standard, `no` when the ranges overlap (inside the run-to-run spread)." + bound,
            "", t[[c for c in cols if c in t]].to_markdown(index=False, floatfmt=".3g"), "",
            "![throughput](throughput.png)", "", "![latency](latency.png)", ""]


def bounds_section(summary, done: list[Path], run: Path, hw) -> list[str]:
    """What bounded each level: the roofline's batch limit and bounding resources beside
    the server's timeline (peak running and queued requests, pool usage, retractions)."""
    from harness import report as hreport

    bounds, notes = hreport.timeline_bounds(done)
    tl_png = hreport.plot_timeline(done, run / "timeline.png")
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
    return (f"- workload: {st.num_prompts} prompts x {st.input_len} in / {st.output_len} out, "
            f"concurrency {st.concurrency}, {size}")


def capacity_text(st: Settings) -> str:
    """What the capacity table's columns mean and where formula and pools differ."""
    return (f"Requests of T = {st.input_len + st.output_len} tokens. `formula_*`: "
            "`sglang_mixkv.capacity` at the server's KV budget, one window of local KV per "
            "request (`formula_local_tokens`); `pool_requests`: the running requests the "
            "local pool was sized for (the formula's count for `make capacity`); `server_*`: "
            "the pools SGLang allocated (`/server_info`), `server_max_running` its running-"
            "request cap (for `make capacity` set well above what the pools hold, so the "
            "pools end the search); `pool_max_requests`: requests of T tokens those pools "
            "hold (`capacity.pool_max_requests`: the global pool T slots each; the local "
            "pool, after two prefill chunks, one window + the eviction interval + 2 pages "
            "each - our radix cache releases a request's cached prompt as it leaves the "
            "window); `measured_max_held`: the most requests the server ran at the same time "
            "without a retraction (`make capacity`), `measured_first_failed` the smallest "
            "count that failed, `measured_min_tokens` the shortest of the held requests when "
            "the first one completed (they were all at least that long at once; the prefill "
            "stagger is the rest of T), `probes` how many probes the search took. The eviction "
            "interval, pages and chunks are the slack between formula and pools: a few "
            "percent at a few MiB of KV, less at GPU scale.")


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


# ---- CLI -------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    gpu = has_gpu()
    d = defaults(gpu, capacity_only="--capacity-only" in (sys.argv[1:] if argv is None else argv))
    ap = argparse.ArgumentParser(prog="python -m sglang_mixkv.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plans", default=",".join(d.plans), help="comma-separated presets / plan strings")
    ap.add_argument("--size", default=d.size)
    ap.add_argument("--num-prompts", type=int, default=d.num_prompts)
    ap.add_argument("--input-len", type=int, default=d.input_len)
    ap.add_argument("--output-len", type=int, default=d.output_len)
    ap.add_argument("--concurrency", default=",".join(map(str, d.concurrency)))
    ap.add_argument("--warmup", type=int, default=d.warmup)
    ap.add_argument("--kv-budget", default=d.kv_budget, help="cap the KV cache (e.g. 64MiB)")
    ap.add_argument("--mem-fraction", type=float, default=d.mem_fraction,
                    help="SGLang --mem-fraction-static")
    ap.add_argument("--max-running", type=int, default=d.max_running,
                    help="--max-running-requests of the servers; make capacity: the running "
                    "requests the local pool is sized for (default: the formula's count)")
    ap.add_argument("--kv-heads", type=int, default=d.kv_heads,
                    help="KV heads per layer of every server (1 = MQA; default: the size's)")
    ap.add_argument("--port", type=int, default=d.port,
                    help="server port (default 0: a free one per server, another if it is taken)")
    ap.add_argument("--repeats", type=int, default=d.repeats,
                    help="runs of every level; the report shows their spread")
    ap.add_argument("--gpu", default="auto",
                    help="hardware of the roofline bound: H100, H200, A100, 'this' (a micro-"
                    "benchmark) or auto (this GPU's data sheet if built in, else 'this')")
    ap.add_argument("--server-args", default=shlex.join(d.server_args),
                    help="extra sglang flags, one string")
    ap.add_argument("--api-key", default=None,
                    help=f"serve with this API key (default: ${API_KEY_ENV}); it reaches the "
                    f"servers and the harness as ${API_KEY_ENV}, never in a command line or a "
                    "results file")
    ap.add_argument("--config", type=Path, help="JSON file of the settings above (flags win)")
    ap.add_argument("--out", type=Path, help="run folder (default results/bench-<time>)")
    ap.add_argument("--capacity-only", action="store_true",
                    help="make capacity: probe max concurrent requests instead of the sweep")
    ap.add_argument("--report-only", type=Path, metavar="RUN", help="rebuild RUN's report")
    a = ap.parse_args(argv)
    if a.config:  # the file's values become the defaults; flags still win
        ap.set_defaults(**{k.replace("-", "_"): ",".join(map(str, v)) if isinstance(v, list) else v
                           for k, v in json.loads(a.config.read_text()).items()})
        a = ap.parse_args(argv)
    st = Settings(
        plans=[s.strip() for s in a.plans.split(",") if s.strip()], size=a.size,
        num_prompts=a.num_prompts, input_len=a.input_len, output_len=a.output_len,
        concurrency=[int(x) for x in str(a.concurrency).split(",")], warmup=a.warmup,
        kv_budget=a.kv_budget or None, mem_fraction=a.mem_fraction, max_running=a.max_running,
        server_args=shlex.split(a.server_args), port=a.port, timeout=d.timeout,
        repeats=a.repeats, kv_heads=a.kv_heads,
    )
    size = bench_size(st)
    for spec in st.plans:
        plans.resolve(spec, size.num_layers)  # fail before starting anything
    return a, st


def main(argv: list[str] | None = None) -> int:
    try:
        a, st = parse(argv)
    except plans.PlanError as e:
        print(f"error: invalid plan: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # e.g. --kv-heads that does not divide the query heads
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.report_only:
        st = Settings(**json.loads((a.report_only / "meta.json").read_text())["settings"])
        print(write_report(a.report_only, st))
        return 0
    kind = "capacity" if a.capacity_only else "bench"
    run = a.out or REPO / "results" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    run.mkdir(parents=True, exist_ok=True)
    from harness.sysinfo import collect

    if a.api_key:  # the servers (serve's --api-key default) and the harness read it
        os.environ[API_KEY_ENV] = a.api_key
    args = redact_argv(list(argv or sys.argv[1:]))
    meta = collect([sys.executable, "-m", "sglang_mixkv.bench", *args])
    meta["command"] = shlex.join(["python", "-m", "sglang_mixkv.bench", *args])
    meta["settings"] = asdict(st)
    (run / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    if not a.capacity_only:
        write_roofline(run, st, a.gpu)

    def stop(signum, _frame):  # SIGTERM -> KeyboardInterrupt: finally-blocks stop servers
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    code = 0
    try:
        for plan in st.plans:
            print(f"[{kind}] {plan}", flush=True)
            vdir = run / plan
            try:
                (run_probe if a.capacity_only else run_sweep)(plan, st, vdir)
            except Exception as e:  # noqa: BLE001 - any failure: keep the other variants
                print(f"[{kind}] {plan} failed: {type(e).__name__}: {e}", file=sys.stderr,
                      flush=True)
                code = 1
    except KeyboardInterrupt:
        print(f"[{kind}] interrupted; finished variants are kept in {run}", file=sys.stderr)
        code = 130
    print(write_report(run, st))
    return code


if __name__ == "__main__":
    sys.exit(main())
