"""What the hardware allows: a roofline lower bound per layer plan, workload and level.

    python -m sglang_mixkv.roofline --gpu H100 --plans all [--model paper] [--workload paper] [--json]

For one concurrency level of a closed-loop workload (``N`` prompts of ``I`` tokens, ``O``
output tokens each, at most ``C`` in flight) the run cannot be shorter than

    prefill phase   every prompt's prefill FLOPs / FLOP/s  (or its bytes / bandwidth)
  + decode phase    N * (O - 1) / R decode steps, each max(FLOPs / FLOP/s, bytes / bandwidth)

where ``R = min(C, N, --max-running-requests, requests the KV pools hold)`` is the
batch the server can run. The pools are split exactly as our server splits them
(:func:`sglang_mixkv.kv_math.pool_split`), so a capacity-bound ``standard`` queues here
as it does on the server. Prefill and decode do not overlap (SGLang runs a prefill batch
instead of a decode step; no mixed chunks), so their times add.

What is counted (invariants the tests pin with hand-computed numbers):

* **Prefill FLOPs** (2 per multiply-add): per token and layer the Q and O projections and
  the MLP; K and V projections only in producers (consumers have none); attention
  ``4 * heads * head_dim`` per query and key, each query attending its causal span (every
  earlier token for a global layer, the last ``W`` for a local one); the LM head for the
  one row per prompt whose logits are read. Norms, RoPE, softmax and the embedding gather
  are left out (they are O(hidden) per token).
* **Prefill bytes**: the weights once per chunk forward (``ceil(N * I / chunk)`` forwards
  for the level), K/V written by producers, and per chunk every attending layer's read of
  its producer's K/V over the chunk's span.
* **Decode bytes per step**: the weights once (the embedding table is gathered, not
  streamed: ``R`` rows of it), plus per running request what every attending layer reads
  from its producer's K/V (context for global layers, ``min(context, W)`` for local ones)
  and the new token's K/V each producer writes. **A consumer re-reads what its producer
  read**: each layer's attention kernel streams the K/V from memory again (SGLang's
  kernels share nothing across layers, and at this scale the K/V of a batch does not fit
  in any cache); ``consumer_rereads=False`` models a kernel that reads each producer's
  K/V once per step.
* **Decode FLOPs per step**: the same linear layers and LM head for one row per request,
  attention over each layer's span.
* Averages over a request's decode steps (contexts ``I+1 .. I+O-1``) are exact: costs are
  affine in the spans.

Output per level: predicted duration, output tok/s, TTFT and TPOT lower bounds (one
prompt's prefill alone; one decode step at batch ``R``), the speed-up over ``standard``
at the same level, and the bounding resource of each phase (``compute``/``memory``) and
of the batch (``level``, ``prompts``, ``max-running``, ``kv-pool``).

Fast prefill (YOCO-style: layers after the last producer run only on the rows whose
logits are read) is one switch, :attr:`Options.fast_prefill`: those tail layers then
count one row per prompt and attend from that row only.

Hardware: the spec-sheet peaks of H100 SXM, H200 and A100 80GB (``--flops-fraction`` /
``--bw-fraction`` scale them to what kernels achieve), or ``--gpu this``: a short
micro-benchmark (a large matmul in the model's dtype, a copy the size of the model's
weights) on the machine it runs on, with the torch thread count our CPU server uses.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from mixkv_bench import variants
from sglang_mixkv import kv_math as cap
from sglang_mixkv import plan as plans
from sglang_mixkv.defaults import serve_default
from sglang_mixkv.model_folder import ModelSize, param_count

GLOBAL, LOCAL = plans.GLOBAL, plans.LOCAL


# ---- hardware ------------------------------------------------------------------------
@dataclass(frozen=True)
class Hardware:
    """Peak dense FLOP/s (model dtype), memory bandwidth and memory of one device, and
    the fractions of the peaks a run is assumed to reach (1.0: a strict lower bound)."""

    name: str
    flops: float
    bandwidth: float  # bytes/s
    memory: int  # bytes
    flops_fraction: float = 1.0
    bw_fraction: float = 1.0
    source: str = "spec sheet"

    @property
    def eff_flops(self) -> float:
        return self.flops * self.flops_fraction

    @property
    def eff_bandwidth(self) -> float:
        return self.bandwidth * self.bw_fraction

    def achieving(self, flops_fraction: float, bw_fraction: float) -> "Hardware":
        return replace(self, flops_fraction=flops_fraction, bw_fraction=bw_fraction)

    def describe(self) -> str:
        frac = ("" if self.flops_fraction == self.bw_fraction == 1 else
                f" at {self.flops_fraction:.0%} of FLOP/s and {self.bw_fraction:.0%} of bandwidth")
        return (f"{self.name}: {self.flops / 1e12:.4g} TFLOP/s, {self.bandwidth / 1e9:.4g} GB/s, "
                f"{self.memory / 2**30:.4g} GiB ({self.source}){frac}")


GPUS: dict[str, Hardware] = {
    # Dense (no sparsity) BF16 tensor-core peaks and HBM bandwidth from NVIDIA's data
    # sheets. Memory as nvidia-smi reports it (H100 and A100: 80 GiB, as `sglang_mixkv.capacity`'s
    # default; H200: 143771 MiB, sold as "141 GB").
    "H100": Hardware("H100 SXM", 989e12, 3.35e12, 80 * 2**30,
                     source="data sheet: 989 TFLOPS dense BF16, 3.35 TB/s"),
    "H200": Hardware("H200 SXM", 989e12, 4.8e12, 143_771 * 2**20,
                     source="data sheet: 989 TFLOPS dense BF16, 4.8 TB/s"),
    "A100": Hardware("A100 80GB SXM", 312e12, 2.039e12, 80 * 2**30,
                     source="data sheet: 312 TFLOPS dense BF16, 2.039 TB/s"),
}
#: What a run on an H100 is taken to reach (docs/design.md §10) (~60% of peak FLOP/s, ~3.0 of
#: 3.35 TB/s): the fractions of the README's projection and of ``make bench``'s estimate.
ACHIEVABLE = (0.6, 0.9)


def gpu(name: str) -> Hardware:
    for key, hw in GPUS.items():
        if name.upper().replace(" ", "").startswith(key):
            return hw
    raise ValueError(f"unknown GPU {name!r}; built in: {', '.join(GPUS)}, or 'this'")


def server_threads() -> int:
    """Torch threads our server uses on a CPU (serve sets OMP_NUM_THREADS=1 unless given)."""
    return int(os.environ.get("OMP_NUM_THREADS") or 1)


def measure_this(dtype: str = "float32", working_set: int = 64 << 20, threads: int | None = None,
                 seconds: float = 0.6) -> Hardware:
    """Micro-benchmark the device torch would run the model on (CUDA if present).

    FLOP/s: best of repeated square matmuls (n = 8192 on a GPU, 1024 on a CPU) in
    ``dtype``. Bandwidth: best of repeated copies of ``working_set`` bytes (a copy moves
    twice its size); pass the bytes a decode step streams (the weights), so a small model
    whose weights sit in a CPU cache is bounded by the cache's bandwidth, not DRAM's.
    On a CPU, ``threads`` torch threads (default: :func:`server_threads`)."""
    import torch

    from harness.sysinfo import cpu_model

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    dt = getattr(torch, dtype)
    old_threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(threads or server_threads())
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def best(fn, budget: float) -> float:
        fn()
        sync()  # warm-up
        times, end = [], time.perf_counter() + budget
        while time.perf_counter() < end or len(times) < 3:
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
        return min(times)

    try:
        n = 8192 if cuda else 1024
        a, b = torch.randn(n, n, device=dev).to(dt), torch.randn(n, n, device=dev).to(dt)
        flops = 2 * n**3 / best(lambda: a @ b, seconds / 2)
        elems = max(1 << 16, working_set // 4)
        src, dst = torch.ones(elems, device=dev), torch.empty(elems, device=dev)
        bandwidth = 2 * src.numel() * 4 / best(lambda: dst.copy_(src), seconds / 2)
        if cuda:
            name = torch.cuda.get_device_name(0)
            memory = torch.cuda.get_device_properties(0).total_memory
            how = f"measured: {n}^3 {dtype} matmul, {working_set >> 20} MiB copy"
        else:
            name = f"{cpu_model()} (CPU)"
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            how = (f"measured: {n}^3 {dtype} matmul, {max(1, working_set >> 20)} MiB copy, "
                   f"{torch.get_num_threads()} torch thread(s)")
    finally:
        torch.set_num_threads(old_threads)
    return Hardware(name, flops, bandwidth, int(memory), source=how)


# ---- workload and server settings ------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """A closed-loop sweep: ``num_prompts`` requests of ``input_len`` prompt tokens and
    ``output_len`` output tokens, all due at once, at most ``level`` in flight."""

    num_prompts: int
    input_len: int
    output_len: int
    concurrency: tuple[int, ...]


WORKLOADS: dict[str, Workload] = {
    # The MixAttention paper's serving test (docs/design.md §1).
    "paper": Workload(300, cap.PAPER_INPUT, cap.PAPER_OUTPUT, (1, 8, 32, 64, 128, 300)),
}


@dataclass(frozen=True)
class Serving:
    """The server's KV budget and the flags that size its pools (see ``kv_math.pool_split``)."""

    kv_budget: int  # bytes
    max_running: int
    chunk: int  # --chunked-prefill-size
    eviction_interval: int
    page: int = 1
    chunks_in_flight: int = 2


