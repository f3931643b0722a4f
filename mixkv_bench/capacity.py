"""``python -m sglang_mixkv.capacity``: the KV capacity of layer plans on one GPU, as a table.

The arithmetic is the serving core's (:mod:`sglang_mixkv.kv_math`, which our pool
configurator calls inside SGLang); this module lays it out per plan, at the KV budget a
GPU leaves after the plan's weights, as a Markdown table, JSON, CSV or a bar chart.
``make capacity`` (:mod:`mixkv_bench.bench`) puts the same formula beside the pools a
running server allocated and the requests it was measured to hold.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from harness.errors import POSITIVE, SHARE
from mixkv_bench import gemma, variants
from sglang_mixkv import kv_math as cap
from sglang_mixkv import plan as plans
from sglang_mixkv.defaults import parse_bytes
from sglang_mixkv.model_folder import SIZES, ModelSize, get_size, param_count, with_kv_heads

PAPER_REQUEST = cap.PAPER_REQUEST


def capacity_rows(plan_specs: list[str], size: ModelSize, gpu_mem: int, mem_fraction: float,
                  request_tokens: int = PAPER_REQUEST, window: int | None = None,
                  max_running: int | None = None, input_len: int | None = None) -> list[dict]:
    """One row per variant (``PLAN`` or ``PLAN@adakv=B``): the formula at the KV budget
    left after the plan's weights, and the pools our configurator would allocate there
    for ``max_running`` running requests (default: the formula's request count) and
    what they hold. ``input_len`` (default: all but the paper's 1K output) is the prompt
    part of a request, which Ada-KV compresses.

    Raises ValueError when the budget cannot hold the weights, or the local pool for
    ``max_running`` requests leaves no room for the global pool."""
    window = size.window if window is None else window
    dims = cap.KVDims.of(size)
    sizing = cap.serve_sizing(size, window)
    if input_len is None:
        input_len = max(1, request_tokens - cap.PAPER_OUTPUT)
    rows = []
    for variant in map(variants.parse, plan_specs):
        spec = variant.label
        p = variant.resolve(size.num_layers)
        ada = variant.compression(input_len, sizing["page"])
        weights = param_count(size, p) * size.dtype_bytes
        budget = cap.kv_budget(gpu_mem, mem_fraction, weights)
        if budget <= 0:
            raise ValueError(
                f"plan {spec}: {gpu_mem / 2**30:.2f} GiB x {mem_fraction} = "
                f"{gpu_mem * mem_fraction / 2**30:.2f} GiB cannot hold the {size.name} model's "
                f"weights ({weights / 2**30:.2f} GiB) and leaves no KV budget; raise --gpu-mem "
                "or --mem-fraction, or pick a smaller --model"
            )
        pt = cap.bytes_per_token(p, dims)
        n = cap.max_concurrent(budget, p, dims, window, request_tokens, ada)
        running = n if max_running is None else max_running
        split = cap.pool_split(budget, p, dims, max_running=running, **sizing)
        rows.append({
            "plan": spec,
            "layout": p.pretty(),
            "layers": len(p),
            "kv_heads": size.kv_heads,
            "global_producers": len(p.global_producers),
            "local_producers": len(p.local_producers),
            "global_bytes_per_token": pt.global_bytes,
            "local_bytes_per_token": pt.local_bytes,
            "adakv_budget": variant.adakv_budget,
            "request_tokens": request_tokens,
            "request_bytes": cap.request_bytes(p, dims, window, request_tokens, ada),
            "weight_bytes": weights,
            "kv_budget_bytes": budget,
            "max_tokens": cap.max_tokens(budget, p, dims, window, request_tokens, ada),
            "max_concurrent_31k": n,
            "max_running": running,
            "pool_global_tokens": split.global_tokens if p.global_producers else 0,
            "pool_local_tokens": split.local_tokens if p.local_producers else 0,
            "pool_max_requests": cap.pool_max_requests(
                split, p, request_tokens, **sizing, adakv=ada),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sglang_mixkv.capacity",
        description="KV capacity of layer plans on one GPU: the formula, and the pools our "
        "server would allocate. The KV budget is gpu-mem x mem-fraction minus the model's "
        "weights.",
    )
    ap.add_argument("--plans", default="all", help="'all' or comma-separated variants: a preset "
                    "or plan string, optionally @adakv=B (Ada-KV with budget B), e.g. "
                    "standard,ma,ma@adakv=2048")
    ap.add_argument("--adakv-budget", type=POSITIVE, help="Ada-KV budget for every plan listed "
                    "without one of its own (PLAN@adakv=B)")
    ap.add_argument("--gpu-mem", default=None, help="GPU memory, e.g. 80GiB (H100; the "
                    "default); for a Gemma model a comma list (default 80GiB,24GiB)")
    ap.add_argument("--mem-fraction", type=SHARE, default=0.85,
                    help="static memory fraction for weights + KV (SGLang's --mem-fraction-static)")
    ap.add_argument("--model", default="paper", choices=list(SIZES) + list(gemma.PUBLISHED),
                    help="our model sizes, or a published Gemma E-series shape: SGLang's "
                    "stock pool beside ours (--plans does not apply)")
    ap.add_argument("--kv-heads", type=POSITIVE, default=None,
                    help="KV heads per layer (1 = MQA, the model's heads = MHA; default: the size's)")
    ap.add_argument("--window", type=POSITIVE, default=None, help="sliding window in tokens "
                    "(default: the size's)")
    ap.add_argument("--request-tokens", type=POSITIVE, default=PAPER_REQUEST,
                    help="tokens per request (default 31K in + 1K out)")
    ap.add_argument("--input-len", type=POSITIVE, default=None,
                    help="prompt tokens of a request, which Ada-KV compresses (default: "
                    "request tokens minus 1K)")
    ap.add_argument("--max-running", type=POSITIVE, default=None,
                    help="running requests the local pool is sized for (serve's "
                    "--max-running-requests; default: the formula's request count per plan)")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    ap.add_argument("--csv", help="also write the table as CSV here")
    ap.add_argument("--png", help="also write a bar chart of max_tokens here")
    a = ap.parse_args(argv)
    if a.model in gemma.PUBLISHED:
        return gemma_table(a)
    a.gpu_mem = a.gpu_mem or "80GiB"
    try:
        specs = [v.label if v.adakv_budget or not a.adakv_budget else f"{v.label}@adakv={a.adakv_budget}"
                 for v in variants.parse_list(a.plans)]
        size = with_kv_heads(get_size(a.model), a.kv_heads)
        rows = capacity_rows(specs, size, parse_bytes(a.gpu_mem), a.mem_fraction,
                             a.request_tokens, a.window, a.max_running, a.input_len)
    except (plans.PlanError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import pandas as pd

    df = pd.DataFrame(rows)
    write_csv(df, a.csv)
    if a.png:
        plot_max_tokens(df, a.png, f"{size.name} size, {a.gpu_mem} x {a.mem_fraction}")
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        shown = df.drop(columns=["request_tokens", "request_bytes", "weight_bytes"])
        print(shown.to_markdown(index=False, intfmt=","))
        print(f"\nmodel {size.name}: {json.dumps(asdict(size))}")
    return 0


def write_csv(df, path: str | None) -> None:
    """``--csv``: the table as CSV, its folder created (nothing without a path)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)


def gemma_table(a: argparse.Namespace) -> int:
    """``--model gemma-*``: stock vs our pools for a published Gemma shape."""
    import pandas as pd

    try:
        mems = [parse_bytes(m) for m in (a.gpu_mem or "80GiB,24GiB").split(",")]
        rows = gemma.capacity_rows([a.model], mems, a.mem_fraction, a.request_tokens)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    df = pd.DataFrame(rows)
    write_csv(df, a.csv)
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        print(df.to_markdown(index=False, intfmt=",", floatfmt=".2f"))
        print(f"\nshape of {a.model}: {gemma.source_of(a.model)}")
    return 0


def plot_max_tokens(df, path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(df["plan"], df["max_tokens"] / 1e6)
    ax.set_ylabel("max tokens (millions)")
    ax.set_title(f"KV capacity per plan ({title})")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
