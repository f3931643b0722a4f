"""KV memory arithmetic: bytes per token, request cost, what fits in a budget.

Everything here is the *formula* side of the capacity comparison (DESIGN.md section 3);
the server side is what SGLang actually allocated (``/server_info``), and the run side
is how many long requests the server held at once. :func:`pool_split` is also what
our pool configurator inside SGLang calls (see ``sglang_seams``), so the formula and
the allocation can only differ by what SGLang itself adds (page alignment, profiling).

Per token of context, per request (K and V, every KV-owning layer):

    global_bytes = 2 * kv_heads * head_dim * dtype_bytes * (#global producers)
    local_bytes  = 2 * kv_heads * head_dim * dtype_bytes * (#local producers)

and a request of T tokens costs ``T * global_bytes + min(T, W) * local_bytes``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from sglang_mixkv import plan as plans
from sglang_mixkv.sizes import SIZES, ModelSize, get_size, param_count, with_kv_heads

PAPER_INPUT, PAPER_OUTPUT = 31_000, 1_000
PAPER_REQUEST = PAPER_INPUT + PAPER_OUTPUT


@dataclass(frozen=True)
class KVDims:
    """Per-layer KV geometry (after tensor parallelism, if any)."""

    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2

    @classmethod
    def of(cls, size: ModelSize, dtype_bytes: int | None = None) -> "KVDims":
        return cls(size.kv_heads, size.head_dim, dtype_bytes or size.dtype_bytes)

    @property
    def layer_bytes(self) -> int:
        """K + V bytes of one token in one KV-owning layer."""
        return 2 * self.kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True)
class PerToken:
    global_bytes: int  # every token of context
    local_bytes: int  # only the last `window` tokens of each request


def bytes_per_token(plan: plans.Plan, dims: KVDims) -> PerToken:
    return PerToken(
        global_bytes=dims.layer_bytes * len(plan.global_producers),
        local_bytes=dims.layer_bytes * len(plan.local_producers),
    )


def request_bytes(plan: plans.Plan, dims: KVDims, window: int, tokens: int) -> int:
    """KV bytes a request of ``tokens`` tokens holds (no page or chunk slack)."""
    pt = bytes_per_token(plan, dims)
    return tokens * pt.global_bytes + min(tokens, window) * pt.local_bytes


def max_concurrent(budget: int, plan: plans.Plan, dims: KVDims, window: int, tokens: int) -> int:
    """Requests of ``tokens`` tokens that fit in ``budget`` bytes at once."""
    return budget // request_bytes(plan, dims, window, tokens)


def max_tokens(budget: int, plan: plans.Plan, dims: KVDims, window: int,
               tokens: int = PAPER_REQUEST) -> int:
    """Tokens of context ``budget`` holds when filled with requests of ``tokens`` tokens.

    For a plan without local layers this is ``budget // global_bytes`` whatever the
    request length (the usual "max total tokens"); local layers cost only their window
    per request, so their share per token shrinks as requests get longer."""
    return budget * tokens // request_bytes(plan, dims, window, tokens)


# ---- the seed formulas (MHA and its sharing variants) -------------------------------
def seed_kv_bytes(batch: int, layers: int, hidden: int, seq: int, *, gqa_group: int = 1,
                  cla_factor: int = 1, yoco_layers: int | None = None) -> float:
    """``4*B*L*H*N`` bytes (fp16 K and V), divided by the GQA group (query heads per
    KV head) and the CLA factor (layers per KV), times Y/N for YOCO (Y of the N layers
    own KV)."""
    b = 4 * batch * layers * hidden * seq / gqa_group / cla_factor
    return b * (yoco_layers / layers) if yoco_layers is not None else b


# ---- what our pool configurator allocates inside SGLang ---------------------------------
@dataclass(frozen=True)
class PoolSplit:
    global_tokens: int  # token slots in the global (full) pool
    local_tokens: int  # token slots in the local (SWA) pool
    global_bytes: int
    local_bytes: int


def local_per_request(window: int, page: int = 1, eviction_interval: int = 128,
                      tokens: int | None = None) -> int:
    """Local-pool slots one running request pins at most: the window it decodes in,
    the tokens decoded between two out-of-window evictions, one page to align the
    eviction point and one for the next decode step. A request of ``tokens`` tokens
    that never leaves its window holds only its tokens and a page.

    One window, with the radix cache on too: our SWA radix cache
    (``sglang_seams.radix``) releases the cached prompt's local KV as it leaves the
    request's window, so prompt tail + decoded tokens stay within one window."""
    per_request = window + eviction_interval + 2 * page
    return per_request if tokens is None else min(per_request, tokens + page)