@dataclass(frozen=True)
class Options:
    """Modelling switches. ``fast_prefill``: layers after the last producer run only on
    the row of each prompt whose logits are read (YOCO; our server's default, ``serve
    --no-fast-prefill`` turns it off); ``consumer_rereads``: every attending layer streams
    its producer's K/V (True, as SGLang's kernels do)."""

    fast_prefill: bool = True
    consumer_rereads: bool = True


def serving_for(size: ModelSize, plan: plans.Plan, hw: Hardware, *, mem_fraction: float = 0.85,
                kv_budget: int | None = None, max_running: int | None = None,
                chunk: int | None = None) -> Serving:
    """Our serve defaults for ``size`` on ``hw``: KV budget = memory x fraction - weights
    (as ``kv_math.kv_budget``) unless given, SGLang flags as ``serve`` sets them."""
    sizing = cap.serve_sizing(size, size.window)
    if kv_budget is None:
        kv_budget = cap.kv_budget(hw.memory, mem_fraction, weight_bytes(size, plan))
    return Serving(kv_budget=kv_budget,
                   max_running=max_running or serve_default(size.name, "--max-running-requests"),
                   chunk=chunk or sizing["chunk"], eviction_interval=sizing["eviction_interval"],
                   page=sizing["page"], chunks_in_flight=sizing["chunks_in_flight"])


