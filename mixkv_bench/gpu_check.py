"""The GPU check: what an air-gapped GPU host must show, in one command of a few minutes.

    python -m mixkv_bench.gpu_check [--part all|correctness,paper,metadata,peer]
        [--out DIR] [--gpu H100|H200] [--deadline-s S] [--dry-run]

(``scripts/gpu_check.sh`` installs from a wheel folder first and packs the results;
``make gpu-check``.) Parts, in the order they run:

- ``correctness``: ``serve --size tiny`` on the GPU with decode CUDA graphs, for
  ``ma-offset`` and for ``ma`` with Ada-KV (budget 64, window 16); prompts below, across
  and far past the window and the budget, decoded together so the graphs run batched;
  greedy tokens and logprobs against the plain-PyTorch reference (with the server's own
  kept sets for Ada-KV). The worst logprob difference per plan is printed.
- ``paper``: the scaled paper test of the first H200 run (32 prompts x 31,000 in / 512
  out at concurrency 32, after one request alone with 256 output tokens) for
  ``standard``, ``ma`` and ``ma@adakv=2048``, each server started once: output tok/s,
  TTFT/TPOT p50, measured / roofline, and decode step times at 1 and 32 running requests
  (read off the server's log) against the roofline's bound.
- ``metadata``: ``scripts/adakv_decode_metadata.py`` (host cost of an Ada-KV decode
  step's metadata against the plain path's).
- ``peer``: the paper part for stock ``sglang.launch_server`` serving the ``standard``
  shape as a ``LlamaForCausalLM`` (our plugin off: ``SGLANG_PLUGINS``), what a user would
  run otherwise.

Each step has its own time limit, and every finished step is in ``check.json`` at once
(the report is rewritten after each), so a step that runs out of time loses only itself.
``--deadline-s`` bounds the whole: a step's limit is cut to what is left, and a step that
would get less than its minimum is skipped and named in the report (exit 2), so one call
of a lent GPU's time limit does what fits and the next call runs the rest (``--part``).
The roofline's bounds are for the GPU the check runs on (``--gpu``: H100 or H200, found
from the device's name when not given).
``--dry-run`` prints every command (servers through ``serve --dry-run --gpu``) and runs
none: how a machine without a GPU checks this file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from harness.server import launched_on_free_port
from harness.sysinfo import collect, provenance_lines
from mixkv_bench import REPO, roofline, variants
from mixkv_bench.reference import Reference, server_kept
from mixkv_bench.servers import server_command
from mixkv_bench.settings import Settings
from sglang_mixkv.model_folder import get_size, write_model_folder

#: in the order they run: what a short call must not miss first
PARTS = ("correctness", "paper", "metadata", "peer")
#: (plan, serve flags) of the correctness part
TINY_CASES = [("ma-offset", []), ("ma", ["--adakv-budget", "64", "--adakv-window", "16"])]
#: prompt lengths and output tokens of the correctness part (tiny: window 32, chunk 256)
TINY_PROMPTS, TINY_OUTPUT = (12, 70, 300, 700), 24
PAPER_VARIANTS = ["standard", "ma", "ma@adakv=2048"]


@dataclass(frozen=True)
class Scale:
    """The paper and peer parts' model and workload."""

    size: str = "paper"
    num_prompts: int = 32
    input_len: int = 31_000
    output_len: int = 512
    concurrency: int = 32
    single_output: int = 256  # the request decoded alone first
    adakv_budget: int = 2048
    #: flags every server gets (ours through serve); stock gets ``device`` too
    flags: tuple = ("--cuda-graph-max-bs", "32", "--decode-log-interval", "20")
    device: tuple = ("--attention-backend", "triton")


GPU = Scale()
#: ``--rehearse``: every part's code path on a CPU, at the tiny size in seconds
REHEARSAL = Scale("tiny", 4, 200, 16, 4, 8, 64, ("--decode-log-interval", "4"),
                  ("--device", "cpu", "--attention-backend", "torch_native"))
