"""Write README.md's generated sections, so the README's numbers are the code's numbers,
never typed in:

* between ``<!-- results:begin -->`` and ``<!-- results:end -->``: the committed reports
  given as arguments (header bullets and every table);
* with ``--roofline``, between ``<!-- roofline:begin -->`` and ``<!-- roofline:end -->``:
  the H100 projection of the paper's test from :mod:`mixkv_bench.roofline` (a model,
  with its assumptions);
* with ``--gemma``, between ``<!-- gemma-roofline:begin -->`` and
  ``<!-- gemma-roofline:end -->``: the H100 projection of the paper's workload for the
  published Gemma E-series shapes, stock SGLang beside ours
  (:mod:`mixkv_bench.gemma_roofline`);
* with ``--adakv``, between ``<!-- adakv:begin -->`` and ``<!-- adakv:end -->``: Ada-KV's
  capacity at paper scale (the formula and the pools, :mod:`mixkv_bench.capacity`) and its
  H100 projection, with and without a budget.

    .venv/bin/python scripts/readme_results.py results/bench-cpu results/shared-prefix-cpu \
        results/bench-adakv-cpu results/capacity-cpu results/capacity-adakv-cpu \
        results/fast-prefill-cpu results/adakv-overhead-cpu results/external-clients \
        results/soak-cpu results/soak-adakv-cpu results/gemma-cpu results/quality-search \
        results/quality results/quality-scratch "results/quality-layouts:Accuracy per setting" \
        "results/quality-budgets:Budget curves" "results/quality-long:Budget curves" \
        --roofline --adakv --gemma
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
RL_BEGIN, RL_END = "<!-- roofline:begin -->", "<!-- roofline:end -->"
ADA_BEGIN, ADA_END = "<!-- adakv:begin -->", "<!-- adakv:end -->"
GEMMA_BEGIN, GEMMA_END = "<!-- gemma-roofline:begin -->", "<!-- gemma-roofline:end -->"
ADA_BUDGET = 2048
ADA_VARIANTS = ["standard", f"standard@adakv={ADA_BUDGET}", "ma", f"ma@adakv={ADA_BUDGET}"]
PLANS = ["standard", "swa", "ma", "ma-offset", "ma-endslide", "ma-pairs"]


def _image(run: Path, line: str) -> list[str]:
    alt, target = re.match(r"!\[(.*)\]\((.*)\)", line).groups()
    return ["", f"![{alt}]({run}/{target})", ""]


def section(arg: str | Path) -> str:
    """A report's header bullets (command, commit, versions, hardware, workload), then:
    with ``## `` sections, every table and the paragraphs that define their columns (or,
    for an argument ``RUN:Title,Title``, those of the sections whose titles start so); a
    short report without sections (overhead, external clients, soak), its whole body."""
    text, _, only = str(arg).partition(":")
    run, titles = Path(text), [t.strip() for t in only.split(",") if t.strip()]
    lines = (run / "report.md").read_text().splitlines()
    out = [f"### `{run}`", ""]
    first = next((i for i, ln in enumerate(lines) if ln.startswith("## ")), None)
    end = 1  # the header: bullets and their wrapped continuation lines
    while end < len(lines) and (lines[end].startswith(("- ", "  ")) or not lines[end].strip()):
        if not lines[end].strip() and end > 1 and lines[end - 1].strip():
            break
        end += 1
    out += [ln for ln in lines[1:end] if ln.strip()] + [""]
    if first is None:
        for ln in lines[end:]:
            out += _image(run, ln) if ln.startswith("![") else [ln]
        return "\n".join(out).replace("\n\n\n", "\n\n")
    keep = False
    for ln in lines:
        if ln.startswith("## "):
            keep = not titles or any(ln[3:].startswith(t) for t in titles)
            out += ["#" + ln, ""] if keep else []
        elif keep and ln.startswith("### "):
            out += ["#" + ln, ""]
        elif keep and ln.startswith("|"):
            out.append(ln)
        elif keep and ln.startswith(("Requests of", "Not measured", "TTFT p50", "SLO ")):
            out += [ln, ""]  # the paragraph that defines a table's columns
        elif keep and ln.startswith("!["):
            out += _image(run, ln)
    return "\n".join(out).replace("\n\n\n", "\n\n")


def roofline_section() -> str:
    """The paper's test on one H100 SXM, per variant and level, from the roofline module."""
    sys.path.insert(0, str(ROOT))
    import inspect

    from sglang_mixkv import plan as plans
    from mixkv_bench import roofline as rl
    from sglang_mixkv.model_folder import get_size

    size, wl = get_size("paper"), rl.WORKLOADS["paper"]
    hw = rl.gpu("H100").achieving(*rl.ACHIEVABLE)
    sv = rl.serving_for(size, plans.resolve("standard", size.num_layers), hw)  # what sweep uses
    mem_fraction = inspect.signature(rl.serving_for).parameters["mem_fraction"].default
    df = rl.sweep(size, PLANS, hw, wl)
    peak = rl.sweep(size, PLANS, rl.gpu("H100"), wl)
    cell = df.assign(v=[f"{t:,.0f} ({s:.2f}x)" for t, s in zip(df["output_tok_per_s"],
                                                             df["speedup_vs_standard"])])
    table = cell.pivot(index="plan", columns="level", values="v").loc[PLANS]
    table.columns = [f"c={c}" for c in table.columns]
    bounds = df[df["level"].isin([8, 300])].assign(
        batch=lambda d: [f"{n} ({lim})" for n, lim in zip(d["running"], d["limited_by"])],
        prefill=lambda d: [f"{s:.0f} s ({b})" for s, b in zip(d["prefill_s"], d["prefill_bound"])],
        decode=lambda d: [f"{s:.0f} s ({b})" for s, b in zip(d["decode_s"], d["decode_bound"])],
        ttft=lambda d: d["ttft_ms"].round(0), tpot=lambda d: d["tpot_ms"].round(1))
    bounds = bounds[["plan", "level", "batch", "prefill", "decode", "ttft", "tpot"]].rename(columns={
        "level": "conc", "batch": "decode batch (limit)", "prefill": "prefill phase",
        "decode": "decode phase", "ttft": "TTFT >= ms", "tpot": "TPOT >= ms"})
    ratio = peak[peak["plan"] == "ma-offset"].set_index("level")["speedup_vs_standard"]
    cmd = ("python -m sglang_mixkv.roofline --gpu H100 --flops-fraction "
           f"{rl.ACHIEVABLE[0]} --bw-fraction {rl.ACHIEVABLE[1]} --plans {','.join(PLANS)}")
    return "\n".join([
        f"**A model, not a measurement**: `{cmd}` (generated into this README by "
        "`scripts/readme_results.py --roofline`). The paper's test: "
        f"{wl.num_prompts} prompts of {wl.input_len:,} tokens in and {wl.output_len:,} out, all due "
        "at once, at most `c` in flight; the `paper` model size "
        f"({size.num_layers} layers, hidden {size.hidden}, GQA {size.heads}:{size.kv_heads}, "
        f"head dim {size.head_dim}, {'bf16' if size.dtype == 'bfloat16' else size.dtype}, "
        f"window {size.window}) on one {hw.name} taken to reach "
        f"{rl.ACHIEVABLE[0]:.0%} of its peak FLOP/s and {rl.ACHIEVABLE[1]:.0%} of its bandwidth. "
        f"Each variant's KV budget is {hw.memory / 2**30:g} GiB x {mem_fraction} minus its "
        "weights, split between the pools as our server splits it, "
        f"`--max-running-requests {sv.max_running}`, chunks of {sv.chunk} tokens. "
        "Output tokens/s per level, and in brackets the speed-up over `standard`:", "",
        table.to_markdown(), "",
        f"What bounds each phase (sum over the level's {wl.num_prompts} requests; TTFT and TPOT: "
        "the floor for "
        "one prompt's prefill alone and for one decode step of the batch):", "",
        bounds.to_markdown(index=False), "",
        "Assumptions:", "", *[f"- {a}" for a in rl.assumptions(hw, rl.Options())], "",
        "At 100% of the data sheet's peaks (the strict lower bound) `ma-offset` / `standard` is "
        + ", ".join(f"{r:.2f}x at c={c}" for c, r in ratio.items()) + ".",
    ])


