"""``make bench`` / ``make capacity``: every variant served, measured, compared.

For each plan: start our server (own process group, log in the variant's folder), wait
until healthy, save ``/server_info``, then either run the harness sweep
(``python -m harness run``) or probe how many long requests it holds at once
(:mod:`sglang_mixkv.probe`), and stop the server. The run folder keeps each variant's
results as soon as they exist, so a stopped bench leaves the finished variants usable;
the report is rebuilt from whatever is there (``--report-only RUN``).

    results/<run>/
      meta.json            command, commit, versions, hardware, settings
      <plan>/server.log, server_info.json, harness/ (requests.jsonl, summary...), probe.json
      report.md            throughput / latency per variant and level, speed-up, capacity
      summary.csv capacity.csv throughput.png latency.png capacity.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from harness.server import launched
from sglang_mixkv import capacity as cap
from sglang_mixkv import plan as plans
from sglang_mixkv.serve import REPO, has_gpu
from sglang_mixkv.sizes import get_size

GPU_PLANS = ["standard", "swa", "ma", "ma-offset", "ma-endslide", "ma-pairs"]
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
    port: int = 30100


def defaults(gpu: bool, capacity_only: bool = False) -> Settings:
    if gpu:  # the paper's test: 300 prompts, 31K in, 1K out, one H100. For the capacity
        # probe the budget must be known to the formula: 60 GiB fits an 80 GB H100.
        return Settings(GPU_PLANS, "paper", 300, 31_000, 1_000, [1, 8, 32, 64, 128, 300], 2,
                        "60GiB" if capacity_only else None, None, 300)
    # CPU: the same code path, scaled to a few minutes on two cores. At 64 MiB of KV the
    # tiny `standard` holds ~18 requests of 576 tokens, the MixAttention variants all 32.
    if capacity_only:  # T = 288 tokens per request keeps the probes short
        return Settings(GPU_PLANS, "tiny", 16, 256, 32, [1], 1, "16MiB", None, 16, timeout=600.0)
    return Settings(GPU_PLANS, "tiny", 32, 512, 64, [1, 8, 32], 2, "64MiB", None, 32,
                    timeout=600.0)


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
    cmd = [sys.executable, "-m", "sglang_mixkv.serve", *args, *st.server_args, *extra]
    return cmd, f"http://127.0.0.1:{st.port}"


def save_server_info(url: str, out: Path) -> dict:
    info = requests.get(url + "/server_info", timeout=30).json()
    out.write_text(json.dumps(info, indent=1, default=str) + "\n")
    return info


# ---- per variant ---------------------------------------------------------------------
def run_sweep(plan: str, st: Settings, vdir: Path) -> None:
    cmd, url = server_command(plan, st)
    with launched(cmd, url, vdir / "server.log", timeout=SERVER_START_S):
        save_server_info(url, vdir / "server_info.json")
        cmd = [sys.executable, "-m", "harness", "run", "--url", url, "--label", plan,
               "--out", str(vdir / "harness"), "--num-prompts", str(st.num_prompts),
               "--input-len", str(st.input_len), "--output-len", str(st.output_len),
               "--concurrency", ",".join(map(str, st.concurrency)), "--warmup", str(st.warmup),
               "--timeout", str(st.timeout), "--no-progress"]
        print("  " + shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)


def best_max_running(plan: plans.Plan, st: Settings, budget: int, tokens: int) -> int:
    """The --max-running-requests under which the server holds the most requests of
    ``tokens`` tokens at once: for windowed plans a larger cap grows the local pool and
    shrinks the global one, so hold(n) = min(global_tokens(n) // tokens, n) peaks."""
    from sglang_mixkv.serve import DEFAULTS, eviction_interval

    size = get_size(st.size)
    dims = cap.KVDims.of(size)
    n_formula = cap.max_concurrent(budget, plan, dims, size.window, tokens)
    if not (plan.local_producers and plan.global_producers):
        return max(2, int(n_formula * 1.25) + 1)  # the pool decides, not the cap

    def hold(n: int) -> int:
        try:
            split = cap.pool_split(budget, plan, dims, window=size.window, max_running=n,
                                   chunk=int(DEFAULTS[size.name]["--chunked-prefill-size"]),
                                   eviction_interval=eviction_interval(size.window))
        except ValueError:  # the local pool alone overflows the budget
            return 0
        return min(split.global_tokens // tokens, n)

    return max(range(1, n_formula + 2), key=hold)


def run_probe(plan: str, st: Settings, vdir: Path) -> None:
    """Serve with the --max-running-requests that lets the allocated pools hold the most
    requests (:func:`best_max_running`), then search for the most requests the server
    actually holds at once (:mod:`sglang_mixkv.probe`), up to that cap.

    Requests hold T = input_len + output_len tokens at the end, as in the sweep, but are
    decode-heavy (T/32 prompt tokens) so that one prefill chunk admits many of them and
    they decode nearly in lockstep (a bigger chunk would cost local-pool slots)."""
    from sglang_mixkv.probe import max_held

    size = get_size(st.size)
    p = plans.resolve(plan, size.num_layers)
    tokens = st.input_len + st.output_len
    prompt_len = max(4, tokens // 32)
    if not st.kv_budget:
        raise ValueError("the capacity probe needs --kv-budget (the formula needs the budget)")
    budget = cap.parse_bytes(st.kv_budget)
    n_formula = cap.max_concurrent(budget, p, cap.KVDims.of(size), size.window, tokens)
    n_cap = best_max_running(p, st, budget, tokens)
    cmd, url = server_command(plan, Settings(**{**asdict(st), "max_running": n_cap}))
    with launched(cmd, url, vdir / "probe-server.log", timeout=SERVER_START_S):
        save_server_info(url, vdir / "probe_server_info.json")
        result = asyncio.run(max_held(url, min(n_formula, n_cap), n_cap, prompt_len,
                                      tokens - prompt_len, vocab=size.vocab))
    result.update(n_formula=n_formula, max_running=n_cap, tokens=tokens, prompt_len=prompt_len)
    (vdir / "probe.json").write_text(json.dumps(result, indent=1) + "\n")


# ---- report ----------------------------------------------------------------------------
def capacity_table(run: Path, st: Settings):
    import pandas as pd

    size = get_size(st.size)
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
        if probe.exists():
            pr = json.loads(probe.read_text())
            row.update(measured_max_held=pr["max_held"], measured_capped=pr["capped"],
                       probes=len(pr["probes"]))
        if info_file.exists():
            info = json.loads(info_file.read_text())
            mem = info["internal_states"][0]["memory_usage"]
            budget = cap.parse_bytes(st.kv_budget) if st.kv_budget else int(mem["kvcache"] * 2**30)
            g, s, running = mem.get("token_capacity"), mem.get("token_capacity_swa"), info["max_running_requests"]
            # Requests of T tokens the allocated pools hold: the global pool's share, and
            # for windowed plans at most the running requests the local pool was sized for.
            held = g // tokens if p.global_producers else running
            if p.local_producers and p.global_producers:
                held = min(held, running)
            n = cap.max_concurrent(budget, p, dims, size.window, tokens)
            row.update(
                kv_budget_gib=round(budget / 2**30, 4),
                formula_max_tokens=cap.max_tokens(budget, p, dims, size.window, tokens),
                formula_max_requests=n,
                formula_local_tokens=n * min(tokens, size.window) if p.local_producers else None,
                server_global_tokens=g, server_local_tokens=s, server_kvcache_gib=mem.get("kvcache"),
                server_max_running=running, server_max_requests=held,
            )
        rows.append(row)
    df = pd.DataFrame(rows)
    first = ["plan", "global_producers", "local_producers", "kv_bytes_per_token", "kv_budget_gib",
             "formula_max_tokens", "formula_max_requests", "formula_local_tokens", "server_global_tokens",
             "server_local_tokens", "server_kvcache_gib", "server_max_running",
             "server_max_requests", "measured_max_held"]
    return df[[c for c in first if c in df] + [c for c in df if c not in first]]


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
                  f"- workload: {st.num_prompts} prompts x {st.input_len} in / {st.output_len} out, "
                  f"concurrency {st.concurrency}, model size `{st.size}`", ""]
    if done:
        summary = pd.concat([metrics.summarize(metrics.load_run(d)) for d in done], ignore_index=True)
        hreport.plot(summary, run)  # throughput.png, latency.png
        base = summary[summary["label"] == "standard"].set_index("level")["output_tok_per_s"]
        summary["speedup_vs_standard"] = summary.apply(
            lambda r: r["output_tok_per_s"] / base[r["level"]] if r["level"] in base.index else None,
            axis=1)
        cols = ["label", "level", "ok", "failed", "req_per_s", "output_tok_per_s", "total_tok_per_s",
                "speedup_vs_standard", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "itl_p99_ms",
                "e2e_p50_ms"]
        summary.to_csv(run / "summary.csv", index=False)
        parts += ["## Throughput and latency", "",
                  summary[cols].to_markdown(index=False, floatfmt=".2f"), "",
                  "![throughput](throughput.png)", "", "![latency](latency.png)", ""]
    missing = [p for p in st.plans if not (run / p / "harness" / "requests.jsonl").exists()
               and not (run / p / "probe.json").exists()]
    if missing:
        parts += [f"Not measured (bench stopped or failed): {', '.join(missing)}", ""]
    captab = capacity_table(run, st)
    if len(captab):
        captab.to_csv(run / "capacity.csv", index=False)
        plot_capacity(captab, run / "capacity.png")
        parts += ["## KV capacity", "",
                  f"Requests of T = {st.input_len + st.output_len} tokens. `formula_*`: "
                  "`sglang_mixkv.capacity` at the server's KV budget; `server_*`: the pools "
                  "SGLang allocated (`/server_info`); `measured_max_held`: most requests the "
                  "server ran at once without retracting (`make capacity`, with "
                  "`--max-running-requests` = `server_max_running`, the cap under which the "
                  "allocated pools hold the most such requests). The formula charges each request "
                  "one window of local KV (`formula_local_tokens`); the server's local pool "
                  "reserves per running-request slot two windows (the request's own and its "
                  "cached prefix's, locked in SGLang's radix tree), the tokens decoded between two "
                  "evictions and 2 pages, plus two prefill chunks (`server_local_tokens`). That "
                  "reservation is the slack between the formula and the pool: large at a few MiB "
                  "of KV, small at GPU scale.", "",
                  captab.to_markdown(index=False), "", "![capacity](capacity.png)", ""]
    (run / "report.md").write_text("\n".join(parts))
    return run / "report.md"


def plot_capacity(df, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in ("formula_max_requests", "server_max_requests", "measured_max_held") if c in df]
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
    ap.add_argument("--max-running", type=int, default=d.max_running)
    ap.add_argument("--port", type=int, default=d.port)
    ap.add_argument("--server-args", default="", help="extra sglang flags, one string")
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
    )
    size = get_size(st.size)
    for spec in st.plans:
        plans.resolve(spec, size.num_layers)  # fail before starting anything
    return a, st


def main(argv: list[str] | None = None) -> int:
    try:
        a, st = parse(argv)
    except plans.PlanError as e:
        print(f"error: invalid plan: {e}", file=sys.stderr)
        return 2
    if a.report_only:
        st = Settings(**json.loads((a.report_only / "meta.json").read_text())["settings"])
        print(write_report(a.report_only, st))
        return 0
    kind = "capacity" if a.capacity_only else "bench"
    run = a.out or REPO / "results" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    run.mkdir(parents=True, exist_ok=True)
    from harness.sysinfo import collect

    meta = collect([sys.executable, "-m", "sglang_mixkv.bench", *(argv or sys.argv[1:])])
    meta["command"] = shlex.join(["python", "-m", "sglang_mixkv.bench", *(argv or sys.argv[1:])])
    meta["settings"] = asdict(st)
    (run / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")

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
            except (RuntimeError, TimeoutError, ValueError, subprocess.CalledProcessError) as e:
                print(f"[{kind}] {plan} failed: {e}", file=sys.stderr, flush=True)
                code = 1
    except KeyboardInterrupt:
        print(f"[{kind}] interrupted; finished variants are kept in {run}", file=sys.stderr)
        code = 130
    print(write_report(run, st))
    return code


if __name__ == "__main__":
    sys.exit(main())
