"""``make bench`` / ``make capacity``: every variant served, measured, compared.

For each plan: start our server (own process group, log in the variant's folder; with
``--dp N``, N servers behind SGLang's router), wait until healthy, save ``/server_info``,
then either run the harness sweep (``python -m harness run``) or probe how many long
requests it holds at once (:mod:`mixkv_bench.probe`), and stop the server. With
``--repeats K`` > 1 the sweep runs in K rounds: each round starts every variant afresh
and sweeps it once, variants in turn, so a slow drift of a shared machine reaches every
variant instead of one. The run folder keeps each variant's results as soon as they
exist, so a stopped bench leaves the finished variants usable; the report is rebuilt
from whatever is there (``--report-only RUN``).

    results/<run>/
      meta.json            command, commit, versions, hardware, settings
      roofline.json        the roofline's hardware (measured or data sheet) and predicted duration
      <plan>/server*.log, server_info.json, probe.json,
             harness/ (requests.jsonl, ...) or harness/round-K/ (one per round)
      report.md            throughput / latency per variant and level (median of the runs, spread),
                           speed-up with its 95% t interval, roofline bound and measured
                           fraction, what bounded each level (server timeline), capacity
      summary.csv runs.csv capacity.csv throughput.png latency.png timeline.png capacity.png

Modules: :mod:`.settings` (what a run is), :mod:`.servers` (one server per variant),
:mod:`.bench_roofline` (the bound beside each level), :mod:`.bench_report` (the report).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from pydantic import ValidationError

from harness.errors import flag_message
from mixkv_bench import REPO, variants
from mixkv_bench.bench_report import harness_dir, write_report
from mixkv_bench.bench_roofline import write_roofline
from mixkv_bench.servers import deployed, save_server_info, served
from mixkv_bench.settings import Settings, bench_size, defaults
from sglang_mixkv import device
from sglang_mixkv import kv_math as cap
from sglang_mixkv import plan as plans
from sglang_mixkv.defaults import (ADMIN_API_KEY_ENV, API_KEY_ENV, POOL_REQUESTS_ENV, parse_bytes,
                                   redact_argv)

def run_sweep(plan: str, st: Settings, vdir: Path, round_no: int | None = None) -> None:
    """One harness sweep of ``plan`` on freshly started servers: every level once
    (``round_no`` of ``st.repeats``, into ``harness/round-K/``), or, with one repeat, into
    ``harness/``. With ``st.dp`` > 1 the harness goes through the router and flushes
    each server directly."""
    tag = "" if round_no is None else f"-round-{round_no + 1}"
    out = harness_dir(vdir, round_no)
    with deployed(plan, st, vdir, tag) as dep:
        if not (vdir / "server_info.json").exists():
            save_server_info(dep.servers[0], vdir / "server_info.json")
        cmd = [sys.executable, "-m", "harness", "run", "--url", dep.url, "--label", plan,
               "--out", str(out), "--num-prompts", str(st.num_prompts),
               "--input-len", str(st.input_len), "--output-len", str(st.output_len),
               "--concurrency", ",".join(map(str, st.concurrency)), "--warmup", str(st.warmup),
               "--timeout", str(st.timeout), "--no-progress", "--repeats", "1"]
        if st.dp > 1:
            cmd += [x for u in dep.servers for x in ("--backend", u)]
        if st.slo:
            cmd += ["--slo", st.slo]
        if st.shared_prefix:
            cmd += ["--shared-prefix", st.shared_prefix]
        print("  " + shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)


def round_order(plans_: list[str], round_no: int) -> list[str]:
    """Round ``k`` starts at the ``k``-th variant (a rotation), so no variant always runs
    first on a fresh machine or last on a tired one."""
    k = round_no % len(plans_)
    return plans_[k:] + plans_[:k]

def run_probe(plan: str, st: Settings, vdir: Path) -> None:
    """Measure how many requests of T = input_len + output_len tokens the server holds at
    once without retracting (:func:`mixkv_bench.probe.max_held`).

    The local pool is sized for ``pool_requests`` running requests (``--max-running``,
    default: the formula's request count at the KV budget, as ``python -m
    sglang_mixkv.capacity`` sizes it), passed to the server's pool configurator
    (``MIXKV_POOL_MAX_RUNNING``); SGLang's own running-request cap is set well above
    what the pools can hold, so only the pools end the search. The search starts at one
    request, never at an estimate. Use decode-heavy requests (a short prompt, a long
    output) so that one prefill chunk admits several and they decode nearly in lockstep."""
    from mixkv_bench.probe import max_held

    size = bench_size(st)
    variant = variants.parse(plan)
    p = variant.resolve(size.num_layers)
    tokens = st.input_len + st.output_len
    if not st.kv_budget:
        raise ValueError("the capacity probe needs --kv-budget (the formula needs the budget)")
    budget = parse_bytes(st.kv_budget)
    n_formula = cap.max_concurrent(budget, p, cap.KVDims.of(size), size.window, tokens,
                                   variant.compression(st.input_len))
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

def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    gpu = device.resolve() == "gpu"
    d = defaults(gpu, capacity_only="--capacity-only" in (sys.argv[1:] if argv is None else argv))
    ap = argparse.ArgumentParser(prog="python -m sglang_mixkv.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plans", default=",".join(d.plans), help="comma-separated variants: presets or "
                    "plan strings, optionally @adakv=B (Ada-KV, budget B), e.g. standard,ma,ma@adakv=128")
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
    ap.add_argument("--slo", default=d.slo, help="latency objectives for goodput: any subset of "
                    "ttft_ms=...,tpot_ms=...,e2e_ms=... (harness/slo.py)")
    ap.add_argument("--dp", type=int, default=d.dp,
                    help="servers per variant behind SGLang's router (sglang-router; default 1: "
                    "one server, no router)")
    ap.add_argument("--shared-prefix", default=d.shared_prefix, metavar="GROUPS:TOKENS",
                    help="prompts in GROUPS groups, each sharing its first TOKENS tokens "
                    "(harness --shared-prefix)")
    ap.add_argument("--slo-target", type=float, default=d.slo_target,
                    help="attainment a level must reach to meet the SLO (default 0.9)")
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
        repeats=a.repeats, kv_heads=a.kv_heads, slo=a.slo, slo_target=a.slo_target,
        dp=a.dp, shared_prefix=a.shared_prefix,
    )
    if st.shared_prefix:
        from harness.workload import parse_shared_prefix

        groups, tokens = parse_shared_prefix(st.shared_prefix)  # before any server starts
        if groups < 1 or not 0 < tokens < st.input_len:
            raise ValueError(f"--shared-prefix {st.shared_prefix}: need at least one group and "
                             f"a prefix shorter than the prompt ({st.input_len} tokens)")
    if st.slo:
        from harness.slo import parse as parse_slo

        parse_slo(st.slo)  # a clear error before any server starts
    size = bench_size(st)
    for spec in st.plans:
        variants.parse(spec).resolve(size.num_layers)  # fail before starting anything
    if st.input_len + st.output_len > size.max_position and "--context-length" not in st.server_args:
        raise ValueError(f"{st.input_len} prompt + {st.output_len} output tokens exceed the "
                         f"'{st.size}' model's context of {size.max_position}")
    return a, st

def main(argv: list[str] | None = None) -> int:
    try:
        a, st = parse(argv)
    except (plans.PlanError, variants.VariantError) as e:
        print(f"error: invalid plan: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:  # before any server starts
        print(f"error: {flag_message(e)}", file=sys.stderr)
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
    # The servers' admin key (cache flushes between levels, the probe's flush): the
    # user's, or one for this run; in the environment only, never a command line.
    os.environ.setdefault(ADMIN_API_KEY_ENV, secrets.token_urlsafe(24))
    args = redact_argv(list(argv or sys.argv[1:]))
    meta = collect([sys.executable, "-m", "sglang_mixkv.bench", *args])
    meta["command"] = shlex.join(["python", "-m", "sglang_mixkv.bench", *args])
    meta["settings"] = asdict(st)
    (run / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    if not a.capacity_only and st.dp == 1:
        write_roofline(run, st, a.gpu)
    elif st.dp > 1:
        print(f"[{kind}] --dp {st.dp}: no roofline bound (the roofline models one server)",
              flush=True)

    def stop(signum, _frame):  # SIGTERM -> KeyboardInterrupt: finally-blocks stop servers
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    code = 0
    if a.capacity_only:
        steps = [(plan, lambda plan=plan: run_probe(plan, st, run / plan)) for plan in st.plans]
    elif st.repeats == 1:
        steps = [(plan, lambda plan=plan: run_sweep(plan, st, run / plan)) for plan in st.plans]
    else:  # rounds: every variant once per round, so a drift of the machine hits them all
        steps = [(f"{plan} (round {r + 1}/{st.repeats})",
                  lambda plan=plan, r=r: run_sweep(plan, st, run / plan, r))
                 for r in range(st.repeats) for plan in round_order(st.plans, r)]
    try:
        for name, step in steps:
            print(f"[{kind}] {name}", flush=True)
            try:
                step()
            except Exception as e:  # noqa: BLE001 - any failure: keep the other variants
                print(f"[{kind}] {name} failed: {type(e).__name__}: {e}", file=sys.stderr,
                      flush=True)
                code = 1
    except KeyboardInterrupt:
        print(f"[{kind}] interrupted; finished variants are kept in {run}", file=sys.stderr)
        code = 130
    print(write_report(run, st))
    return code


if __name__ == "__main__":
    sys.exit(main())