# ---- costs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes of some work; its time on a device is the larger of the two."""

    flops: float
    bytes: float

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __mul__(self, k: float) -> "Cost":
        return Cost(self.flops * k, self.bytes * k)

    def compute_s(self, hw: Hardware) -> float:
        return self.flops / hw.eff_flops

    def memory_s(self, hw: Hardware) -> float:
        return self.bytes / hw.eff_bandwidth

    def time(self, hw: Hardware) -> float:
        return max(self.compute_s(hw), self.memory_s(hw))

    def bound(self, hw: Hardware) -> str:
        return "compute" if self.compute_s(hw) >= self.memory_s(hw) else "memory"


def weight_bytes(size: ModelSize, plan: plans.Plan) -> int:
    """All parameters (consumers have no K/V projections), in the model's dtype."""
    return param_count(size, plan) * size.dtype_bytes


def streamed_weight_bytes(size: ModelSize, plan: plans.Plan) -> int:
    """Weights a forward pass reads in full: all but the embedding table (gathered by row)."""
    return weight_bytes(size, plan) - size.vocab * size.hidden * size.dtype_bytes


def linear_macs(size: ModelSize, plan: plans.Plan, i: int) -> int:
    """Multiply-adds of layer ``i``'s projections and MLP for one token."""
    h, qd, kvd = size.hidden, size.heads * size.head_dim, size.kv_heads * size.head_dim
    kv = 2 * h * kvd if plan.is_producer(i) else 0
    return h * qd + kv + qd * h + 3 * h * size.intermediate


def attention_flops_per_key(size: ModelSize) -> int:
    """QK^T and PV: 2 multiply-adds per head dim, per head, per (query, key) pair."""
    return 4 * size.heads * size.head_dim


def layer_bytes(size: ModelSize) -> int:
    return cap.KVDims.of(size).layer_bytes