#: seconds each step may take, its server's start included
LIMITS = {"correctness": 120, "paper": 150, "peer": 150, "metadata": 90}
#: a step that would get fewer seconds than this under ``--deadline-s`` is skipped
MIN_STEP_S = {"correctness": 75, "paper": 90, "peer": 90, "metadata": 30}
START_S = 300
#: logprob tolerance on the GPU for the float32 tiny model: TF32-free float32 kernels
#: differ from the reference by summation order (~1e-5); 1e-2 leaves room for a TF32
#: matmul (10-bit mantissa) and flags any real error (those are >0.1)
LOGPROB_TOL = 1e-2
DECODE_LINE = re.compile(r"Decode batch.*?#running-req: (\d+).*?gen throughput \(token/s\): ([\d.]+)")


class StepTimeout(Exception):
    pass


class Check:
    """The results so far (``check.json``) and the report beside them."""

    def __init__(self, out: Path, gpu: str, scale: Scale = GPU, dry: bool = False):
        self.out, self.gpu, self.scale, self.dry = out, gpu, scale, dry
        out.mkdir(parents=True, exist_ok=True)
        self.record = {"meta": collect(), "gpu": gpu, "rehearsal": scale is not GPU,
                       "scale": scale.__dict__, "steps": []}

    @contextlib.contextmanager
    def step(self, name: str, limit: float):
        """Run a step under its time limit (SIGALRM: the ``with`` blocks inside clean up
        their servers); record its result or its error and save."""
        row = {"step": name, "limit_s": round(limit, 1)}
        self.record["steps"].append(row)
        t0 = time.monotonic()

        def expire(*_):
            raise StepTimeout(f"{name}: over its {limit:g} s")

        old = signal.signal(signal.SIGALRM, expire)
        signal.alarm(max(1, int(limit)))
        try:
            yield row
            row["ok"] = True
        except Exception as e:  # noqa: BLE001 - a failed step is a result, the rest goes on
            row["ok"], row["error"] = False, f"{type(e).__name__}: {e}"[-3000:]
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
            row["wall_s"] = round(time.monotonic() - t0, 1)
            self.save()
            print(f"gpu-check: {name}: {'ok' if row.get('ok') else row.get('error')} "
                  f"({row['wall_s']} s)", flush=True)

    def skip(self, name: str, part: str, left: float) -> None:
        """Record a step the deadline leaves no time for (run it with ``--part PART``)."""
        self.record["steps"].append({"step": name, "part": part, "skipped":
                                     f"{max(left, 0):.0f} s left of the deadline"})
        self.save()
        print(f"gpu-check: {name}: skipped, {max(left, 0):.0f} s left of the deadline", flush=True)

    def save(self) -> None:
        (self.out / "check.json").write_text(json.dumps(self.record, indent=1, default=str) + "\n")
        (self.out / "report.md").write_text(report(self.record))


# ---- correctness --------------------------------------------------------------------------
def prompt(seed: int, n: int, vocab: int) -> list[int]:
    g = random.Random(seed)
    return [g.randrange(3, vocab) for _ in range(n)]


def generate(url: str, ids: list[int], max_new: int, rid: str) -> dict:
    r = requests.post(url + "/generate", timeout=120, json={
        "input_ids": ids, "rid": rid, "return_logprob": True, "logprob_start_len": -1,
        "sampling_params": {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True}})
    r.raise_for_status()
    return r.json()


