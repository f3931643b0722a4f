"""The settings of a ``make bench`` / ``make capacity`` run and their defaults per device."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated

from pydantic import AfterValidator, Field, NonNegativeInt, PositiveFloat, PositiveInt
from pydantic.dataclasses import dataclass

from harness.errors import Share
from sglang_mixkv.defaults import parse_bytes
from sglang_mixkv.model_folder import ModelSize, get_size, with_kv_heads

GPU_PLANS = ["standard", "swa", "ma", "ma-offset", "ma-endslide", "ma-pairs"]

CPU_SLO = "ttft_ms=1000,tpot_ms=75"  # make bench on CPU; on a GPU none unless --slo

DECODE_LOG_INTERVAL = 8  # decode steps between SGLang's /metrics gauge updates

SERVER_START_S = 1800  # paper size on a GPU: model folder, dummy weights, CUDA graphs


def _readable_size(text: str) -> str:
    """A byte size as written (``"64MiB"``), once :func:`parse_bytes` reads it."""
    parse_bytes(text)
    return text


ByteSize = Annotated[str, AfterValidator(_readable_size)]


@dataclass
class Settings:
    """One run's settings, checked when built (a pydantic ``ValidationError`` naming the
    field, before any server starts): counts, lengths and levels positive, shares in
    (0, 1], a port a server can take."""

    plans: Annotated[list[str], Field(min_length=1)]
    size: str
    num_prompts: PositiveInt
    input_len: PositiveInt
    output_len: PositiveInt
    concurrency: Annotated[list[PositiveInt], Field(min_length=1)]
    warmup: NonNegativeInt
    kv_budget: ByteSize | None  # None: SGLang profiles the GPU (--mem-fraction-static)
    mem_fraction: Share | None
    max_running: PositiveInt | None
    server_args: list[str] = field(default_factory=list)
    timeout: PositiveFloat = 7200.0
    port: Annotated[int, Field(ge=0, le=65535)] = 0  # 0: a free port for every server
    repeats: PositiveInt = 1  # runs of every level (the report shows their spread)
    kv_heads: PositiveInt | None = None  # --kv-heads of every server (None: the size's)
    slo: str | None = None  # latency objectives for goodput (harness.slo), e.g. "ttft_ms=500"
    slo_target: Share = 0.9  # attainment a level must reach to count as meeting the SLO
    dp: PositiveInt = 1  # servers per variant; more than one: behind sglang-router
    shared_prefix: str | None = None  # "GROUPS:TOKENS": prompts share a prefix per group


def defaults(gpu: bool, capacity_only: bool = False) -> Settings:
    if gpu:
        if capacity_only:  # probe requests (see run_probe) of 2 windows of prompt, so each
            # request's cached prompt tail is a whole window, and 6K output tokens (T = 8K:
            # a probe decodes 6K steps; the search takes ~12 per variant). The budget must
            # be known to the formula: 60 GiB fits an 80 GB H100. The local pools are
            # sized for the formula's request count (max_running None).
            return Settings(GPU_PLANS, "paper", 1, 2_048, 6_144, [1], 0, "60GiB", None, None)
        # The paper's test: 300 prompts, 31K in, 1K out, one H100.
        # Levels 8, 64 and 300, two runs each, so that the roofline's prediction on an H100
        # at 60% of peak FLOP/s and 90% of its bandwidth stays under two hours of serving
        # (predict(); tests/unit/test_bench_report.py checks it; all six levels twice would
        # not). Dropped: c=1 (the longest level by far, every variant bound by
        # reading the weights once per token), 32 and 128 (between their neighbours).
        # Kept: 8 (the decode-bandwidth regime), 64 (standard's pools hold fewer requests
        # of 32K than that: it queues) and 300 (the paper's all at once).
        return Settings(GPU_PLANS, "paper", 300, 31_000, 1_000, [8, 64, 300], 2,
                        None, None, 300, repeats=2)
    # CPU: the same code path, scaled to a few minutes on two cores. At 64 MiB of KV the
    # tiny `standard` holds ~18 requests of 576 tokens, the MixAttention variants all 32.
    if capacity_only:  # the probe's requests: 40 prompt tokens (> the 32-token window, so
        # each request's cached prompt tail is a whole window: what our radix cache releases)
        # + 536 output tokens (T = 576 = 18 windows). 64-token chunks keep the chunks in
        # flight (2 x 64 slots) small beside one window + interval + 2 pages (36 slots) per
        # request: the window dominates the local pool. 12 MiB keeps a probe under a minute.
        return Settings(GPU_PLANS, "tiny", 1, 40, 536, [1], 0, "12MiB", None, None,
                        server_args=["--chunked-prefill-size", "64"], timeout=1200.0)
    # The SLO sits near the c=32 latencies of the first CPU bench (TTFT p50 0.9-1.2 s, TPOT
    # p50 46-64 ms), so goodput separates the variants where the pools do.
    return Settings(GPU_PLANS, "tiny", 32, 512, 64, [1, 8, 32], 2, "64MiB", None, 32,
                    timeout=600.0, repeats=3, slo=CPU_SLO)


def bench_size(st: Settings) -> ModelSize:
    """The model size every server of the run serves (``--kv-heads`` applied)."""
    return with_kv_heads(get_size(st.size), st.kv_heads)