def causal_keys(n: int, span_cap: int | None) -> float:
    """Sum over queries t = 1..n of the keys each attends: t, or min(t, span_cap)."""
    if span_cap is None or n <= span_cap:
        return n * (n + 1) / 2
    return span_cap * (span_cap + 1) / 2 + (n - span_cap) * span_cap


def chunk_keys(start: int, end: int, span_cap: int | None) -> int:
    """K/V tokens a chunk of queries [start, end) reads: its whole prefix for a global
    layer, the last ``span_cap`` tokens before it for a local one, and itself."""
    return end if span_cap is None else min(start, span_cap) + (end - start)


def _reads(plan: plans.Plan, i: int, opts: Options) -> bool:
    """Whether layer ``i``'s attention streams K/V from memory (producers always do)."""
    return opts.consumer_rereads or plan.is_producer(i)


def prefill_cost(size: ModelSize, plan: plans.Plan, prompt_len: int, *, chunk: int,
                 opts: Options = Options()) -> tuple[Cost, int]:
    """One prompt's prefill from an empty cache, in chunks of ``chunk`` tokens: its FLOPs
    and K/V bytes (weights not included), and the number of chunk forwards it needs alone.
    Weights cost ``streamed_weight_bytes`` per forward; the caller adds them, because
    short prompts share forwards."""
    w = size.window
    n = prompt_len
    tail = set(plan.tail) if opts.fast_prefill else set()
    per_key, lb = attention_flops_per_key(size), layer_bytes(size)
    flops = 2 * size.hidden * size.vocab  # the LM head, for the last row only
    kv = 0.0
    starts = range(0, n, chunk)
    for i, layer in enumerate(plan.layers):
        cap_ = None if layer.kind == GLOBAL else w
        if i in tail:  # one row per prompt: the last, attending its span
            flops += 2 * linear_macs(size, plan, i) + per_key * min(n, cap_ or n)
            if _reads(plan, i, opts):
                kv += lb * min(n, cap_ or n)
            continue
        flops += 2 * linear_macs(size, plan, i) * n + per_key * causal_keys(n, cap_)
        if plan.is_producer(i):
            kv += lb * n  # writes its K/V
        if _reads(plan, i, opts):  # each chunk reads its span: prefix (or window) + itself
            kv += lb * sum(chunk_keys(s, min(n, s + chunk), cap_) for s in starts)
    return Cost(flops, kv), len(starts)


def mean_spans(plan: plans.Plan, first_ctx: int, steps: int, window: int) -> list[float]:
    """Each layer's span averaged over decode steps with contexts first_ctx .. first_ctx+steps-1."""
    if steps <= 0:
        return [0.0] * len(plan)
    last = first_ctx + steps - 1
    mean_global = (first_ctx + last) / 2
    # mean of min(ctx, W): contexts below W count themselves, the rest W
    below = max(0, min(last, window) - first_ctx + 1)
    lo_sum = (first_ctx + (first_ctx + below - 1)) * below / 2 if below else 0.0
    mean_local = (lo_sum + (steps - below) * window) / steps
    return [mean_global if k == GLOBAL else mean_local for k in plan.kinds]


def decode_step_cost(size: ModelSize, plan: plans.Plan, batch: int, spans: list[float] | int,
                     *, opts: Options = Options()) -> Cost:
    """One decode step of ``batch`` requests. ``spans``: an int context (tokens attended,
    the new one included) or each layer's (mean) span. Bytes: streamed weights once,
    ``batch`` embedding rows, every reading layer's K/V span per request, and each
    producer's new K/V."""
    w = size.window
    if isinstance(spans, int):
        spans = [spans if k == GLOBAL else min(spans, w) for k in plan.kinds]
    lb = layer_bytes(size)
    per_req_flops = 2 * size.hidden * size.vocab + sum(
        2 * linear_macs(size, plan, i) + attention_flops_per_key(size) * s
        for i, s in enumerate(spans))
    per_req_bytes = (size.hidden * size.dtype_bytes + lb * len(plan.producers)
                     + lb * sum(s for i, s in enumerate(spans) if _reads(plan, i, opts)))
    return Cost(batch * per_req_flops, streamed_weight_bytes(size, plan) + batch * per_req_bytes)


