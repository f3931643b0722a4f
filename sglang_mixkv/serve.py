"""``python -m sglang_mixkv.serve``: write the model folder if needed, then run SGLang.

    python -m sglang_mixkv.serve --plan ma-offset --size paper [--port 30000] [sglang flags]
    python -m sglang_mixkv.serve --model-path /path/to/gemma-4-E2B-it [sglang flags]

A Gemma 3n / Gemma 4 folder is served as it is (SGLang's own model classes, our pools:
its plan comes from its config).

Everything this command does not know is passed to ``sglang.launch_server`` as is, so
every SGLang server flag works. It adds only defaults a MixAttention server needs:
``--max-running-requests`` (the local KV pool is sized for it), a chunk size, and on a
machine without a GPU ``--device cpu --attention-backend torch_native``. The process
execs SGLang, so signals (Ctrl-C, ``docker stop``) reach the server directly.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import sys
from pathlib import Path

from sglang_mixkv import device, gemma, served
from sglang_mixkv import plan as plans
from sglang_mixkv.adakv import RULES, AdaKVConfig, AdaKVError
from sglang_mixkv.defaults import (ADMIN_API_KEY_ENV, API_KEY_ENV, CPU_KV_BUDGET, KV_BUDGET_ENV,
                                   MODELS_ENV, REDACTED, SECRET_FLAGS, SERVE_DEFAULTS, SIZE_ENV,
                                   eviction_interval, parse_bytes)
from sglang_mixkv.model_folder import SIZES, get_size, with_kv_heads, write_model_folder
from sglang_mixkv.sglang_seams import launch

REPO = Path(__file__).resolve().parent.parent


def has_gpu() -> bool:
    """True on a GPU host; raises device.DeviceError rather than fall back to the CPU
    when nvidia-smi sees a GPU that torch cannot use (see :mod:`sglang_mixkv.device`)."""
    return device.resolve() == "gpu"


def default_model_dir(size: str, plan_spec: str, seed: int, weights: bool,
                      kv_heads: int | None = None, window: int | None = None) -> Path:
    """``models/<size>-<plan>[-kvH][-wW]-<seed or dummy>``: one folder per config, so
    servers of other shapes never rewrite each other's folder."""
    slug = plan_spec if plan_spec in plans.PRESETS else "plan-" + re.sub(r"[^A-Za-z0-9]", "", plan_spec)
    if kv_heads is not None:
        slug += f"-kv{kv_heads}"
    if window is not None:
        slug += f"-w{window}"
    root = Path(os.environ.get(MODELS_ENV, REPO / "models"))
    return root / f"{size}-{slug}-{f'seed{seed}' if weights else 'dummy'}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def key_env(args: argparse.Namespace, sglang_flags: list[str]) -> dict[str, str]:
    """The keys for the server's environment, where our plugin reads them
    (``sglang_seams/patches/admin_auth.py``); never its command line, where every
    process listing shows them. Raises ValueError for a key flag aimed at SGLang
    directly, and for an unauthenticated server on an address other machines reach."""
    for flag in SECRET_FLAGS:
        if launch.flag_given(sglang_flags, flag):  # pragma: no cover - argparse takes ours first
            raise ValueError(f"{flag}: pass it to serve (or in the environment), not to SGLang")
    env = {}
    if args.api_key:
        env[API_KEY_ENV] = args.api_key
    if args.admin_api_key:
        env[ADMIN_API_KEY_ENV] = args.admin_api_key
    if not env and not is_loopback(args.host) and not args.allow_unauthenticated:
        raise ValueError(
            f"refusing to listen on {args.host} without an API key: anyone who reaches it could "
            f"send requests and pause or reconfigure the server. Set {API_KEY_ENV} (and "
            f"{ADMIN_API_KEY_ENV} for the admin routes), or pass --allow-unauthenticated")
    return env


