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

from sglang_mixkv import plan as plans
from sglang_mixkv.capacity import parse_bytes
from sglang_mixkv.sizes import SIZES, get_size, write_model_folder

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
    import torch

    return torch.cuda.is_available()


def default_model_dir(size: str, plan_spec: str, seed: int, weights: bool) -> Path:
    slug = plan_spec if plan_spec in plans.PRESETS else "plan-" + re.sub(r"[^A-Za-z0-9]", "", plan_spec)
    root = Path(os.environ.get("MIXKV_MODELS", REPO / "models"))
    return root / f"{size}-{slug}-{f'seed{seed}' if weights else 'dummy'}"


def eviction_interval(window: int) -> int:
    """Decode steps between out-of-window evictions: 8 per window, at most SGLang's 128."""
    return max(1, min(128, window // 8))


def _flag_given(flags: list[str], name: str) -> bool:
    return any(f == name or f.startswith(name + "=") for f in flags)


def build_command(args: argparse.Namespace, sglang_flags: list[str]) -> tuple[list[str], dict, Path]:
    """The ``sglang.launch_server`` command line, its extra environment and model folder."""
    size = get_size(args.size)
    weights = args.weights == "random" or (args.weights == "auto" and size.name == "tiny")
    if args.model_path and (Path(args.model_path) / "config.json").exists() and args.plan is None:
        model_dir = Path(args.model_path)
    else:
        spec = args.plan or "ma"
        plans.resolve(spec, size.num_layers)  # validate before writing anything
        model_dir = Path(args.model_path) if args.model_path else default_model_dir(
            size.name, spec, args.seed, weights)
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
    if plan.local_producers and not plan.global_producers:
        defaults["--disable-radix-cache"] = None  # see sglang_seams.pools.MixKVPoolConfigurator
    defaults.update({"--host": args.host, "--port": str(args.port)})
    for name, value in defaults.items():
        if not _flag_given(flags, name):
            flags += [name] if value is None else [name, value]

    env = {}
    if not gpu and "OMP_NUM_THREADS" not in os.environ:
        # One intra-op thread: with two, any other busy process (the harness, a test)
        # stalls every parallel region of the forward pass (measured: ~19x slower).
        env["OMP_NUM_THREADS"] = "1"
    if "SGLANG_SWA_EVICTION_INTERVAL" not in os.environ:
        # Free out-of-window KV at least 8 times per window (SGLang's default is 128).
        window = int(cfg.get("sliding_window") or size.window)
        env["SGLANG_SWA_EVICTION_INTERVAL"] = str(eviction_interval(window))
    kv_budget = args.kv_budget
    if kv_budget is None and not gpu and not _flag_given(flags, "--max-total-tokens"):
        kv_budget = CPU_KV_BUDGET  # else SGLang would size the pool from free RAM
    if kv_budget:
        env[KV_BUDGET_ENV] = str(parse_bytes(kv_budget))
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
    ap.add_argument("--kv-budget", help="cap the KV cache at this many bytes, e.g. 64MiB "
                    f"(default on a machine without a GPU: {CPU_KV_BUDGET})")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--dry-run", action="store_true", help="print the command and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    args, sglang_flags = parser().parse_known_args(argv)
    try:
        cmd, env, model_dir = build_command(args, sglang_flags)
    except plans.PlanError as e:
        print(f"error: invalid plan: {e}", file=sys.stderr)
        return 2
    print(f"sglang-mixkv: model folder {model_dir}", file=sys.stderr)
    print("sglang-mixkv: " + " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(cmd),
          file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    os.execve(sys.executable, cmd, {**os.environ, **env})


if __name__ == "__main__":
    sys.exit(main())
