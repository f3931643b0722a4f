"""KV memory arithmetic: bytes per token, request cost, what fits in a budget.

Everything here is the *formula* side of the capacity comparison (``docs/design.md``,
"KV memory"); the server side is what SGLang actually allocated (``/server_info``), and
the run side is how many long requests the server held at once (``mixkv_bench.probe``).
:func:`pool_split` is also what our pool configurator inside SGLang calls
(``sglang_seams/mixkv/pools.py``); the tests hold both to numbers computed by hand and to
what the running server reports.

Per token of context, per request (K and V, every KV-owning layer):

    global_bytes = 2 * kv_heads * head_dim * dtype_bytes * (#global producers)
    local_bytes  = 2 * kv_heads * head_dim * dtype_bytes * (#local producers)

(with each kind's own heads and head dim where they differ, as in Gemma 4)

and a request of T tokens costs ``T * global_bytes + min(T, W) * local_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sglang_mixkv import plan as plans
from sglang_mixkv.defaults import eviction_interval, serve_default
from sglang_mixkv.model_folder import ModelSize

PAPER_INPUT, PAPER_OUTPUT = 31_000, 1_000
PAPER_REQUEST = PAPER_INPUT + PAPER_OUTPUT


@dataclass(frozen=True)
class KVDims:
    """Per-layer KV geometry (after tensor parallelism, if any). ``kv_heads`` and
    ``head_dim`` are the global layers'; local (sliding-window) layers have their own
    where a model differs by kind (Gemma 4: ``global_head_dim`` for full layers), else
    the same."""

    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2
    local_kv_heads: int | None = None
    local_head_dim: int | None = None

    @classmethod
    def of(cls, size: ModelSize, dtype_bytes: int | None = None) -> "KVDims":
        return cls(size.kv_heads, size.head_dim, dtype_bytes or size.dtype_bytes)

    @property
    def layer_bytes(self) -> int:
        """K + V bytes of one token in one global KV-owning layer."""
        return 2 * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def local_layer_bytes(self) -> int:
        """K + V bytes of one token in one local KV-owning layer."""
        heads = self.kv_heads if self.local_kv_heads is None else self.local_kv_heads
        dim = self.head_dim if self.local_head_dim is None else self.local_head_dim
        return 2 * heads * dim * self.dtype_bytes


@dataclass(frozen=True)
class PerToken:
    global_bytes: int  # every token of context
    local_bytes: int  # only the last `window` tokens of each request


def bytes_per_token(plan: plans.Plan, dims: KVDims) -> PerToken:
    return PerToken(
        global_bytes=dims.layer_bytes * len(plan.global_producers),
        local_bytes=dims.local_layer_bytes * len(plan.local_producers),
    )


@dataclass(frozen=True)
class Compression:
    """Ada-KV's effect on one request's global slots (``sglang_mixkv.adakv``): a prompt of
    at least ``budget`` tokens keeps only its last ``budget + 1`` prompt slots (page-
    aligned) once prefilled; while it is prefilled, its whole prompt is in the pool."""

    budget: int
    input_len: int
    page: int = 1

    @property
    def compresses(self) -> bool:
        return self.input_len >= self.budget

    def global_slots(self, tokens: int) -> int:
        """Global slots a request of ``tokens`` tokens (``input_len`` of them prompt)
        holds at its longest, after compression."""
        if not self.compresses:
            return tokens
        from sglang_mixkv.adakv import region_slots

        return region_slots(self.input_len, self.budget, self.page) + tokens - self.input_len

    @property
    def transient(self) -> int:
        """Extra global slots of the one prompt being prefilled (SGLang prefills one
        chunked request at a time): its whole prompt, before it is compressed."""
        return self.input_len - self.global_slots(self.input_len) if self.compresses else 0


def request_bytes(plan: plans.Plan, dims: KVDims, window: int, tokens: int,
                  adakv: Compression | None = None) -> int:
    """KV bytes a request of ``tokens`` tokens holds (no page or chunk slack); with
    ``adakv``, its global layers hold the compressed prompt."""
    pt = bytes_per_token(plan, dims)
    slots = adakv.global_slots(tokens) if adakv is not None else tokens
    return slots * pt.global_bytes + min(tokens, window) * pt.local_bytes


def _transient_bytes(plan: plans.Plan, dims: KVDims, adakv: Compression | None) -> int:
    return adakv.transient * bytes_per_token(plan, dims).global_bytes if adakv is not None else 0


def max_concurrent(budget: int, plan: plans.Plan, dims: KVDims, window: int, tokens: int,
                   adakv: Compression | None = None) -> int:
    """Requests of ``tokens`` tokens that fit in ``budget`` bytes at once (with Ada-KV,
    beside the one prompt being prefilled at its full length)."""
    room = budget - _transient_bytes(plan, dims, adakv)
    return max(0, room) // request_bytes(plan, dims, window, tokens, adakv)


def max_tokens(budget: int, plan: plans.Plan, dims: KVDims, window: int,
               tokens: int = PAPER_REQUEST, adakv: Compression | None = None) -> int:
    """Tokens of context ``budget`` holds when filled with requests of ``tokens`` tokens.

    For a plan without local layers this is ``budget // global_bytes`` whatever the
    request length (the usual "max total tokens"); local layers cost only their window
    per request, so their share per token shrinks as requests get longer; Ada-KV keeps
    only the budget of each prompt."""
    room = budget - _transient_bytes(plan, dims, adakv)
    return max(0, room) * tokens // request_bytes(plan, dims, window, tokens, adakv)


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
    (``sglang_seams/mixkv/radix.py``) releases the cached prompt's local KV as it leaves the
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


@dataclass(frozen=True)
class SlotOverhead:
    """Bytes the server allocates per token slot outside the KV buffers, after the
    pools: index lists, free lists, per-token input buffers (what they are in SGLang
    0.5.17: ``sglang_seams/mixkv/pools.py``, :func:`slot_overhead`). ``per_token``: per
    slot of the larger pool (SGLang's ``max_total_num_tokens``); ``per_global`` /
    ``per_local``: per slot of that pool. Zero (the default) is the KV-only formula."""

    per_token: int = 0
    per_global: int = 0
    per_local: int = 0

    def bytes(self, global_tokens: int, local_tokens: int) -> int:
        return (self.per_token * max(global_tokens, local_tokens)
                + self.per_global * global_tokens + self.per_local * local_tokens)


def pool_split(budget: int, plan: plans.Plan, dims: KVDims, *, window: int, max_running: int,
               chunk: int, page: int = 1, eviction_interval: int = 128,
               chunks_in_flight: int = 2, overhead: SlotOverhead = SlotOverhead()) -> PoolSplit:
    """Split a byte budget between the global and local pools.

    The local pool is bounded by the window (``local_pool_cap``); the rest of the
    budget goes to the global pool. Plans without local producers keep a local pool
    as large as the global one at zero bytes (SGLang's allocator pairs every global
    slot with a local one); plans without global producers give the budget to the
    local pool, the only pool with bytes (``global_tokens`` 0 here; the server adds a
    zero-byte global pool of token ids, see ``sglang_seams/mixkv/pools.py``).

    With ``overhead``, ``budget`` is what the pools *and* the server's per-slot
    structures may take (:class:`SlotOverhead`): KV bytes + ``overhead.bytes(g, s)``
    stay within it. A model whose KV is only hundreds of bytes a token (``tiny``)
    needs this: SGLang's own structures then cost a sizable share of a slot."""
    pt = bytes_per_token(plan, dims)
    per_g = overhead.per_token + overhead.per_global
    if pt.local_bytes == 0:
        g = budget // (pt.global_bytes + per_g + overhead.per_local) // page * page
        return PoolSplit(g, g, g * pt.global_bytes, 0)
    if pt.global_bytes == 0:
        s = budget // (pt.local_bytes + overhead.per_token + overhead.per_local) // page * page
        return PoolSplit(0, s, 0, s * pt.local_bytes)
    s = local_pool_cap(window, max_running, chunk, page, eviction_interval, chunks_in_flight)
    g = (budget - s * (pt.local_bytes + overhead.per_local)) // (pt.global_bytes + per_g) // page * page
    if g < s:  # the larger pool pays the per-token share: re-solve with the local pool's
        g = min(g, (budget - s * (pt.local_bytes + overhead.per_local + overhead.per_token))
                // (pt.global_bytes + overhead.per_global) // page * page)
    if g <= 0:
        raise ValueError(
            f"the local pool for {max_running} running requests ({s} tokens, "
            f"{s * pt.local_bytes / 2**30:.2f} GiB) leaves no room for the global pool in "
            f"{budget / 2**30:.2f} GiB; lower --max-running-requests or raise the memory fraction"
        )
    return PoolSplit(g, s, g * pt.global_bytes, s * pt.local_bytes)


def stock_pool_split(budget: int, plan: plans.Plan, dims: KVDims, *, hybrid: bool,
                     swa_ratio: float = 0.8, page: int = 1) -> PoolSplit:
    """What SGLang 0.5.17's own configurators allocate in ``budget`` bytes for a model
    whose KV sharing is compute-only (Gemma 3n / 4 served stock): a buffer for every
    layer, shared ones included.

    - ``hybrid`` (Gemma 4, ``HybridSWAPoolConfigurator``,
      ``model_executor/pool_configurator.py:335-493``): full tokens = budget / (full
      layers x their bytes + ratio x sliding layers x theirs), the SWA pool ``ratio``
      (``--swa-full-tokens-ratio``, 0.8) of that, not window-bounded;
    - otherwise (Gemma 3n, whose hybrid memory SGLang turns off): one pool, every layer
      with the global geometry (``DefaultPoolConfigurator``, ``:270-333``)."""
    n_global = sum(layer.kind == plans.GLOBAL for layer in plan.layers)
    n_local = len(plan) - n_global
    if not hybrid:
        tokens = budget // (len(plan) * dims.layer_bytes) // page * page
        return PoolSplit(tokens, 0, tokens * len(plan) * dims.layer_bytes, 0)
    cell = n_global * dims.layer_bytes + swa_ratio * n_local * dims.local_layer_bytes
    full = int(budget // cell) // page * page
    swa = int(full * swa_ratio) // page * page
    return PoolSplit(full, swa, full * n_global * dims.layer_bytes,
                     swa * n_local * dims.local_layer_bytes)


def pool_max_requests(split: PoolSplit, plan: plans.Plan, tokens: int, *, window: int,
                      chunk: int, page: int = 1, eviction_interval: int = 128,
                      chunks_in_flight: int = 2, adakv: Compression | None = None) -> int:
    """Requests of ``tokens`` tokens that the pools of ``split`` hold at once: the
    global pool's share (``tokens`` slots each; with Ada-KV the compressed prompt, beside
    one prompt being prefilled in full), and the local pool's, after the prefill chunks
    in flight, at :func:`local_per_request` each. For a plan with both kinds the local
    pool was sized for ``max_running`` requests, so this is at most that; the
    running-request cap itself is not applied here."""
    held = []
    if plan.global_producers:
        if adakv is None:
            held.append(split.global_tokens // tokens)
        else:
            room = max(0, split.global_tokens - adakv.transient)
            held.append(room // adakv.global_slots(tokens))
    if plan.local_producers:
        free = split.local_tokens - chunks_in_flight * chunk - page
        held.append(max(0, free) // local_per_request(window, page, eviction_interval, tokens))
    return min(held)


# ---- budgets ----------------------------------------------------------------------------
def kv_budget(gpu_mem: int, mem_fraction: float, weight_bytes: int) -> int:
    """KV bytes left on one GPU: the static fraction minus the weights."""
    return int(gpu_mem * mem_fraction) - weight_bytes


def serve_sizing(size: ModelSize, window: int) -> dict:
    """The pool-sizing settings ``python -m sglang_mixkv.serve`` gives SGLang for ``size``
    (chunk size, eviction interval; page 1, overlap scheduler: two chunks in flight)."""
    return dict(window=window, chunk=serve_default(size.name, "--chunked-prefill-size"),
                page=1, eviction_interval=eviction_interval(window), chunks_in_flight=2)