def adakv_config(args: argparse.Namespace, plan: plans.Plan, cfg: dict) -> AdaKVConfig | None:
    """Ada-KV's settings from the flags, checked against the plan (AdaKVError)."""
    if args.adakv_budget is None:
        return None
    ada = AdaKVConfig(budget=args.adakv_budget, window=args.adakv_window, alpha=args.adakv_alpha,
                      kernel=args.adakv_kernel, scoring=args.adakv_scoring,
                      rule=args.adakv_rule, sink=args.adakv_sink, seed=args.adakv_seed)
    ada.check(plan, int(cfg.get("sliding_window") or 0) if plan.local_producers else None)
    return ada


def build_command(args: argparse.Namespace, sglang_flags: list[str]) -> tuple[list[str], dict, Path]:
    """The ``sglang.launch_server`` command line, its extra environment and model folder."""
    keys = key_env(args, sglang_flags)
    size = with_kv_heads(get_size(args.size), args.kv_heads)
    weights = args.weights == "random" or (args.weights == "auto" and size.name == "tiny")
    existing = Path(args.model_path) / "config.json" if args.model_path else None
    if existing is not None and existing.exists() and gemma.family(json.loads(existing.read_text())):
        if json.loads(existing.read_text()).get("model_type") in gemma.WRAPPER_TYPES:
            raise ValueError(
                f"{args.model_path} is a multimodal Gemma checkpoint; serve its text model "
                f"(SGLang's {'/'.join(gemma.TEXT_CLASSES.values())}, verified against "
                f"transformers): python -m sglang_mixkv.gemma {args.model_path} TEXT_DIR, then "
                "--model-path TEXT_DIR")
        if args.plan is not None or args.adakv_budget is not None:
            raise ValueError(f"{args.model_path} is a Gemma 3n/4 folder: its plan comes from its "
                             "config (layer_types, num_kv_shared_layers); --plan and Ada-KV "
                             "(built into MixAttention folders only) do not apply")
    if existing is not None and existing.exists() and args.plan is None:
        model_dir = Path(args.model_path)
        heads = json.loads((model_dir / "config.json").read_text()).get("num_key_value_heads")
        if args.kv_heads is not None and heads != args.kv_heads:
            raise ValueError(f"{model_dir} has {heads} KV heads; give --plan to write a model "
                             f"with --kv-heads {args.kv_heads} there")
    else:
        spec = args.plan or "ma"
        plans.resolve(spec, size.num_layers)  # validate before writing anything
        model_dir = Path(args.model_path) if args.model_path else default_model_dir(
            size.name, spec, args.seed, weights, args.kv_heads, args.window)
        write_model_folder(model_dir, size, spec, weights=weights, seed=args.seed,
                           window=args.window)
    cfg = json.loads((model_dir / "config.json").read_text())
    plan = served.plan_for(cfg)  # raises PlanError on a bad plan
    if plan is None:
        raise ValueError(f"{model_dir}/config.json is neither a MixAttention folder (mixkv_plan) "
                         f"nor a Gemma 3n / Gemma 4 model (model_type {cfg.get('model_type')!r})")
    family = gemma.family(cfg)
    planned = device.known_gpu(args.gpu) if args.gpu else None
    gpu = planned is not None or has_gpu()
    size = get_size(cfg.get("mixkv_size", "paper" if family and gpu else size.name))

    flags = list(sglang_flags)
    defaults: dict[str, str | None] = dict(SERVE_DEFAULTS.get(size.name, {}))
    if cfg.get("mixkv_weights") is None and family is None:
        defaults["--load-format"] = "dummy"
    # SGLang's "auto" dtype serves a float32 checkpoint in float16; keep the config's.
    defaults["--dtype"] = cfg.get("torch_dtype") or cfg.get("dtype") or "auto"
    defaults.update(launch.device_defaults(gpu))
    extra_env = {}
    if family is not None:
        gemma_defaults, extra_env = launch.gemma_defaults(family, gpu, flags)
        defaults.update(gemma_defaults)
    defaults.update({"--host": args.host, "--port": str(args.port)})
    for name, value in defaults.items():
        if not launch.flag_given(flags, name):
            flags += [name] if value is None else [name, value]

    if gpu:
        facts = planned or device.this_gpu()
        context = int(cfg.get("max_position_embeddings") or 0) or size.max_position
        flags = launch.triton_split_flags(flags, facts.sm_count, context)
    env = {**launch.flashinfer_env(plan, flags), **extra_env}
    flags = launch.fast_prefill_flags(plan, flags, args.fast_prefill, gpu)
    ada = adakv_config(args, plan, cfg)
    flags = launch.adakv_flags(ada, flags, gpu)
    if not gpu:
        env.update(launch.cpu_tp_env(flags))
        env.update(launch.cpu_paged_env(flags))
    if not gpu and "OMP_NUM_THREADS" not in os.environ:
        # One intra-op thread: with two, any other busy process (the harness, a test)
        # stalls every parallel region of the forward pass (measured: ~19x slower).
        env["OMP_NUM_THREADS"] = "1"
    if "SGLANG_SWA_EVICTION_INTERVAL" not in os.environ:
        # Free out-of-window KV 16 times per window (SGLang's default: every 128 steps).
        window = int(gemma.window(cfg) or cfg.get("sliding_window") or size.window)
        env["SGLANG_SWA_EVICTION_INTERVAL"] = str(eviction_interval(window))
    kv_budget = args.kv_budget
    if kv_budget is None and not gpu and not launch.flag_given(flags, "--max-total-tokens"):
        kv_budget = CPU_KV_BUDGET  # else SGLang would size the pool from free RAM
    if kv_budget:
        env[KV_BUDGET_ENV] = str(parse_bytes(kv_budget))
    env.update(keys)
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
    ap.add_argument("--size", default=os.environ.get(SIZE_ENV, "tiny"), choices=list(SIZES),
                    help="model size (default: $MIXKV_SIZE or tiny)")
    ap.add_argument("--model-path", help="model folder (ours, or a Gemma 3n / 4 checkpoint "
                    "served as it is); ours is written here if it has no config.json")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--weights", choices=["auto", "random", "dummy"], default="auto",
                    help="auto: seeded random weights for tiny, --load-format dummy for paper")
    ap.add_argument("--window", type=int, help="sliding window in tokens (default: the size's)")
    ap.add_argument("--kv-heads", type=int, help="KV heads per layer (1 = MQA, the size's "
                    "query heads = MHA; default: the size's)")
    ap.add_argument("--kv-budget", type=_byte_size,
                    help="cap the KV cache at this many bytes, e.g. 64MiB "
                    f"(default on a machine without a GPU: {CPU_KV_BUDGET})")
    ap.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                    help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                    f"and /metrics (default: ${API_KEY_ENV}, the safer way: a flag shows in "
                    "process listings until serve starts SGLang); it does not open the admin "
                    "routes")
    ap.add_argument("--admin-api-key", default=os.environ.get(ADMIN_API_KEY_ENV) or None,
                    help="the only key that opens SGLang's admin routes (/flush_cache, "
                    f"/pause_generation, weight updates, ...; default: ${ADMIN_API_KEY_ENV}); "
                    "without it they answer 403 on a server with an API key")
    ap.add_argument("--allow-unauthenticated", action="store_true",
                    help="serve without any key on an address other machines can reach "
                    "(refused otherwise)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--fast-prefill", action=argparse.BooleanOptionalAction, default=True,
                    help="run the consumer-only layers after the last producer on the rows "
                    "whose logits are read only (exact; default on; see README)")
    ada = ap.add_argument_group("Ada-KV (head-adaptive KV budgets for the global producers)")
    ada.add_argument("--adakv-budget", type=int, help="average prompt tokens each KV head of "
                     "a global producer keeps (observation window included); prompts of at "
                     "least this many tokens are compressed after their prefill")
    ada.add_argument("--adakv-window", type=int, default=32,
                     help="observation window: the last prompt queries that score (32)")
    ada.add_argument("--adakv-alpha", type=float, default=0.2,
                     help="each head's floor share of the budget (0.2; 1 = SnapKV's uniform)")
    ada.add_argument("--adakv-kernel", type=int, default=7, help="max-pooling width (odd, 7)")
    ada.add_argument("--adakv-scoring", choices=["producer", "readers"], default="producer",
                     help="whose queries score a shared KV head: the producer's (AdaKV's "
                     "per-layer rule) or every layer that reads it")
    ada.add_argument("--adakv-rule", choices=list(RULES), default="adakv",
                     help="what chooses each head's kept tokens: Ada-KV's scores (default), "
                     "or a baseline under the same per-head budget: the first --adakv-sink "
                     "tokens plus the most recent (recent, StreamingLLM) or a seeded random "
                     "choice (random)")
    ada.add_argument("--adakv-sink", type=int, default=4,
                     help="recent: the first prompt tokens every head keeps (4)")
    ada.add_argument("--adakv-seed", type=int, default=0, help="random: the draw's seed (0)")
    ap.add_argument("--dry-run", action="store_true", help="print the command and exit")
    ap.add_argument("--gpu", metavar="NAME", help="with --dry-run: plan for this GPU (%s) on a "
                    "machine without it: the command serve would run there (backend, decode "
                    "split count, graph flags) and the pools SGLang would get"
                    % ", ".join(device.KNOWN_GPUS))
    return ap


