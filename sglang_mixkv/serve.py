"""``python -m sglang_mixkv.serve``: write the model folder if needed, then run SGLang.

    python -m sglang_mixkv.serve --plan ma-offset --size paper [--port 30000] [sglang flags]

Everything this command does not know is passed to ``sglang.launch_server`` as is, so
every SGLang server flag works. It adds only defaults a MixAttention server needs:
``--max-running-requests`` (the local KV pool is sized for it), a chunk size, and on a
machine without a GPU ``--device cpu --attention-backend torch_native``. The process
execs SGLang, so signals (Ctrl-C, ``docker stop``) reach the server directly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from harness.client import API_KEY_ENV, redact_argv
from sglang_mixkv import device
from sglang_mixkv import plan as plans
from sglang_mixkv.capacity import parse_bytes
from sglang_mixkv.sglang_seams import fast_prefill
from sglang_mixkv.sizes import SIZES, get_size, with_kv_heads, write_model_folder

REPO = Path(__file__).resolve().parent.parent
#: The pool configurator caps the KV budget at this many bytes when set (CPU runs and
#: capacity checks use it to get the same budget on any machine).
KV_BUDGET_ENV = "MIXKV_KV_BUDGET_BYTES"

CPU_KV_BUDGET = "1GiB"
DEFAULTS = {  # size -> sglang flag defaults (the user's flags win)
    "tiny": {"--max-running-requests": "32", "--chunked-prefill-size": "256"},
    "paper": {"--max-running-requests": "300", "--chunked-prefill-size": "8192"},
}


def has_gpu() -> bool:
    """True on a GPU host; raises device.DeviceError rather than fall back to the CPU
    when nvidia-smi sees a GPU that torch cannot use (see :mod:`sglang_mixkv.device`)."""
    return device.resolve() == "gpu"


def default_model_dir(size: str, plan_spec: str, seed: int, weights: bool,
                      kv_heads: int | None = None) -> Path:
    slug = plan_spec if plan_spec in plans.PRESETS else "plan-" + re.sub(r"[^A-Za-z0-9]", "", plan_spec)
    if kv_heads is not None:
        slug += f"-kv{kv_heads}"
    root = Path(os.environ.get("MIXKV_MODELS", REPO / "models"))
    return root / f"{size}-{slug}-{f'seed{seed}' if weights else 'dummy'}"


def eviction_interval(window: int) -> int:
    """Decode steps between out-of-window evictions: 16 per window, at most SGLang's 128.
    Each running request's local pool share is one window plus this (see
    ``capacity.local_per_request``), so it is the pool's slack over the formula."""
    return max(1, min(128, window // 16))


def flag_given(flags: list[str], name: str) -> bool:
    return any(f == name or f.startswith(name + "=") for f in flags)


def flag_value(flags: list[str], name: str) -> str | None:
    """The value of ``--name V`` / ``--name=V`` (the last one wins, as in argparse)."""
    value = None
    for i, f in enumerate(flags):
        if f == name and i + 1 < len(flags):
            value = flags[i + 1]
        elif f.startswith(name + "="):
            value = f.split("=", 1)[1]
    return value


def flashinfer_env(plan: plans.Plan, flags: list[str]) -> dict[str, str]:
    """Keep flashinfer's prefill on its paged path for plans with local layers.

    SGLang 0.5.17's flashinfer backend runs an extend without a cached prefix through
    its ragged wrapper, planned (``layers/attention/flashinfer_backend.py:2115``) and
    called (:1344-1355) without ``window_left``: local layers would attend past the
    window inside a chunk. The paged path (``SGLANG_FLASHINFER_USE_PAGED=1``,
    :418, :959-963) plans ``window_left`` for the SWA wrapper (:1891-1933, :2186-2188)
    and reads a consumer's K/V from its producer's cache, written earlier in the same
    forward pass. Raises ValueError if the user turned the paged path off."""
    backends = {flag_value(flags, f) for f in
                ("--attention-backend", "--prefill-attention-backend")}
    if "flashinfer" not in backends or not plan.local_producers:
        return {}
    if os.environ.get("SGLANG_FLASHINFER_USE_PAGED", "").lower() in ("0", "false", "no"):
        raise ValueError(
            "flashinfer with local (sliding-window) layers needs SGLANG_FLASHINFER_USE_PAGED=1: "
            "SGLang 0.5.17's ragged prefill ignores the window; unset it or use "
            "--attention-backend triton"
        )
    return {"SGLANG_FLASHINFER_USE_PAGED": "1"}


def fast_prefill_settings(plan: plans.Plan, flags: list[str], on: bool,
                          gpu: bool) -> tuple[dict[str, str], list[str]]:
    """Fast prefill's switch for the server (environment, extra flags); on a GPU its
    one condition.

    SGLang 0.5.17 captures prefill in breakable CUDA graphs by default on CUDA, for
    every chunk up to ``--chunked-prefill-size`` tokens
    (``model_executor/cuda_graph_config.py:110-120``, ``server_args.py:4724-4729``), and
    replays the captured layer stack whole with the graph's own batch
    (``runner/prefill_cuda_graph_runner.py:1606-1659``, ``layers/radix_attention.py:169-277``):
    a batch inside a graph takes the full path. So on a GPU, with fast prefill on and
    layers to skip, serve turns prefill graphs off (``--disable-prefill-cuda-graph``;
    at thousands of tokens per chunk they save only kernel launches) unless the user
    chose a prefill graph setting. Decode graphs are untouched."""
    if not on:
        return {fast_prefill.ENV: "0"}, []
    if gpu and plan.tail and not any(flag_given(flags, f) for f in (
            "--disable-prefill-cuda-graph", "--cuda-graph-backend-prefill",
            "--cuda-graph-config", "--disable-cuda-graph")):
        return {}, ["--disable-prefill-cuda-graph"]
    return {}, []


def cpu_tp_env(flags: list[str]) -> dict[str, str]:
    """``--tp-size N`` on a CPU: one core set per rank (SGLang refuses tp > NUMA nodes
    unless ``SGLANG_CPU_OMP_THREADS_BIND`` gives each rank its cores, e.g. ``0|1``)."""
    tp = int(flag_value(flags, "--tp-size") or flag_value(flags, "--tp") or 1)
    if tp <= 1 or "SGLANG_CPU_OMP_THREADS_BIND" in os.environ:
        return {}
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < tp:
        raise ValueError(f"--tp-size {tp} on a CPU needs at least {tp} cores, this machine "
                         f"gives {len(cores)}")
    per = len(cores) // tp
    groups = [cores[r * per:(r + 1) * per] for r in range(tp)]
    return {"SGLANG_CPU_OMP_THREADS_BIND": "|".join(
        f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)}


def build_command(args: argparse.Namespace, sglang_flags: list[str]) -> tuple[list[str], dict, Path]:
    """The ``sglang.launch_server`` command line, its extra environment and model folder."""
    size = with_kv_heads(get_size(args.size), args.kv_heads)
    weights = args.weights == "random" or (args.weights == "auto" and size.name == "tiny")
    if args.model_path and (Path(args.model_path) / "config.json").exists() and args.plan is None:
        model_dir = Path(args.model_path)
        heads = json.loads((model_dir / "config.json").read_text()).get("num_key_value_heads")
        if args.kv_heads is not None and heads != args.kv_heads:
            raise ValueError(f"{model_dir} has {heads} KV heads; give --plan to write a model "
                             f"with --kv-heads {args.kv_heads} there")
    else:
        spec = args.plan or "ma"
        plans.resolve(spec, size.num_layers)  # validate before writing anything
        model_dir = Path(args.model_path) if args.model_path else default_model_dir(
            size.name, spec, args.seed, weights, args.kv_heads)
        write_model_folder(model_dir, size, spec, weights=weights, seed=args.seed,
                           window=args.window)
    cfg = json.loads((model_dir / "config.json").read_text())
    plan = plans.from_config(cfg)  # raises PlanError on a bad plan
    size = get_size(cfg.get("mixkv_size", size.name))
    gpu = has_gpu()

    flags = list(sglang_flags)
    defaults: dict[str, str | None] = dict(DEFAULTS.get(size.name, {}))
    if cfg.get("mixkv_weights") is None:
        defaults["--load-format"] = "dummy"
    # SGLang's "auto" dtype serves a float32 checkpoint in float16; keep the config's.
    defaults["--dtype"] = cfg.get("torch_dtype", "auto")
    if gpu:
        defaults["--attention-backend"] = "triton"
    else:
        # SGLang's scheduler busy-polls when idle; on a small CPU box that starves the
        # forward passes of whatever else runs (the harness, a second server).
        defaults.update({"--device": "cpu", "--attention-backend": "torch_native",
                         "--sleep-on-idle": None})
    defaults.update({"--host": args.host, "--port": str(args.port)})
    for name, value in defaults.items():
        if not flag_given(flags, name):
            flags += [name] if value is None else [name, value]

    env = flashinfer_env(plan, flags)
    fp_env, fp_flags = fast_prefill_settings(plan, flags, args.fast_prefill, gpu)
    env.update(fp_env)
    flags += fp_flags
    if not gpu:
        env.update(cpu_tp_env(flags))
    if not gpu and "OMP_NUM_THREADS" not in os.environ:
        # One intra-op thread: with two, any other busy process (the harness, a test)
        # stalls every parallel region of the forward pass (measured: ~19x slower).
        env["OMP_NUM_THREADS"] = "1"
    if "SGLANG_SWA_EVICTION_INTERVAL" not in os.environ:
        # Free out-of-window KV 16 times per window (SGLang's default: every 128 steps).
        window = int(cfg.get("sliding_window") or size.window)
        env["SGLANG_SWA_EVICTION_INTERVAL"] = str(eviction_interval(window))
    kv_budget = args.kv_budget
    if kv_budget is None and not gpu and not flag_given(flags, "--max-total-tokens"):
        kv_budget = CPU_KV_BUDGET  # else SGLang would size the pool from free RAM
    if kv_budget:
        env[KV_BUDGET_ENV] = str(parse_bytes(kv_budget))
    if getattr(args, "api_key", None):
        flags += ["--api-key", args.api_key]
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_dir), *flags]
    return cmd, env, model_dir


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m sglang_mixkv.serve",
        description="Serve a MixAttention model with SGLang. Unknown flags go to "
        "sglang.launch_server (see python -m sglang.launch_server --help).",
    )
    ap.add_argument("--plan", help="preset (%s) or plan string, e.g. LlLlLlLlLlLg; default ma"
                    % ", ".join(plans.PRESET_NAMES))
    ap.add_argument("--size", default=os.environ.get("MIXKV_SIZE", "tiny"), choices=list(SIZES),
                    help="model size (default: $MIXKV_SIZE or tiny)")
    ap.add_argument("--model-path", help="model folder; written here if it has no config.json")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--weights", choices=["auto", "random", "dummy"], default="auto",
                    help="auto: seeded random weights for tiny, --load-format dummy for paper")
    ap.add_argument("--window", type=int, help="sliding window in tokens (default: the size's)")
    ap.add_argument("--kv-heads", type=int, help="KV heads per layer (1 = MQA, the size's "
                    "query heads = MHA; default: the size's)")
    ap.add_argument("--kv-budget", help="cap the KV cache at this many bytes, e.g. 64MiB "
                    f"(default on a machine without a GPU: {CPU_KV_BUDGET})")
    ap.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                    help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                    f"and /metrics (SGLang's --api-key; default: ${API_KEY_ENV})")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--fast-prefill", action=argparse.BooleanOptionalAction, default=True,
                    help="run the consumer-only layers after the last producer on the rows "
                    "whose logits are read only (exact; default on; see README)")
    ap.add_argument("--dry-run", action="store_true", help="print the command and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    args, sglang_flags = parser().parse_known_args(argv)
    try:
        cmd, env, model_dir = build_command(args, sglang_flags)
    except plans.PlanError as e:
        print(f"error: invalid plan: {e}", file=sys.stderr)
        return 2
    except (ValueError, device.DeviceError) as e:  # e.g. a GPU torch cannot use
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sglang-mixkv: model folder {model_dir}", file=sys.stderr)
    print("sglang-mixkv: " + " ".join(f"{k}={v}" for k, v in env.items()) + " "
          + " ".join(redact_argv(cmd)),
          file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    os.execve(sys.executable, cmd, {**os.environ, **env})


if __name__ == "__main__":
    sys.exit(main())