def correctness(check: Check, plan: str, extra: list[str]) -> dict:
    """One tiny server; every prompt at once; each answer against the reference."""
    cmd = [sys.executable, "-m", "sglang_mixkv.serve", "--plan", plan, "--size", "tiny",
           "--cuda-graph-max-bs", "8", *extra]
    env = {"MIXKV_MODELS": str(check.out / "models")}
    debug = check.out / f"kept-{plan}.jsonl"
    if extra:
        env["MIXKV_ADAKV_DEBUG_JSONL"] = str(debug)
    if check.dry:
        return {"plan": plan, "command": dry_serve(cmd, env, check.gpu)}
    log = check.out / f"tiny-{plan}.log"
    vocab = get_size("tiny").vocab
    cases = [(f"{plan}-{n}", prompt(n, n, vocab)) for n in TINY_PROMPTS]
    with launched_on_free_port(lambda port: cmd + ["--port", str(port)], log, START_S,
                               env) as url:
        with ThreadPoolExecutor(len(cases)) as pool:  # one batch: the graphs run batched
            outs = list(pool.map(lambda c: generate(url, c[1], TINY_OUTPUT, c[0]), cases))
        model_dir = Path(requests.get(url + "/server_info", timeout=30).json()["model_path"])
    ref = Reference(model_dir)
    rows = []
    for (rid, ids), out in zip(cases, outs):
        kept = server_kept(debug, rid) if extra else {}
        gen = ref.generate(ids, TINY_OUTPUT, kept=kept or None)
        got = out["meta_info"]["output_token_logprobs"]
        rows.append({"rid": rid, "prompt": len(ids), "compressed": bool(kept),
                     "tokens_equal": [t[1] for t in got] == gen.tokens,
                     "max_logprob_diff": max(abs(t[0] - b) for t, b in zip(got, gen.logprobs))})
    worst = max(r["max_logprob_diff"] for r in rows)
    equal = all(r["tokens_equal"] for r in rows)
    return {"plan": plan, "flags": extra, "cases": rows, "worst_logprob_diff": worst,
            "all_tokens_equal": equal, "tolerance": LOGPROB_TOL,
            "decode_in_cuda_graphs": "cuda graph: True" in log.read_text(errors="replace"),
            "pass": equal and worst <= LOGPROB_TOL}


# ---- paper and peer ---------------------------------------------------------------------
def our_command(check: Check, spec: str, port: int) -> list[str]:
    sc = check.scale
    v = variants.parse(spec)
    if v.adakv_budget:  # the scale's budget (the rehearsal's prompts are short)
        spec = f"{v.plan}@adakv={sc.adakv_budget}"
    st = Settings([spec], sc.size, sc.num_prompts, sc.input_len, sc.output_len, [sc.concurrency], 0,
                  None if sc is GPU else "64MiB", None, sc.concurrency, server_args=list(sc.flags))
    return server_command(spec, st)[0] + ["--port", str(port)]


def stock_command(check: Check, port: int) -> list[str]:
    """Stock SGLang serving the ``standard`` shape with its own LlamaForCausalLM."""
    sc = check.scale
    folder = write_model_folder(check.out / "models" / f"{sc.size}-llama", sc.size, "standard",
                                architecture="LlamaForCausalLM")
    dtype = get_size(sc.size).dtype
    return [sys.executable, "-m", "sglang.launch_server", "--model-path", str(folder),
            "--load-format", "dummy", "--dtype", dtype, *sc.device,
            "--max-running-requests", str(sc.concurrency), "--chunked-prefill-size", "8192",
            "--host", "127.0.0.1", "--port", str(port), *sc.flags]


def harness_run(check: Check, url: str, out: Path, label: str, single: bool) -> list[str]:
    sc = check.scale
    prompts, output, conc, warmup = ((1, sc.single_output, 1, 1) if single else
                                     (sc.num_prompts, sc.output_len, sc.concurrency, 0))
    return [sys.executable, "-m", "harness", "run", "--url", url, "--label", label,
            "--num-prompts", str(prompts), "--input-len", str(sc.input_len), "--output-len",
            str(output), "--concurrency", str(conc), "--warmup", str(warmup),
            "--timeout", "300", "--no-flush", "--out", str(out)]


def step_times(log_text: str) -> dict[int, float]:
    """Median decode step milliseconds per running-request count, from SGLang's decode log
    lines (running / gen throughput)."""
    by_running: dict[int, list[float]] = {}
    for running, tput in DECODE_LINE.findall(log_text):
        if float(tput) > 0:
            by_running.setdefault(int(running), []).append(int(running) / float(tput) * 1e3)
    return {n: statistics.median(v) for n, v in by_running.items()}


