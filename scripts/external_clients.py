"""Run other people's load generators against our server, as their users run them.

    .venv/bin/python scripts/external_clients.py [--out results/external-clients]

Starts one of our servers (``ma``, tiny, CPU), then runs, one after another:

* SGLang's own ``python -m sglang.benchmark.serving`` with ``--backend sglang``
  (``/generate``), ``sglang-oai`` (``/v1/completions``) and ``sglang-oai-chat``
  (``/v1/chat/completions``), random token-id prompts (``random-ids``: ``random``
  downloads ShareGPT, and this machine has no internet);
* NVIDIA AIPerf (``aiperf profile``, its own venv ``.venv-aiperf``: it pins packages
  SGLang's venv cannot share; created here on first use) with ``--endpoint-type
  completions`` and ``chat``, streaming, synthetic prompts.

Each must finish every request it sent; the server's own counters
(``sglang:num_requests_total``, ``sglang:generation_tokens_total``) must grow by at least
the requests and output tokens asked for. The report lists what each tool measured (its
own numbers, not ours) beside the command.
Nothing here is a speed comparison: the tools run once each, on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import server as hserver  # noqa: E402
from harness.sysinfo import collect  # noqa: E402

AIPERF = "aiperf==0.13.0"
PROMPTS, INPUT_LEN, OUTPUT_LEN, CONCURRENCY = 16, 128, 16, 4


def aiperf_bin(venv: Path) -> Path:
    exe = venv / "bin" / "aiperf"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", AIPERF], check=True)
    return exe


def served(url: str) -> tuple[float, float]:
    """The server's own counters: requests finished and tokens generated."""
    text = requests.get(url + "/metrics", timeout=30).text

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))

    return total("sglang:num_requests_total"), total("sglang:generation_tokens_total")


def bench_serving(url: str, model: Path, backend: str, out: Path) -> tuple[list[str], dict]:
    file = out / f"bench_serving-{backend}.jsonl"
    cmd = [sys.executable, "-m", "sglang.benchmark.serving", "--backend", backend,
           "--base-url", url, "--model", str(model), "--tokenizer", str(model),
           "--dataset-name", "random-ids", "--random-input-len", str(INPUT_LEN),
           "--random-output-len", str(OUTPUT_LEN), "--random-range-ratio", "1.0",
           "--num-prompts", str(PROMPTS), "--max-concurrency", str(CONCURRENCY),
           "--disable-tqdm", "--output-file", str(file)]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    row = json.loads(file.read_text().splitlines()[-1])
    return cmd, {"completed": row["completed"], "output_tokens": row["total_output_tokens"],
                 "output_tok_per_s": row["output_throughput"],
                 "ttft_median_ms": row["median_ttft_ms"], "itl_median_ms": row["median_itl_ms"]}


def aiperf(exe: Path, url: str, model: Path, endpoint: str, out: Path) -> tuple[list[str], dict]:
    art = out / f"aiperf-{endpoint}"
    cmd = [str(exe), "profile", "--model", "default", "--url", url, "--endpoint-type", endpoint,
           "--streaming", "--tokenizer", str(model), "--isl", str(INPUT_LEN),
           "--osl", str(OUTPUT_LEN), "--extra-inputs", "ignore_eos:true",
           "--request-count", str(PROMPTS), "--concurrency", str(CONCURRENCY),
           "--random-seed", "0", "--artifact-dir", str(art), "--ui-type", "none"]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    doc = json.loads(next(art.rglob("profile_export_aiperf.json")).read_text())

    def stat(name: str, key: str = "avg"):
        m = doc.get(name) or {}
        return m.get(key)

    return cmd, {"completed": stat("request_count"), "output_tokens": stat("total_output_tokens"),
                 "output_tok_per_s": stat("output_token_throughput"),
                 "ttft_median_ms": stat("time_to_first_token", "p50"),
                 "itl_median_ms": stat("inter_token_latency", "p50")}


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "external-clients")
    ap.add_argument("--aiperf-venv", type=Path, default=REPO / ".venv-aiperf")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    exe = aiperf_bin(a.aiperf_venv)
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.strip()
    model = REPO / "models" / "tiny-ma-seed0"
    rows, meta = [], collect([sys.executable, "scripts/external_clients.py", *(argv or sys.argv[1:])])
    meta["versions"]["aiperf"] = version.splitlines()[-1] if version else AIPERF
    serve = lambda port: [sys.executable, "-m", "sglang_mixkv.serve", "--plan", "ma",  # noqa: E731
                          "--model-path", str(model), "--port", str(port), "--enable-metrics",
                          "--max-running-requests", "8"]
    started = hserver.start_on_free_port(serve, a.out / "server.log", timeout=600, cwd=REPO)
    try:
        runs = [("sglang.benchmark.serving", b, lambda b=b: bench_serving(started.url, model, b, a.out))
                for b in ("sglang", "sglang-oai", "sglang-oai-chat")]
        runs += [("aiperf", e, lambda e=e: aiperf(exe, started.url, model, e, a.out))
                 for e in ("completions", "chat")]
        for tool, api, run in runs:
            before = served(started.url)
            t0 = time.monotonic()
            cmd, got = run()
            reqs, toks = (b - a for a, b in zip(before, served(started.url)))
            # warm-up requests (bench_serving sends one) generate their own tokens
            ok = got["completed"] == PROMPTS and reqs >= PROMPTS and toks >= PROMPTS * OUTPUT_LEN
            rows.append({"tool": tool, "api": api, **got, "server_requests": reqs,
                         "server_output_tokens": toks,
                         "wall_s": round(time.monotonic() - t0, 1), "complete": ok,
                         "command": shlex.join(cmd).replace(str(REPO) + "/", "")})
            print(f"{tool} {api}: {got}; server: {reqs:g} requests, {toks:g} tokens", flush=True)
    finally:
        started.stop()
    df = pd.DataFrame(rows)
    (a.out / "results.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1) + "\n")
    table = df.drop(columns=["command"]).to_markdown(index=False, floatfmt=".4g")
    cmds = "\n".join(f"- {r['tool']} `{r['api']}`: `{r['command']}`" for r in rows)
    (a.out / "report.md").write_text(f"""# External clients against our server

- command: `python scripts/external_clients.py`
- commit: `{meta['git']['commit']}`{' (dirty)' if meta['git'].get('dirty') else ''}
- versions: {json.dumps(meta['versions'])}
- hardware: {json.dumps(meta['hardware'])}
- server: `python -m sglang_mixkv.serve --plan ma` (tiny, CPU), {PROMPTS} requests of
  {INPUT_LEN} prompt tokens and {OUTPUT_LEN} output tokens per tool, {CONCURRENCY} at a time

Every tool's own numbers (one run each on a shared 2-core machine: a compatibility check,
not a speed comparison). `complete`: the tool finished all {PROMPTS} requests and the
server's own counters (`sglang:num_requests_total`, `sglang:generation_tokens_total`:
`server_requests`, `server_output_tokens`) grew by at least {PROMPTS} requests and
{PROMPTS * OUTPUT_LEN} tokens (a tool's warm-up request adds its own). `output_tokens` is
the tool's count: AIPerf re-tokenizes the reply text, where the special tokens `<unk>`,
`<s>`, `</s>` that random weights sometimes generate are not shown, so it counts a few
fewer than the server generated.

{table}

Commands:

{cmds}
""")
    print(a.out / "report.md")
    return 0 if all(r["complete"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
