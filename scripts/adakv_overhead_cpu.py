"""Ada-KV's scoring and compaction on the CPU, against the prefill it follows.

    .venv/bin/python scripts/adakv_overhead_cpu.py [--out results/adakv-overhead-cpu]
        [--plans standard,ma] [--input-len 2048] [--budget 256] [--prompts 5]

For each plan and scoring rule (``producer``, ``readers``) one tiny server with
``--adakv-budget``; ``--prompts`` prompts of ``--input-len`` random tokens, one at a time,
one output token each, asking for ``meta_info["adakv"]``. The server times its own
scoring + compaction (``compress_ms``, wall time inside the forward pass); the prefill
is the request's end-to-end latency (``meta_info["e2e_latency"]``: one output token).
``report.md``: medians of the prompts with the range, and the share. The claim to hold:
scoring costs at most 10% of the prompt's prefill.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.server import start_on_free_port  # noqa: E402
from harness.sysinfo import collect, provenance_lines  # noqa: E402
from sglang_mixkv.model_folder import get_size  # noqa: E402

RULES = ("producer", "readers")


def measure(plan: str, rule: str, a: argparse.Namespace) -> list[dict]:
    size = get_size("tiny")
    log = a.out / f"{plan}-{rule}.log"
    server = start_on_free_port(
        lambda port: [sys.executable, "-m", "sglang_mixkv.serve", "--plan", plan, "--size", "tiny",
                      "--kv-budget", a.kv_budget, "--adakv-budget", str(a.budget),
                      "--adakv-scoring", rule, "--port", str(port)], log, timeout=600, cwd=REPO)
    rows = []
    try:
        for i in range(a.prompts + 1):  # the first is a warm-up
            rng = random.Random(1000 + i)
            ids = [rng.randrange(3, size.vocab) for _ in range(a.input_len)]
            r = requests.post(server.url + "/generate", timeout=600, json={
                "input_ids": ids, "sampling_params": {
                    "max_new_tokens": 1, "ignore_eos": True, "custom_params": {"adakv_kept": True}}})
            r.raise_for_status()
            meta = r.json()["meta_info"]
            if i:
                rows.append({"plan": plan, "scoring": rule,
                             "prefill_ms": meta["e2e_latency"] * 1e3,
                             "compress_ms": meta["adakv"][0]["compress_ms"]})
    finally:
        server.stop()
    return rows


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def report(rows: list[dict], meta: dict, a: argparse.Namespace) -> str:
    lines = ["# Ada-KV scoring and compaction on the CPU", "",
             *provenance_lines(meta),
             f"- workload: model `tiny`, {a.prompts} prompts of {a.input_len} random tokens, one "
             f"at a time, 1 output token, after one warm-up; `--adakv-budget {a.budget}` (window "
             f"32); `--kv-budget {a.kv_budget}`", "",
             "`compress_ms`: the server's own wall time for scoring (the observation window's "
             "queries against all prompt keys, per global producer; with `readers`, also the "
             "consumers' queries) and compaction (kept K/V moved into the per-head cells); "
             "`prefill_ms`: the request's end-to-end latency (one output token), which includes "
             "it. Medians over the prompts, the range in brackets; `share` = the median of "
             "compress_ms / prefill_ms.", "",
             "| plan | scoring | prefill ms | scoring + compaction ms | share |",
             "| --- | --- | --- | --- | --- |"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["plan"], r["scoring"]), []).append(r)
    for (plan, rule), rs in groups.items():
        share = statistics.median(r["compress_ms"] / r["prefill_ms"] for r in rs)
        lines.append(f"| {plan} | {rule} | {fmt([r['prefill_ms'] for r in rs])} | "
                     f"{fmt([r['compress_ms'] for r in rs])} | {share:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "adakv-overhead-cpu")
    ap.add_argument("--plans", default="standard,ma")
    ap.add_argument("--input-len", type=int, default=2048)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--kv-budget", default="256MiB")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    meta = collect([sys.executable, *sys.argv] if argv is None else argv)
    meta["command"] = "python scripts/adakv_overhead_cpu.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    rows = [r for plan in a.plans.split(",") for rule in RULES for r in measure(plan, rule, a)]
    (a.out / "overhead.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    (a.out / "report.md").write_text(report(rows, meta, a))
    print(a.out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