def pool_admitted(size: ModelSize, plan: plans.Plan, serving: Serving, tokens: int,
                  adakv: cap.Compression | None = None) -> int:
    """Requests of ``tokens`` tokens the server's pools hold at once: the split our pool
    configurator gives SGLang (:func:`kv_math.pool_split`) and what it holds
    (:func:`kv_math.pool_max_requests`, with Ada-KV's compressed prompts), at most the
    running-request cap."""
    sizing = dict(window=size.window, chunk=serving.chunk, page=serving.page,
                  eviction_interval=serving.eviction_interval,
                  chunks_in_flight=serving.chunks_in_flight)
    split = cap.pool_split(serving.kv_budget, plan, cap.KVDims.of(size),
                           max_running=serving.max_running, **sizing)
    return min(cap.pool_max_requests(split, plan, tokens, **sizing, adakv=adakv),
               serving.max_running)


def adakv_prefill_cost(size: ModelSize, plan: plans.Plan, prompt_len: int,
                       adakv: cap.Compression | None, window: int = 32) -> Cost:
    """Ada-KV's extra work after one prompt (``window`` observation queries): per global
    producer, the window's QK^T against all P keys (2 FLOPs per multiply-add, every query
    head) and the read of those keys, then compaction: each head's kept K/V read and
    written once (the budget's cells)."""
    if adakv is None or not adakv.compresses:
        return Cost(0, 0)
    n = len(plan.global_producers)
    flops = 2 * window * prompt_len * size.heads * size.head_dim
    key_bytes = prompt_len * size.kv_heads * size.head_dim * size.dtype_bytes
    compaction = 2 * layer_bytes(size) * adakv.budget  # K and V of B cells, read + write
    return Cost(n * flops, n * (key_bytes + compaction))


# ---- one level -----------------------------------------------------------------------
@dataclass(frozen=True)
class LevelBound:
    plan: str
    level: int
    running: int  # requests decoding at once
    limited_by: str  # level | prompts | max-running | kv-pool
    pool_admits: int
    prefill_s: float
    prefill_bound: str
    decode_s: float
    decode_bound: str
    duration_s: float
    output_tok_per_s: float
    ttft_ms: float  # one prompt's prefill, alone
    tpot_ms: float  # one decode step at `running`, mean context
    prefill_flops: float
    decode_bytes_per_step: float
    kv_bytes_per_request_step: float  # one request's share of a decode step's bytes (mean):
    # the K/V it reads, its producers' new K/V and its embedding row
    step_ms_1: float  # one decode step with 1 request running (mean context)
    step_ms_32: float  # ... with 32 running (what a GPU check reads off the server's log)


def level_bound(size: ModelSize, spec: str, hw: Hardware, wl: Workload, level: int,
                serving: Serving, opts: Options = Options()) -> LevelBound:
    """``spec``: a variant (``PLAN`` or ``PLAN@adakv=B``, :mod:`mixkv_bench.variants`)."""

    variant = variants.parse(spec)
    plan = variant.resolve(size.num_layers)
    i_len, o_len = wl.input_len, wl.output_len
    ada = variant.compression(i_len, serving.page)
    admits = pool_admitted(size, plan, serving, i_len + o_len, ada)
    one, forwards = prefill_cost(size, plan, i_len, chunk=serving.chunk, opts=opts)
    one = one + adakv_prefill_cost(size, plan, i_len, ada)
    spans = mean_spans(plan, i_len + 1, o_len - 1, size.window)
    if ada is not None and ada.compresses:  # global layers read the kept prompt + outputs
        dropped = i_len - ada.global_slots(i_len)
        spans = [s - dropped if k == GLOBAL else s for s, k in zip(spans, plan.kinds)]
    return bound(spec, level, hw, wl, serving, admits=admits, prefill_one=one, forwards=forwards,
                 weights=streamed_weight_bytes(size, plan),
                 step=lambda batch: decode_step_cost(size, plan, batch, spans, opts=opts))


