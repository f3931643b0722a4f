"""``python -m sglang_mixkv.roofline``: the roofline's command line, for our plans
(:mod:`mixkv_bench.roofline`) and for the published Gemma shapes
(:mod:`mixkv_bench.gemma_roofline`, ``--model gemma-*``)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from harness.errors import LEVELS, POSITIVE, SHARE
from mixkv_bench import gemma_roofline as gr
from mixkv_bench import variants
from mixkv_bench.gemma import PUBLISHED, source_of
from mixkv_bench.roofline import (ACHIEVABLE, GPUS, WORKLOADS, Options, Workload, assumptions,
                                  gpu, hardware_from_args, sweep)
from sglang_mixkv import plan as plans
from sglang_mixkv.defaults import parse_bytes
from sglang_mixkv.model_folder import SIZES, get_size


def table(df: "pd.DataFrame") -> "pd.DataFrame":  # noqa: F821
    cols = {"plan": "plan", "level": "conc", "running": "running", "limited_by": "batch limit",
            "prefill_s": "prefill s", "prefill_bound": "prefill bound", "decode_s": "decode s",
            "decode_bound": "decode bound", "duration_s": "duration s",
            "output_tok_per_s": "out tok/s", "speedup_vs_standard": "vs standard",
            "ttft_ms": "TTFT ms >=", "tpot_ms": "TPOT ms >=",
            "step_ms_1": "step ms >= (1 running)", "step_ms_32": "(32 running)"}
    return df[list(cols)].rename(columns=cols)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sglang_mixkv.roofline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", default="H100", help=f"{', '.join(GPUS)} or 'this' (micro-benchmark)")
    ap.add_argument("--plans", default="all", help="'all' or comma-separated variants (presets or "
                    "plan strings, optionally @adakv=B)")
    ap.add_argument("--adakv-budget", type=POSITIVE, help="Ada-KV budget for every plan listed without "
                    "its own: decode reads the kept prompt + outputs; prefill adds the scoring")
    ap.add_argument("--model", default="paper", choices=list(SIZES) + list(PUBLISHED),
                    help="our model's size, or a published Gemma E-series shape (stock SGLang's "
                    "pools and prefill beside ours; --plans does not apply)")
    ap.add_argument("--workload", default="paper", choices=list(WORKLOADS))
    ap.add_argument("--num-prompts", type=POSITIVE)
    ap.add_argument("--input-len", type=POSITIVE)
    ap.add_argument("--output-len", type=POSITIVE)
    ap.add_argument("--concurrency", type=LEVELS, help="comma-separated levels (default: the workload's)")
    ap.add_argument("--flops-fraction", type=SHARE, default=1.0,
                    help=f"share of peak FLOP/s assumed reachable (docs/design.md §10: {ACHIEVABLE[0]})")
    ap.add_argument("--bw-fraction", type=SHARE, default=1.0,
                    help=f"share of peak bandwidth assumed reachable (docs/design.md §10: {ACHIEVABLE[1]})")
    ap.add_argument("--mem-fraction", type=SHARE, default=0.85, help="KV budget = memory x this - weights")
    ap.add_argument("--kv-budget", help="KV budget instead, e.g. 64MiB")
    ap.add_argument("--max-running", type=POSITIVE, help="--max-running-requests (default: serve's)")
    ap.add_argument("--chunk", type=POSITIVE, help="--chunked-prefill-size (default: serve's)")
    ap.add_argument("--fast-prefill", action=argparse.BooleanOptionalAction, default=True,
                    help="layers after the last producer on the logit rows only (YOCO; "
                    "the server's default)")
    ap.add_argument("--no-reread", action="store_true",
                    help="each producer's K/V read once per decode step (an ideal kernel)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.model in PUBLISHED:
        return gemma_main(a)
    size = get_size(a.model)
    wl = workload_from_args(a)
    try:
        specs = [v.label if v.adakv_budget or not a.adakv_budget else f"{v.label}@adakv={a.adakv_budget}"
                 for v in variants.parse_list(a.plans)]
        for s in specs:
            variants.parse(s).resolve(size.num_layers)
        hw = hardware_from_args(a.gpu, size, specs, a.flops_fraction, a.bw_fraction)
        opts = Options(fast_prefill=a.fast_prefill, consumer_rereads=not a.no_reread)
        df = sweep(size, specs, hw, wl, None, opts, mem_fraction=a.mem_fraction,
                   kv_budget=parse_bytes(a.kv_budget) if a.kv_budget else None,
                   max_running=a.max_running, chunk=a.chunk)
    except (plans.PlanError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps({"model": size.name, "workload": asdict(wl), "hardware": asdict(hw),
                          "options": asdict(opts), "assumptions": assumptions(hw, opts),
                          "levels": df.to_dict("records")}, indent=1))
        return 0
    print(f"Roofline lower bound: {size.name} model, {wl.num_prompts} prompts x {wl.input_len} in / "
          f"{wl.output_len} out\n")
    print(table(df).to_markdown(index=False, floatfmt=".4g"))
    print("\n" + "\n".join(f"- {x}" for x in assumptions(hw, opts)))
    return 0


def workload_from_args(a: argparse.Namespace) -> Workload:
    base = WORKLOADS[a.workload]
    return Workload(a.num_prompts or base.num_prompts, a.input_len or base.input_len,
                    a.output_len or base.output_len,
                    tuple(a.concurrency) if a.concurrency else base.concurrency)


def gemma_main(a: argparse.Namespace) -> int:
    """``--model gemma-*``: stock SGLang 0.5.17 beside ours for a published shape."""
    wl = workload_from_args(a)
    try:
        if a.gpu.lower() == "this":
            raise ValueError("--gpu this measures our own model's sizes; give a GPU for Gemma")
        hw = gpu(a.gpu).achieving(a.flops_fraction, a.bw_fraction)
        df = gr.sweep(a.model, hw, wl, a.mem_fraction, a.max_running)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps({"model": a.model, "workload": asdict(wl), "hardware": asdict(hw),
                          "assumptions": gr.assumptions(hw), "levels": df.to_dict("records")},
                         indent=1))
        return 0
    print(f"Roofline lower bound: {a.model}, {wl.num_prompts} prompts x {wl.input_len} in / "
          f"{wl.output_len} out\n")
    print(gr.table(df).to_markdown(index=False, floatfmt=".4g"))
    print("\n" + "\n".join(f"- {x}" for x in gr.assumptions(hw)))
    print(f"- shape: {source_of(a.model)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