def adakv_section() -> str:
    """Ada-KV at paper scale: capacity (formula, pools) and the H100 projection."""
    sys.path.insert(0, str(ROOT))
    from mixkv_bench import roofline as rl
    from mixkv_bench.capacity import capacity_rows
    from sglang_mixkv.model_folder import get_size

    size, wl = get_size("paper"), rl.WORKLOADS["paper"]
    rows = capacity_rows(ADA_VARIANTS, size, 80 << 30, 0.85)
    import pandas as pd

    cap = pd.DataFrame(rows)[["plan", "request_bytes", "max_concurrent_31k", "max_tokens",
                             "pool_max_requests"]].rename(columns={
        "plan": "variant", "request_bytes": "KV bytes per request", "max_concurrent_31k":
        "requests (formula)", "max_tokens": "tokens (formula)", "pool_max_requests":
        "requests (our pools)"})
    hw = rl.gpu("H100").achieving(*rl.ACHIEVABLE)
    df = rl.sweep(size, ADA_VARIANTS, hw, wl)
    proj = df[df["level"].isin([8, 64, 300])].assign(
        out=lambda d: [f"{t:,.0f} ({s:.2f}x)" for t, s in zip(d["output_tok_per_s"],
                                                             d["speedup_vs_standard"])])
    proj = proj.pivot(index="plan", columns="level", values="out").loc[ADA_VARIANTS]
    proj.columns = [f"c={c}" for c in proj.columns]
    decode = df[df["level"] == 300].set_index("plan")["decode_s"]
    return "\n".join([
        f"At paper scale (`python -m sglang_mixkv.capacity --plans {','.join(ADA_VARIANTS)} "
        "--gpu-mem 80GiB`, generated by `scripts/readme_results.py --adakv`): requests of "
        f"{wl.input_len:,} + {wl.output_len:,} tokens on an 80 GiB GPU at 0.85 minus the "
        f"weights, budget {ADA_BUDGET} (window 32); the formula counts one prompt held in "
        "full while it is prefilled, the pools are those our configurator would allocate for "
        "the formula's count:", "",
        cap.to_markdown(index=False, intfmt=","), "",
        f"Projected on an H100 (the roofline above, `--plans {','.join(ADA_VARIANTS)}`): "
        "output tokens/s and the speed-up over `standard`; decode at c=300 takes "
        + ", ".join(f"{decode[v]:.1f} s for `{v}`" for v in ADA_VARIANTS) + " (the prefill "
        "phase is unchanged apart from the scoring, which the roofline counts):", "",
        proj.to_markdown(), "",
    ])