def pool_plan(cmd: list[str], env: dict, model_dir: Path, gpu: str) -> str:
    """The pools a server of ``cmd`` would get on ``gpu`` (``serve --dry-run --gpu``)."""
    from sglang_mixkv.model_folder import param_count
    from sglang_mixkv.sglang_seams.mixkv.pools import plan_pools

    cfg = json.loads((model_dir / "config.json").read_text())
    size = get_size(cfg.get("mixkv_size", "paper"))
    dtype_bytes = {"float32": 4}.get(cfg.get("torch_dtype") or cfg.get("dtype"), 2)
    weights = param_count(size, served.plan_for(cfg)) * dtype_bytes
    flags = cmd[cmd.index("--model-path") + 2:]
    facts = device.known_gpu(gpu)
    return f"{facts.name} ({facts.memory_mib:,} MiB): " + plan_pools(
        model_dir, flags, facts, weights, env).describe()


def _byte_size(text: str) -> str:
    """argparse type: a size :func:`parse_bytes` reads (checked before anything is
    written), kept as the user wrote it."""
    try:
        parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def main(argv: list[str] | None = None) -> int:
    args, sglang_flags = parser().parse_known_args(argv)
    if args.gpu and not args.dry_run:
        print("error: --gpu plans for a GPU this machine may not have: use it with --dry-run",
              file=sys.stderr)
        return 2
    try:
        cmd, env, model_dir = build_command(args, sglang_flags)
    except plans.PlanError as e:
        print(f"error: invalid plan: {e}", file=sys.stderr)
        return 2
    except AdaKVError as e:
        print(f"error: invalid Ada-KV setting: {e}", file=sys.stderr)
        return 2
    except (ValueError, device.DeviceError) as e:  # e.g. a GPU torch cannot use
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sglang-mixkv: model folder {model_dir}", file=sys.stderr)
    shown = {k: REDACTED if k in (API_KEY_ENV, ADMIN_API_KEY_ENV) else v for k, v in env.items()}
    print("sglang-mixkv: " + " ".join(f"{k}={v}" for k, v in shown.items()) + " " + " ".join(cmd),
          file=sys.stderr, flush=True)
    if args.dry_run:
        if args.gpu and served.plan_for(json.loads((model_dir / "config.json").read_text())):
            print("sglang-mixkv: pools: " + pool_plan(cmd, env, model_dir, args.gpu),
                  file=sys.stderr)
        return 0
    os.execve(sys.executable, cmd, {**os.environ, **env})


if __name__ == "__main__":
    sys.exit(main())
