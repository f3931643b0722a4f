"""The roofline beside a bench run: the hardware, the predicted duration, and the bound of
every measured level (:mod:`mixkv_bench.roofline` with each variant's pool settings)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

from mixkv_bench import roofline as rl
from mixkv_bench import variants
from mixkv_bench.settings import Settings, bench_size
from sglang_mixkv.defaults import parse_bytes
from sglang_mixkv.sglang_seams.launch import flag_value

ROOFLINE = "roofline.json"

def write_roofline(run: Path, st: Settings, choice: str) -> None:
    """Measure or look up the hardware (before any server starts: a quiet machine), save
    it with the predicted duration in ``roofline.json``, and print the prediction."""
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
    from sglang_mixkv.device import nvidia_smi
    if choice == "auto":
        choice = "this"
        smi = nvidia_smi()
        gpus = smi.gpus if smi else []
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
    size = bench_size(st)
    budget = parse_bytes(st.kv_budget) if st.kv_budget else None
    info = vdir / "server_info.json" if vdir else None
    if budget is None and info and info.exists():
        budget = int(json.loads(info.read_text())["internal_states"][0]["memory_usage"]["kvcache"] * 2**30)
    chunk = flag_value(st.server_args, "--chunked-prefill-size")
    return rl.serving_for(size, variants.parse(spec).resolve(size.num_layers), hw,
                          mem_fraction=st.mem_fraction or 0.85, kv_budget=budget,
                          max_running=st.max_running, chunk=chunk and int(chunk))

def roofline_levels(st: Settings, hw, run: Path | None = None, levels: list[int] | None = None,
                    num_prompts: int | None = None):
    """:func:`mixkv_bench.roofline.sweep` for the bench's plans and workload (``standard``
    always as the speed-up's reference), each plan with its server's pool settings."""
    wl = rl.Workload(num_prompts or st.num_prompts, st.input_len, st.output_len,
                     tuple(levels or st.concurrency))
    specs = list(dict.fromkeys([*st.plans, "standard"]))
    servings = {p: roofline_serving(p, st, hw, run / p if run else None) for p in specs}
    return rl.sweep(bench_size(st), st.plans, hw, wl, servings, roofline_options(st))

def roofline_options(st: Settings):
    """The roofline's switches as the bench's servers run: fast prefill unless the
    server arguments turn it off."""
    return rl.Options(fast_prefill="--no-fast-prefill" not in st.server_args)

def predict(st: Settings, hw) -> dict:
    """Seconds of serving the bench cannot beat on ``hw`` (every plan: warm-up, then each
    level ``repeats`` times; server start-ups not counted), and on a built-in GPU the
    same at the fractions of peak taken as achievable (``roofline.ACHIEVABLE``)."""
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