def bound_of(check: Check, spec: str) -> dict:
    """The roofline's bound on the check's GPU (``--gpu``) for the scale's workload."""
    sc = check.scale
    size = get_size(sc.size)
    spec = "standard" if spec == "stock-llama" else spec
    wl = roofline.Workload(sc.num_prompts, sc.input_len, sc.output_len, (sc.concurrency,))
    hw = roofline.gpu(check.gpu)
    plan = variants.parse(spec).resolve(size.num_layers)
    b = roofline.level_bound(size, spec, hw, wl, sc.concurrency,
                             roofline.serving_for(size, plan, hw, max_running=sc.concurrency))
    return {"output_tok_per_s": b.output_tok_per_s, "step_ms_1": b.step_ms_1,
            "step_ms_32": b.step_ms_32}


def paper(check: Check, spec: str) -> dict:
    """One server of ``spec`` (``stock-llama``: the peer): the request alone, then the
    scaled test; throughput and latency from the harness, step times from the log."""
    import os

    import pandas as pd

    vdir = check.out / re.sub(r"[^A-Za-z0-9.-]", "_", spec)
    vdir.mkdir(parents=True, exist_ok=True)
    if spec == "stock-llama":
        make = lambda port: stock_command(check, port)  # noqa: E731
        # stock: our plugin's entry point not loaded (a rehearsal on a CPU keeps it: SGLang's
        # rotary embedding needs its CPU fix there, patches/rotary_cpu.py)
        env = {"SGLANG_PLUGINS": "none"} if check.scale is GPU else {}
    else:
        make = lambda port: our_command(check, spec, port)  # noqa: E731
        env = {"MIXKV_MODELS": str(check.out / "models")}
    runs = [(vdir / "single", True), (vdir / "main", False)]
    if check.dry:
        cmd = make(30000)
        ours = "sglang_mixkv.serve" in cmd
        return {"variant": spec,
                "command": dry_serve(cmd, env, check.gpu) if ours else " ".join(cmd),
                "harness": [" ".join(harness_run(check, "URL", d, spec, one)) for d, one in runs]}
    log = vdir / "server.log"
    t0 = time.monotonic()
    with launched_on_free_port(make, log, START_S, env) as url:
        started = time.monotonic() - t0
        for d, one in runs:
            subprocess.run(harness_run(check, url, d, spec, one), check=True, cwd=REPO,
                           stdout=subprocess.DEVNULL, env={**os.environ, **env})
    row = pd.read_csv(vdir / "main" / "summary.csv").iloc[0]
    steps = step_times(log.read_text(errors="replace"))
    bound = bound_of(check, spec)
    n = check.scale.concurrency
    return {"variant": spec, "start_s": round(started, 1),
            "output_tok_per_s": float(row["output_tok_per_s"]),
            "ttft_p50_ms": float(row["ttft_p50_ms"]), "tpot_p50_ms": float(row["tpot_p50_ms"]),
            "roofline_tok_per_s": bound["output_tok_per_s"],
            "vs_roofline": float(row["output_tok_per_s"]) / bound["output_tok_per_s"],
            "step_ms_1": steps.get(1), "bound_step_ms_1": bound["step_ms_1"],
            "step_ms_32": steps.get(n) or steps.get(n - 1), "bound_step_ms_32": bound["step_ms_32"],
            "step_ms_by_running": steps}


def metadata(check: Check) -> dict:
    cmd = [sys.executable, str(REPO / "scripts" / "adakv_decode_metadata.py"), "--requests",
           str(check.scale.concurrency), "--kept", str(check.scale.adakv_budget), "--plans",
           "ma,standard", "--iters", "100" if check.scale is GPU else "2",
           "--out", str(check.out / "metadata")]
    if check.dry:
        return {"command": " ".join(cmd)}
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return {"rows": json.loads((check.out / "metadata" / "rows.json").read_text())}