def local_pool_cap(window: int, max_running: int, chunk: int, page: int = 1,
                   eviction_interval: int = 128, chunks_in_flight: int = 2) -> int:
    """Token slots the local pool needs so ``max_running`` requests never run short:
    :func:`local_per_request` each, plus the prefill chunks in flight (two with the
    overlap scheduler) and a page: one window each with the radix cache on or off."""
    cap = (local_per_request(window, page, eviction_interval) * max_running
           + chunks_in_flight * chunk + page)
    return -(-cap // page) * page


def pool_split(budget: int, plan: plans.Plan, dims: KVDims, *, window: int, max_running: int,
               chunk: int, page: int = 1, eviction_interval: int = 128,
               chunks_in_flight: int = 2) -> PoolSplit:
    """Split a KV byte budget between the global and local pools.

    The local pool is bounded by the window (``local_pool_cap``); the rest of the
    budget goes to the global pool. Plans without local producers keep a local pool
    as large as the global one at zero bytes (SGLang's allocator pairs every global
    slot with a local one); plans without global producers give the budget to the
    local pool, the only pool with bytes (``global_tokens`` 0 here; the server adds a
    zero-byte global pool of token ids, see ``sglang_seams.pools``)."""
    pt = bytes_per_token(plan, dims)
    if pt.local_bytes == 0:
        g = budget // pt.global_bytes // page * page
        return PoolSplit(g, g, g * pt.global_bytes, 0)
    if pt.global_bytes == 0:
        s = budget // pt.local_bytes // page * page
        return PoolSplit(0, s, 0, s * pt.local_bytes)
    s = local_pool_cap(window, max_running, chunk, page, eviction_interval, chunks_in_flight)
    g = (budget - s * pt.local_bytes) // pt.global_bytes // page * page
    if g <= 0:
        raise ValueError(
            f"the local pool for {max_running} running requests ({s} tokens, "
            f"{s * pt.local_bytes / 2**30:.2f} GiB) leaves no room for the global pool in "
            f"{budget / 2**30:.2f} GiB; lower --max-running-requests or raise the memory fraction"
        )
    return PoolSplit(g, s, g * pt.global_bytes, s * pt.local_bytes)


def pool_max_requests(split: PoolSplit, plan: plans.Plan, tokens: int, *, window: int,
                      chunk: int, page: int = 1, eviction_interval: int = 128,
                      chunks_in_flight: int = 2) -> int:
    """Requests of ``tokens`` tokens that the pools of ``split`` hold at once: the
    global pool's share (``tokens`` slots each), and the local pool's, after the
    prefill chunks in flight, at :func:`local_per_request` each. For a plan with both
    kinds the local pool was sized for ``max_running`` requests, so this is at most
    that; the running-request cap itself is not applied here."""
    held = []
    if plan.global_producers:
        held.append(split.global_tokens // tokens)
    if plan.local_producers:
        free = split.local_tokens - chunks_in_flight * chunk - page
        held.append(max(0, free) // local_per_request(window, page, eviction_interval, tokens))
    return min(held)


# ---- CLI ---------------------------------------------------------------------------
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot read a byte size from {text!r} (e.g. 80GiB, 80GB, 1e9)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def kv_budget(gpu_mem: int, mem_fraction: float, weight_bytes: int) -> int:
    """KV bytes left on one GPU: the static fraction minus the weights."""
    return int(gpu_mem * mem_fraction) - weight_bytes


def serve_sizing(size: ModelSize, window: int) -> dict:
    """The pool-sizing flags ``python -m sglang_mixkv.serve`` gives SGLang for ``size``
    (chunk size, eviction interval; page 1, overlap scheduler: two chunks in flight)."""
    from sglang_mixkv.serve import DEFAULTS, eviction_interval  # serve imports this module

    d = DEFAULTS.get(size.name, DEFAULTS["paper"])
    return dict(window=window, chunk=int(d["--chunked-prefill-size"]), page=1,
                eviction_interval=eviction_interval(window), chunks_in_flight=2)


def capacity_rows(plan_specs: list[str], size: ModelSize, gpu_mem: int, mem_fraction: float,
                  request_tokens: int = PAPER_REQUEST, window: int | None = None,
                  max_running: int | None = None) -> list[dict]:
    """One row per plan: the formula at the KV budget left after the plan's weights,
    and the pools our configurator would allocate there for ``max_running`` running
    requests (default: the formula's request count) and what they hold.

    Raises ValueError when the budget cannot hold the weights, or the local pool for
    ``max_running`` requests leaves no room for the global pool."""
    window = window or size.window
    dims = KVDims.of(size)
    sizing = serve_sizing(size, window)
    rows = []
    for spec in plan_specs:
        p = plans.resolve(spec, size.num_layers)
        weights = param_count(size, p) * size.dtype_bytes
        budget = kv_budget(gpu_mem, mem_fraction, weights)
        if budget <= 0:
            raise ValueError(
                f"plan {spec}: {gpu_mem / 2**30:.2f} GiB x {mem_fraction} = "
                f"{gpu_mem * mem_fraction / 2**30:.2f} GiB cannot hold the {size.name} model's "
                f"weights ({weights / 2**30:.2f} GiB) and leaves no KV budget; raise --gpu-mem "
                "or --mem-fraction, or pick a smaller --model"
            )
        pt = bytes_per_token(p, dims)
        n = max_concurrent(budget, p, dims, window, request_tokens)
        running = n if max_running is None else max_running
        split = pool_split(budget, p, dims, max_running=running, **sizing)
        rows.append({
            "plan": spec,
            "layout": p.pretty(),
            "layers": len(p),
            "kv_heads": size.kv_heads,
            "global_producers": len(p.global_producers),
            "local_producers": len(p.local_producers),
            "global_bytes_per_token": pt.global_bytes,
            "local_bytes_per_token": pt.local_bytes,
            "request_tokens": request_tokens,
            "request_bytes": request_bytes(p, dims, window, request_tokens),
            "weight_bytes": weights,
            "kv_budget_bytes": budget,
            "max_tokens": max_tokens(budget, p, dims, window, request_tokens),
            "max_concurrent_31k": n,
            "max_running": running,
            "pool_global_tokens": split.global_tokens if p.global_producers else 0,
            "pool_local_tokens": split.local_tokens if p.local_producers else 0,
            "pool_max_requests": pool_max_requests(
                split, p, request_tokens, **sizing),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sglang_mixkv.capacity",
        description="KV capacity of layer plans on one GPU: the formula, and the pools our "
        "server would allocate. The KV budget is gpu-mem x mem-fraction minus the model's "
        "weights.",
    )
    ap.add_argument("--plans", default="all", help="'all' or comma-separated presets / plan strings")
    ap.add_argument("--gpu-mem", default="80GiB", help="GPU memory, e.g. 80GiB (H100)")
    ap.add_argument("--mem-fraction", type=float, default=0.85,
                    help="static memory fraction for weights + KV (SGLang's --mem-fraction-static)")
    ap.add_argument("--model", default="paper", choices=list(SIZES))
    ap.add_argument("--kv-heads", type=int, default=None,
                    help="KV heads per layer (1 = MQA, the model's heads = MHA; default: the size's)")
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--request-tokens", type=int, default=PAPER_REQUEST,
                    help="tokens per request (default 31K in + 1K out)")
    ap.add_argument("--max-running", type=int, default=None,
                    help="running requests the local pool is sized for (serve's "
                    "--max-running-requests; default: the formula's request count per plan)")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    ap.add_argument("--csv", help="also write the table as CSV here")
    ap.add_argument("--png", help="also write a bar chart of max_tokens here")
    a = ap.parse_args(argv)
    specs = list(plans.PRESET_NAMES) if a.plans == "all" else [s.strip() for s in a.plans.split(",")]
    try:
        size = with_kv_heads(get_size(a.model), a.kv_heads)
        rows = capacity_rows(specs, size, parse_bytes(a.gpu_mem), a.mem_fraction,
                             a.request_tokens, a.window, a.max_running)
    except (plans.PlanError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import pandas as pd

    df = pd.DataFrame(rows)
    if a.csv:
        Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(a.csv, index=False)
    if a.png:
        plot_max_tokens(df, a.png, f"{size.name} size, {a.gpu_mem} x {a.mem_fraction}")
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        shown = df.drop(columns=["request_tokens", "request_bytes", "weight_bytes"])
        print(shown.to_markdown(index=False, intfmt=","))
        print(f"\nmodel {size.name}: {json.dumps(asdict(size))}")
    return 0


def plot_max_tokens(df, path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(df["plan"], df["max_tokens"] / 1e6)
    ax.set_ylabel("max tokens (millions)")
    ax.set_title(f"KV capacity per plan ({title})")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