def gemma_section() -> str:
    """Stock SGLang and ours for each published Gemma shape on one H100, from the Gemma
    roofline."""
    sys.path.insert(0, str(ROOT))
    import pandas as pd

    from mixkv_bench import gemma_roofline as gr
    from mixkv_bench import roofline as rl

    wl, hw = rl.WORKLOADS["paper"], rl.gpu("H100").achieving(*rl.ACHIEVABLE)
    df = pd.concat([gr.sweep(name, hw, wl) for name in gr.gemma.PUBLISHED])
    cell = df.assign(v=[f"{t:,.0f} ({s:.2f}x)" if p == gr.OURS else f"{t:,.0f}" for t, s, p in
                        zip(df["output_tok_per_s"], df["speedup_vs_stock"], df["pools"])])
    table = cell.pivot(index=["model", "pools"], columns="level", values="v")
    table = table.reindex([(m, p) for m in gr.gemma.PUBLISHED for p in (gr.STOCK, gr.OURS)])
    table.columns = [f"c={c}" for c in table.columns]
    top = df[df["level"] == 300].assign(
        batch=lambda d: [f"{n} ({lim})" for n, lim in zip(d["running"], d["limited_by"])],
        prefill=lambda d: [f"{s:.0f} s" for s in d["prefill_s"]],
        decode=lambda d: [f"{s:.0f} s ({b})" for s, b in zip(d["decode_s"], d["decode_bound"])],
        ttft=lambda d: d["ttft_ms"].round(0), tpot=lambda d: d["tpot_ms"].round(1))
    top = top[["model", "pools", "batch", "prefill", "decode", "ttft", "tpot"]].rename(columns={
        "batch": "decode batch (limit)", "prefill": "prefill phase", "decode": "decode phase",
        "ttft": "TTFT >= ms", "tpot": "TPOT >= ms"})
    cmd = (f"python -m sglang_mixkv.roofline --model MODEL --gpu H100 --flops-fraction "
           f"{rl.ACHIEVABLE[0]} --bw-fraction {rl.ACHIEVABLE[1]}")
    return "\n".join([
        f"**A model, not a measurement**: `{cmd}` for each published shape (generated by "
        "`scripts/readme_results.py --gemma`). The paper's workload "
        f"({wl.num_prompts} prompts of {wl.input_len:,} in and {wl.output_len:,} out) on one "
        f"{hw.name} at {rl.ACHIEVABLE[0]:.0%} of its FLOP/s and {rl.ACHIEVABLE[1]:.0%} of its "
        "bandwidth. Output tokens/s per level, ours with the speed-up over stock:", "",
        table.reset_index().to_markdown(index=False), "",
        "At c=300: the decode batch and what limits it, each phase's time, TTFT and TPOT floors:",
        "", top.to_markdown(index=False), "",
        "Assumptions:", "", *[f"- {a}" for a in gr.assumptions(hw)],
    ])


def replace(text: str, begin: str, end: str, body: str) -> str:
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + "\n" + body + "\n" + text[stop:]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="run folders whose report.md to copy (RUN:Title,... "
                    "copies only the sections whose titles start so)")
    ap.add_argument("--roofline", action="store_true", help="regenerate the H100 projection")
    ap.add_argument("--adakv", action="store_true", help="regenerate the Ada-KV tables")
    ap.add_argument("--gemma", action="store_true", help="regenerate the Gemma roofline")
    a = ap.parse_args(argv)
    text = README.read_text()
    if a.runs:
        text = replace(text, BEGIN, END, "\n\n".join(section(r) for r in a.runs))
    if a.roofline:
        text = replace(text, RL_BEGIN, RL_END, roofline_section())
    if a.adakv:
        text = replace(text, ADA_BEGIN, ADA_END, adakv_section())
    if a.gemma:
        text = replace(text, GEMMA_BEGIN, GEMMA_END, gemma_section())
    README.write_text(text)


if __name__ == "__main__":
    main()