def bound(label: str, level: int, hw: Hardware, wl: Workload, serving: Serving, *, admits: int,
          prefill_one: Cost, forwards: int, weights: float,
          step: Callable[[int], Cost]) -> LevelBound:
    """The level's bound from a model's costs: ``prefill_one`` (one prompt's prefill
    without weights, in ``forwards`` chunk forwards alone), ``weights`` (bytes a forward
    streams) and ``step(batch)`` (one decode step at mean spans, weights included), with
    the pools holding ``admits`` requests."""
    n, i_len, o_len = wl.num_prompts, wl.input_len, wl.output_len
    limits = [("level", level), ("prompts", n), ("max-running", serving.max_running),
              ("kv-pool", admits)]
    limited_by, running = min(limits, key=lambda kv: kv[1])  # first of equals wins
    running = max(running, 1)  # a pool that holds none still runs one at a time (or fails)
    alone = prefill_one + Cost(0, forwards * weights)
    prefill = prefill_one * n + Cost(0, math.ceil(n * i_len / serving.chunk) * weights)
    steps_per_req = o_len - 1
    batch_step = step(running)
    decode_s = n * steps_per_req / running * batch_step.time(hw)
    prefill_s = prefill.time(hw)
    duration = prefill_s + decode_s
    return LevelBound(
        plan=label, level=level, running=running, limited_by=limited_by, pool_admits=admits,
        prefill_s=prefill_s, prefill_bound=prefill.bound(hw), decode_s=decode_s,
        decode_bound=batch_step.bound(hw) if steps_per_req else "-", duration_s=duration,
        output_tok_per_s=n * o_len / duration, ttft_ms=alone.time(hw) * 1e3,
        tpot_ms=batch_step.time(hw) * 1e3 if steps_per_req else 0.0, prefill_flops=prefill.flops,
        decode_bytes_per_step=batch_step.bytes, kv_bytes_per_request_step=step(1).bytes - weights,
        step_ms_1=step(1).time(hw) * 1e3, step_ms_32=step(32).time(hw) * 1e3,
    )


def sweep(size: ModelSize, specs: list[str], hw: Hardware, wl: Workload,
          serving: "Serving | dict[str, Serving] | None" = None, opts: Options = Options(),
          **serving_kw) -> "pd.DataFrame":  # noqa: F821
    """Every plan at every level of ``wl``, with ``speedup_vs_standard`` (output tok/s
    over standard's at the same level; standard is computed for this even if not listed).
    ``serving``: one for all plans, one per plan, or None for :func:`serving_for`."""
    import pandas as pd

    def srv(spec: str) -> Serving:
        if isinstance(serving, Serving):
            return serving
        if isinstance(serving, dict) and spec in serving:
            return serving[spec]
        return serving_for(size, variants.parse(spec).resolve(size.num_layers), hw, **serving_kw)

    rows = [asdict(level_bound(size, s, hw, wl, c, srv(s), opts))
            for s in dict.fromkeys([*specs, "standard"]) for c in wl.concurrency]
    df = pd.DataFrame(rows)
    base = df[df["plan"] == "standard"].set_index("level")["output_tok_per_s"]
    df["speedup_vs_standard"] = df["output_tok_per_s"] / df["level"].map(base)
    return df[df["plan"].isin(specs)].reset_index(drop=True)


def assumptions(hw: Hardware, opts: Options) -> list[str]:
    """The model's assumptions, for every table printed from it."""
    return [
        f"hardware: {hw.describe()}",
        "lower bound of SGLang's schedule: prefill and decode forwards do not overlap; "
        "decode runs a full batch of min(level, prompts, max-running, requests the KV pools "
        "hold) every step; no scheduling, launch or framework overhead",
        "prefill: projections (K/V in producers only), MLP, causal attention over each "
        "layer's span (context for global, window for local), LM head for the last row; "
        "weights read once per chunk forward",
        "decode step: weights read once, plus per request every attending layer's K/V "
        + ("(consumers re-read their producer's K/V)" if opts.consumer_rereads
           else "(each producer's K/V read once per step)") + " and each producer's new K/V",
        "fast prefill (layers after the last producer on the logit rows only): "
        + ("on" if opts.fast_prefill else "off"),
        "KV pools split as our server splits them (kv_math.pool_split)",
    ]


# ---- CLI -------------------------------------------------------------------------------
def hardware_from_args(name: str, size: ModelSize, specs: list[str], flops_fraction: float,
                       bw_fraction: float) -> Hardware:
    if name.lower() == "this":
        biggest = max(streamed_weight_bytes(size, variants.parse(s).resolve(size.num_layers))
                      for s in specs)
        return measure_this(size.dtype, working_set=biggest)
    return gpu(name).achieving(flops_fraction, bw_fraction)