def dry_serve(cmd: list[str], env: dict, gpu: str) -> str:
    """What ``serve`` would run on ``gpu`` (``--dry-run --gpu GPU``), asked in this
    process (with ``env`` applied meanwhile): the lines it prints."""
    import io
    import os

    from sglang_mixkv import serve

    argv = cmd[cmd.index("sglang_mixkv.serve") + 1:] + ["--dry-run", "--gpu", gpu]
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = serve.main(argv)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    if rc:
        raise RuntimeError(err.getvalue()[-2000:])
    return "\n".join(line for line in err.getvalue().splitlines()
                     if line.startswith("sglang-mixkv:"))


# ---- report -------------------------------------------------------------------------------
def report(rec: dict) -> str:
    title = (f"# GPU check, rehearsed on this machine (roofline: {rec['gpu']})"
             if rec.get("rehearsal") else f"# GPU check on {rec['gpu']}")
    lines = [title, "", *provenance_lines(rec["meta"]), ""]
    steps = rec["steps"]
    lines += ["| step | ok | wall s | limit s |", "| --- | --- | --- | --- |"]
    lines += [f"| {s['step']} | {s.get('ok', 'skipped')} | {s.get('wall_s', '-')} | "
              f"{s.get('limit_s', '-')} |" for s in steps]
    tiny = [s["result"] for s in steps if s["step"].startswith("correctness") and "result" in s
            and "cases" in s["result"]]
    if tiny:
        lines += ["", "## Correctness (tiny, decode CUDA graphs, against the reference)", "",
                  "| plan | flags | tokens equal | worst logprob diff | decode in graphs | pass |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {t['plan']} | {' '.join(t['flags'])} | {t['all_tokens_equal']} | "
                  f"{t['worst_logprob_diff']:.2e} | {t['decode_in_cuda_graphs']} | {t['pass']} |"
                  for t in tiny]
        lines += ["", f"Tolerance: |logprob difference| <= {LOGPROB_TOL} and greedy tokens equal."]
    big = [s["result"] for s in steps if s["step"].startswith(("paper", "peer")) and "result" in s
           and "output_tok_per_s" in s["result"]]
    if big:
        def ms(x):
            return "-" if x is None else f"{x:.2f}"

        sc = rec["scale"]
        lines += ["", f"## Scaled paper test ({sc['num_prompts']} x {sc['input_len']} in / "
                  f"{sc['output_len']} out, concurrency {sc['concurrency']}; {sc['size']} model)", "",
                  "| variant | start s | output tok/s | roofline | measured / roofline | "
                  "TTFT p50 ms | TPOT p50 ms | step ms @1 | bound @1 | step ms @32 | bound @32 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {b['variant']} | {b['start_s']} | {b['output_tok_per_s']:.0f} | "
                  f"{b['roofline_tok_per_s']:.0f} | {b['vs_roofline']:.2f} | "
                  f"{b['ttft_p50_ms']:.0f} | {b['tpot_p50_ms']:.1f} | {ms(b['step_ms_1'])} | "
                  f"{b['bound_step_ms_1']:.2f} | {ms(b['step_ms_32'])} | "
                  f"{b['bound_step_ms_32']:.2f} |" for b in big]
        by = {b["variant"]: b["output_tok_per_s"] for b in big}
        pairs = [("ma", "standard"), ("ma@adakv=2048", "ma"), ("standard", "stock-llama")]
        lines += [""] + [f"- {a} / {b}: {by[a] / by[b]:.2f}x" for a, b in pairs if a in by and b in by]
    meta = [s["result"] for s in steps if s["step"] == "metadata" and "result" in s
            and "rows" in s["result"]]
    if meta:
        lines += ["", "## Ada-KV decode metadata (host ms per step)", "",
                  "| plan | plain eager | Ada-KV eager | plain graph prep | Ada-KV graph prep | "
                  "graph ratio | in-graph builds (device ms) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in meta[0]["rows"]:
            dev = r.get("adakv_graph_build_device_ms")
            lines.append(f"| {r['plan']} | {r['plain_eager_host_ms']:.3f} | "
                         f"{r['adakv_eager_host_ms']:.3f} | {r['plain_graph_host_ms']:.3f} | "
                         f"{r['adakv_graph_host_ms']:.3f} | {r['graph_ratio']:.2f} | "
                         f"{'-' if dev is None else f'{dev:.3f}'} |")
    failed = [s for s in steps if s.get("ok") is False]
    if failed:
        lines += ["", "## Failed steps", ""] + [f"- {s['step']}: {s['error'][:600]}" for s in failed]
    skipped = [s for s in steps if "skipped" in s]
    if skipped:
        rest = ",".join(dict.fromkeys(s["part"] for s in skipped))
        lines += ["", f"## Skipped steps (the deadline; run them with PART={rest})", ""]
        lines += [f"- {s['step']}: {s['skipped']}" for s in skipped]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mixkv_bench.gpu_check",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default="all", help=f"all, or comma-separated: {', '.join(PARTS)}")
    ap.add_argument("--out", type=Path, default=Path("results/gpu-check"))
    ap.add_argument("--gpu", help="the GPU the roofline bounds (H100, H200, A100; default: "
                    "found from GPU 0's name, H200 for --dry-run and --rehearse)")
    ap.add_argument("--deadline-s", type=float,
                    help="seconds for all the steps: each step's limit is cut to what is left, "
                    "and a step with less than its minimum left is skipped (exit 2)")
    ap.add_argument("--dry-run", action="store_true", help="print every command, run none")
    ap.add_argument("--rehearse", action="store_true",
                    help="run every part on this machine at the tiny size (CPU: torch_native)")
    a = ap.parse_args(argv)
    parts = PARTS if a.part == "all" else tuple(p.strip() for p in a.part.split(","))
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; parts: {', '.join(PARTS)}")
    scale = REHEARSAL if a.rehearse else GPU
    try:
        gpu = which_gpu(a.gpu, probe=scale is GPU and not a.dry_run)
    except ValueError as e:
        ap.error(str(e))
    check = Check(a.out, gpu, scale, a.dry_run)
    deadline = None if a.deadline_s is None or a.dry_run else time.monotonic() + a.deadline_s
    # an outer `timeout` stops this with SIGTERM: unwind, so the servers (each in its own
    # process session) are stopped and the results so far saved
    old = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        jobs = {"correctness": [(f"correctness {p}", lambda p=p, x=x: correctness(check, p, x))
                                for p, x in TINY_CASES],
                "paper": [(f"paper {v}", lambda v=v: paper(check, v)) for v in PAPER_VARIANTS],
                "peer": [("peer stock-llama", lambda: paper(check, "stock-llama"))],
                "metadata": [("metadata", lambda: metadata(check))]}
        slack = 1 if check.scale is GPU and not a.dry_run else 10
        for part in (p for p in PARTS if p in parts):
            for name, job in jobs[part]:
                limit = LIMITS[part] * slack
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left < MIN_STEP_S[part]:
                        check.skip(name, part, left)
                        continue
                    limit = min(limit, left)
                with check.step(name, limit) as row:
                    row["result"] = job()
                if a.dry_run:
                    print(json.dumps(row["result"], indent=1))
        print(report(check.record))
        steps = check.record["steps"]
        if any(s.get("ok") is False for s in steps):
            return 1
        return 2 if any("skipped" in s for s in steps) else 0
    finally:
        if old is not None:  # None: a handler not set from Python, nothing to restore
            signal.signal(signal.SIGTERM, old)


def which_gpu(given: str | None, probe: bool) -> str:
    """The roofline's name of the GPU the check is for: ``given`` (checked), else GPU 0's
    (``probe``: on the GPU host), else H200 (the dry run's and the rehearsal's default)."""
    if given:
        roofline.gpu(given)  # ValueError names the known ones
        return given.strip().upper()
    if not probe:
        return "H200"
    import torch

    name = torch.cuda.get_device_name(0)
    for key in roofline.GPUS:
        if key in name.upper():
            return key
    raise ValueError(f"GPU 0 is {name!r}, which the roofline does not know: give --gpu "
                     f"({', '.join(roofline.GPUS)}) to bound it as one of those")


if __name__ == "__main__":
    sys.exit(main())
