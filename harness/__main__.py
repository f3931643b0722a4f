"""Command line: ``python -m harness {run,report,overhead,anchor} ...``.

Exit codes: 0 done (even with failed requests: they are in the report); 2 the server was
not reachable at the start, or bad arguments; 130 interrupted (Ctrl-C; the partial results
are kept and reported).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from pathlib import Path

from sglang_mixkv.defaults import ADMIN_API_KEY_ENV, API_KEY_ENV
from harness.workload import PROFILES, IdRange, parse_shared_prefix
from harness.client import API_NAMES


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:30000")
    p.add_argument("--profile", default="paper", choices=sorted(PROFILES),
                   help="named workload; the flags below override its fields (default: paper)")
    p.add_argument("--api", default="generate", choices=list(API_NAMES),
                   help="SGLang /generate, OpenAI-compatible /v1/completions or "
                        "/v1/chat/completions (chat)")
    p.add_argument("--num-prompts", type=int)
    p.add_argument("--input-len", type=int)
    p.add_argument("--output-len", type=int)
    p.add_argument("--concurrency", type=_ints, help="comma-separated levels, e.g. 1,8,32")
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="Poisson arrivals per second (default inf: all due at once)")
    p.add_argument("--warmup", type=int, help="warm-up requests, excluded from stats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, help="per-request timeout, seconds")
    p.add_argument("--label", help="variant name (default: the profile name)")
    p.add_argument("--out", type=Path, help="run folder (default results/runs/LABEL-TIME)")
    p.add_argument("--vocab-size", type=int, help="default: read from the server's model folder")
    p.add_argument("--id-range", type=IdRange.parse, help="token ids LO:HI (default 3:vocab)")
    p.add_argument("--model", default="default", help="OpenAI 'model' field")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                   help="send 'Authorization: Bearer KEY' (a server started with --api-key; "
                   f"default: ${API_KEY_ENV}; never written to the results)")
    p.add_argument("--admin-api-key", default=os.environ.get(ADMIN_API_KEY_ENV) or None,
                   help="the server's admin key, used only for POST /flush_cache between levels "
                   f"(default: ${ADMIN_API_KEY_ENV}); without it a server with keys refuses the "
                   "flush and the report says the levels ran unflushed")
    p.add_argument("--no-flush", action="store_true", help="don't POST /flush_cache between levels")
    p.add_argument("--backend", action="append", default=[], metavar="URL",
                   help="a server behind the router at --url (repeat per server): flushed "
                   "directly with the admin key between levels and asked for /server_info")
    p.add_argument("--trace", type=Path, help="replay a JSON-lines trace: per line input_len "
                   "and output_len (or mooncake's input_length/output_length) and an optional "
                   "timestamp (arrival time); replaces --num-prompts/--input-len/--output-len "
                   "and, with timestamps, --request-rate")
    p.add_argument("--trace-time-unit", choices=["s", "ms"], default="s",
                   help="unit of the trace's timestamps (mooncake traces: ms)")
    p.add_argument("--shared-prefix", type=_groups, metavar="GROUPS:TOKENS",
                   help="requests open with one of GROUPS shared prefixes of TOKENS tokens "
                   "(request i: group i %% GROUPS)")
    p.add_argument("--max-context", type=int, help="the server's context, for checking a "
                   "trace (default: the model folder's max_position_embeddings)")
    p.add_argument("--slo", type=_slo, help="latency objectives for goodput, any subset of "
                   "ttft_ms=...,tpot_ms=...,e2e_ms=... (see harness/slo.py for the definitions)")
    p.add_argument("--wait", type=float, default=0.0, help="wait this long for the server to come up")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only on a terminal)")
    p.add_argument("--no-report", action="store_true", help="skip report rendering at the end")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the whole sweep this many times (run-to-run spread in the report)")
    p.add_argument("--no-metrics", action="store_true",
                   help="don't sample the server's /metrics into timeline.jsonl")
    p.add_argument("--metrics-interval", type=float, default=1.0, help="seconds between samples")


def _groups(text: str) -> tuple[int, int]:
    """argparse type for ``GROUPS:TOKENS``."""
    try:
        return parse_shared_prefix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _slo(text: str) -> str:
    """argparse type: validate (harness.slo.parse) and keep the text for meta.json."""
    from harness.slo import parse

    try:
        parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def config_from_args(a: argparse.Namespace):
    from harness.runner import RunConfig

    prof = PROFILES[a.profile]
    label = a.label or prof.name
    out = a.out or Path("results/runs") / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    pick = lambda v, d: d if v is None else v  # noqa: E731
    return RunConfig(
        url=a.url.rstrip("/"), out=out, label=label, api=a.api, profile=prof.name,
        num_prompts=pick(a.num_prompts, prof.num_prompts), input_len=pick(a.input_len, prof.input_len),
        output_len=pick(a.output_len, prof.output_len),
        concurrency=list(pick(a.concurrency, prof.concurrency)), rate=a.request_rate,
        warmup=pick(a.warmup, prof.warmup), seed=a.seed, timeout=pick(a.timeout, prof.timeout),
        vocab_size=a.vocab_size, id_range=a.id_range, model=a.model, flush=not a.no_flush,
        progress=a.progress, wait=a.wait, repeats=a.repeats, metrics=not a.no_metrics,
        metrics_interval=a.metrics_interval, api_key=a.api_key, admin_api_key=a.admin_api_key,
        slo=a.slo, trace=a.trace, trace_time_unit=0.001 if a.trace_time_unit == "ms" else 1.0,
        shared_prefix=a.shared_prefix, max_context=a.max_context,
        backends=[b.rstrip("/") for b in a.backend])


#: RunConfig fields whose flag is not ``--field-name``
RUN_FLAGS = {"rate": "--request-rate", "backends": "--backend"}


def cmd_run(a: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from harness import report, runner
    from harness.errors import flag_message

    try:
        cfg = config_from_args(a)
    except ValidationError as e:  # nothing sent, no folder made
        print(f"error: {flag_message(e, RUN_FLAGS)}", file=sys.stderr)
        return 2
    code = 0
    try:
        asyncio.run(runner.run(cfg, sys.argv))
    except (runner.StartupError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except runner.FlushError as e:
        print(f"error: {e}; finished levels are kept in {cfg.out}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print(f"interrupted: partial results kept in {cfg.out}", file=sys.stderr)
        code = 130
    if not a.no_report:
        files = report.render([cfg.out], cfg.out)
        print(f"report: {files['md']}", file=sys.stderr)
    return code


def cmd_report(a: argparse.Namespace) -> int:
    from harness import report

    missing = [d for d in a.run_dirs if not (d / "requests.jsonl").is_file()]
    if missing:
        print(f"error: no requests.jsonl in {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    out = a.out or (a.run_dirs[0] if len(a.run_dirs) == 1 else a.run_dirs[0].parent / "compare")
    files = report.render(a.run_dirs, out)
    print(files["md"].read_text() if a.print else f"report: {files['md']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_run_args(sub.add_parser("run", help="run a concurrency sweep against a server"))
    rp = sub.add_parser("report", help="render one run, or compare several side by side")
    rp.add_argument("run_dirs", nargs="+", type=Path)
    rp.add_argument("--out", type=Path, help="default: the run folder (one run) or PARENT/compare")
    rp.add_argument("--print", action="store_true", help="also print the Markdown report")
    from harness import anchor, overhead

    overhead.add_args(sub.add_parser("overhead", help="how many streamed tokens/s the harness absorbs"))
    anchor.add_args(sub.add_parser("anchor", help="compare with sglang.bench_serving on one server"))
    a = ap.parse_args(argv)
    if a.cmd == "run":
        return cmd_run(a)
    if a.cmd == "report":
        return cmd_report(a)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
