"""Gemma 4 and Gemma 3n on the CPU: served exactly, and their pools, stock beside ours.

    .venv/bin/python scripts/gemma_cpu.py [--out results/gemma-cpu]

For each family a tiny random text folder written by transformers
(:func:`mixkv_bench.gemma.write_tiny`; and a multimodal Gemma 4 checkpoint, the published
class, through the text folder ``python -m sglang_mixkv.gemma`` writes), served twice with ``python -m sglang_mixkv.serve``
at the same ``--kv-budget``: with our pools, and with ``MIXKV_STOCK_POOLS=1`` (SGLang's
own pool sizing and per-layer buffers; every other seam on).

- **Verification** (our server): prompts within one window, of several windows in
  several chunks, and a prompt extending a cached one (radix hit), greedy decoding past
  the window; tokens and the largest logprob difference against transformers' forward.
- **Pools**: ``/server_info`` of both servers (tokens, and the GiB of KV buffers SGLang
  allocated) beside ``kv_math`` (``pool_split`` for ours, ``stock_pool_split`` for
  SGLang's), so either side can disagree with the arithmetic.
- **Published shapes**: ``capacity --model gemma-*`` at 80 GiB and 24 GiB.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.server import start_on_free_port  # noqa: E402
from harness.sysinfo import collect, provenance_lines  # noqa: E402
from mixkv_bench import gemma  # noqa: E402
from sglang_mixkv import gemma as sglang_gemma  # noqa: E402
from sglang_mixkv import kv_math  # noqa: E402
from sglang_mixkv.defaults import parse_bytes  # noqa: E402

FAMILIES = ("gemma4", "gemma3n", "gemma4-multimodal")
RUNNING, CHUNK = 4, 32
#: (what, prompt length, new tokens); window 8, chunks of 32
CASES = [("within the window", 6, 12), ("3 chunks, 12 windows", 96, 24),
         ("8 chunks, 32 windows", 250, 16)]


def serve(folder: Path, log: Path, kv_budget: str, stock: bool):
    return start_on_free_port(
        lambda port: [sys.executable, "-m", "sglang_mixkv.serve", "--model-path", str(folder),
                      "--kv-budget", kv_budget, "--max-running-requests", str(RUNNING),
                      "--chunked-prefill-size", str(CHUNK), "--port", str(port)],
        log, timeout=600, cwd=REPO, env={"MIXKV_STOCK_POOLS": "1"} if stock else None)


def generate(url: str, ids: list[int], new: int, start: int) -> dict:
    r = requests.post(url + "/generate", timeout=900, json={
        "input_ids": ids, "return_logprob": True, "logprob_start_len": start,
        "sampling_params": {"max_new_tokens": new, "temperature": 0, "ignore_eos": True}})
    r.raise_for_status()
    return r.json()


def compare(url: str, ref: gemma.TransformersReference, what: str, ids: list[int], new: int,
            start: int = 0) -> dict:
    out = generate(url, ids, new, start)
    tokens, lps = ref.greedy(ids, new)
    meta = out["meta_info"]
    served = [x[0] for x in meta["input_token_logprobs"] + meta["output_token_logprobs"]]
    served = [lp for lp in served if lp is not None]
    want = lps[len(lps) - len(served):]
    return {"case": what, "prompt": len(ids), "new": new, "cached": meta["cached_tokens"],
            "tokens_equal": out["output_ids"] == tokens,
            "first_diverging": next((i for i, (a, b) in enumerate(zip(out["output_ids"], tokens))
                                     if a != b), None),
            "logprobs": len(served),
            "max_abs_dlogprob": max(abs(a - b) for a, b in zip(served, want))}


def pools(url: str) -> tuple[int, int | None, float]:
    """Global tokens, local tokens (None: one pool), GiB of KV buffers allocated."""
    info = requests.get(url + "/server_info", timeout=30).json()
    usage = info["internal_states"][0]["memory_usage"]
    return info["max_total_num_tokens"], usage["token_capacity_swa"], usage["kvcache"]


def run_family(family: str, a: argparse.Namespace, root: Path) -> tuple[list[dict], list[dict]]:
    if family == "gemma4-multimodal":
        checkpoint = gemma.write_tiny_multimodal(root / family, seed=a.seed)
        folder = sglang_gemma.write_text_folder(checkpoint, root / f"{family}-text")
    else:
        checkpoint = folder = gemma.write_tiny(root / family, family, seed=a.seed)
    ref = gemma.TransformersReference(checkpoint)
    fields = gemma.TINY[family.split("-")[0]]
    plan, dims = gemma.gemma.plan_of(fields), gemma.kv_dims(fields, dtype_bytes=4)
    budget = parse_bytes(a.kv_budget)
    rng = random.Random(a.seed)
    rows = []
    server = serve(folder, a.out / f"{family}.log", a.kv_budget, stock=False)
    try:
        ours = pools(server.url)
        for what, n, new in CASES:
            rows.append(compare(server.url, ref, what, [rng.randrange(3, 512) for _ in range(n)], new))
        requests.post(server.url + "/flush_cache", timeout=30)
        first = [rng.randrange(3, 512) for _ in range(64)]
        compare(server.url, ref, "cache fill", first, 2)
        second = first + [rng.randrange(3, 512) for _ in range(40)]
        rows.append(compare(server.url, ref, "radix hit (64 of 104 cached)", second, 16,
                            start=len(second) - 1))
    finally:
        server.stop()
    server = serve(folder, a.out / f"{family}-stock.log", a.kv_budget, stock=True)
    try:
        stock = pools(server.url)
    finally:
        server.stop()
    sizing = dict(window=fields["sliding_window"], max_running=RUNNING, chunk=CHUNK, page=1,
                  eviction_interval=1, chunks_in_flight=2)
    ours_formula = kv_math.pool_split(budget, plan, dims, **sizing)
    hybrid = family.startswith("gemma4")
    stock_formula = kv_math.stock_pool_split(budget, plan, dims, hybrid=hybrid)
    n_full = fields["layer_types"].count("full_attention")
    pool_rows = [
        {"model": family, "pools": "stock SGLang 0.5.17",
         "buffers (full + sliding)": f"{n_full} + {len(plan) - n_full}" if hybrid
         else f"{len(plan)} (one pool)",
         "global tokens: formula": stock_formula.global_tokens, "global tokens: server": stock[0],
         "local tokens: formula": stock_formula.local_tokens if hybrid else None,
         "local tokens: server": stock[1],
         "KV GiB: formula": (stock_formula.global_bytes + stock_formula.local_bytes) / 2**30,
         "KV GiB: server": stock[2]},
        {"model": family, "pools": "sglang-mixkv",
         "buffers (full + sliding)": f"{len(plan.global_producers)} + {len(plan.local_producers)}",
         "global tokens: formula": ours_formula.global_tokens, "global tokens: server": ours[0],
         "local tokens: formula": ours_formula.local_tokens, "local tokens: server": ours[1],
         "KV GiB: formula": (ours_formula.global_bytes + ours_formula.local_bytes) / 2**30,
         "KV GiB: server": ours[2]},
    ]
    for r in rows:
        r["model"] = family
    return rows, pool_rows


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "results" / "gemma-cpu")
    ap.add_argument("--kv-budget", default="64MiB")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    meta = collect(["python", *sys.argv] if argv is None else ["python", "scripts/gemma_cpu.py", *argv])
    (a.out / "meta.json").write_text(json.dumps(meta, indent=1))
    verification, pool_rows = [], []
    with tempfile.TemporaryDirectory() as root:
        for family in FAMILIES:
            v, p = run_family(family, a, Path(root))
            verification += v
            pool_rows += p
    capacity = gemma.capacity_rows(list(gemma.PUBLISHED), [80 * 2**30, 24 * 2**30])
    pd.DataFrame(capacity).to_csv(a.out / "capacity.csv", index=False)
    (a.out / "verification.json").write_text(json.dumps(verification, indent=1))
    cols = ["model", "case", "prompt", "new", "cached", "tokens_equal", "logprobs",
            "max_abs_dlogprob"]
    cap_cols = ["model", "gpu_mem_gib", "pools", "layers_with_kv", "global_bytes_per_token",
                "local_bytes_per_token", "kv_budget_gib", "pool_global_tokens",
                "pool_local_tokens", "requests_held"]
    lines = [
        "# Gemma 4 and Gemma 3n on the CPU: exact against transformers, pools stock vs ours", "",
        *provenance_lines(meta),
        f"- models: tiny random text folders written by transformers (6 layers, window 8, the "
        f"last 2 KV-shared, float32; `mixkv_bench.gemma.TINY`) and a multimodal Gemma 4 "
        f"checkpoint served through its text folder, seed {a.seed}; Gemma 4 on "
        f"triton through Triton's interpreter, Gemma 3n on torch_native; `--kv-budget "
        f"{a.kv_budget}`, `--max-running-requests {RUNNING}`, `--chunked-prefill-size {CHUNK}`",
        "",
        "## Verification against transformers 5.12.1", "",
        "Greedy tokens and every logprob returned (prompt and output; the radix hit returns "
        "the last prompt token's on) against transformers' forward of the same folder.", "",
        pd.DataFrame(verification)[cols].to_markdown(index=False, floatfmt=".2g"), "",
        "## Pools at the same KV budget: the formula and the server", "",
        pd.DataFrame(pool_rows).astype({"local tokens: formula": "Int64",
                                        "local tokens: server": "Int64"})
        .to_markdown(index=False, floatfmt=".4f"), "",
        "## Published shapes (formula; bf16 weights and KV, mem fraction 0.85, requests of "
        "31K + 1K tokens)", "",
        "Weights: the text model's parameters, counted on transformers' model (per-layer "
        "input embeddings included; the multimodal checkpoints' vision and audio towers, "
        "~0.45B for Gemma 4, are not).", "",
        pd.DataFrame(capacity)[cap_cols].to_markdown(index=False, intfmt=",", floatfmt=".1f"), "",
        f"Shapes: Gemma 4: {gemma.SOURCES['gemma-4']}. Gemma 3n: {gemma.SOURCES['gemma-3n']}.",
        ""]
    (a.out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))
    bad = [r for r in verification if not r["tokens_equal"] or r["max_abs_dlogprob"] > 1e-4]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
