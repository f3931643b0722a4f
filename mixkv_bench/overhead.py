"""``python -m mixkv_bench.overhead``: the harness's overhead (``python -m harness
overhead``) beside what one H100 produces on the paper's test, by the roofline.

The H100's rates come from :func:`mixkv_bench.roofline.level_bound` for the ``paper``
model at concurrency 300 of the paper's workload, at the fractions of peak the roofline
takes as achievable (:data:`mixkv_bench.roofline.ACHIEVABLE`): one set of assumptions for
every H100 estimate in the project.

    python -m mixkv_bench.overhead --out results/harness
"""

from __future__ import annotations

import argparse
import sys

from harness import overhead
from mixkv_bench import roofline as rl
from sglang_mixkv import plan as plans
from sglang_mixkv.model_folder import get_size

PLANS = ("standard", "ma")
LEVEL = 300


def h100_rates() -> dict:
    """Decode step, peak decode rate and average output rate of ``PLANS`` at c=300."""
    size, hw = get_size("paper"), rl.gpu("H100").achieving(*rl.ACHIEVABLE)
    wl = rl.WORKLOADS["paper"]
    rows = []
    for spec in PLANS:
        plan = plans.resolve(spec, size.num_layers)
        lb = rl.level_bound(size, spec, hw, wl, LEVEL, rl.serving_for(size, plan, hw))
        rows.append({"label": f"{spec} (decode batch {lb.running}, {lb.limited_by})",
                     "decode_step_ms": lb.tpot_ms,
                     "peak_decode_tok_s": lb.running / lb.tpot_ms * 1e3,
                     "avg_output_tok_s": lb.output_tok_per_s})
    return {"title": "Compared with one H100 on the paper's test",
            "source": (f"From the roofline (`mixkv_bench.roofline.level_bound`): the `paper` model, "
                       f"{wl.num_prompts} prompts of {wl.input_len} tokens in and {wl.output_len} "
                       f"out at concurrency {LEVEL}, on {hw.describe()}; a decode step reads the "
                       "weights and every running request's K/V (consumers re-read their "
                       "producer's), the batch is what the KV pools admit."),
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mixkv_bench.overhead", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    overhead.add_args(ap)
    a = ap.parse_args(argv)
    return overhead.main(a, compare=h100_rates())


if __name__ == "__main__":
    sys.exit(main())
