"""Seam: what ``serve`` must know about SGLang 0.5.17's command line and environment.

``serve`` passes every flag it does not know to ``python -m sglang.launch_server``
unchanged; the functions here add only what a MixAttention server needs and say why,
each with the SGLang source behind it. Pure functions of the flags (and the plan):
nothing here imports SGLang.
"""

from __future__ import annotations

import json
import os

from sglang_mixkv import plan as plans
from sglang_mixkv.adakv import CONFIG_KEY as ADAKV_CONFIG_KEY
from sglang_mixkv.adakv import check_server as adakv_check_server
from sglang_mixkv.defaults import FAST_PREFILL_CONFIG_KEY


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


def without_flag(flags: list[str], name: str) -> list[str]:
    """``flags`` without any ``--name V`` / ``--name=V``."""
    out, skip = [], False
    for f in flags:
        if skip:
            skip = False
        elif f == name:
            skip = True
        elif not f.startswith(name + "="):
            out.append(f)
    return out


def device_defaults(gpu: bool) -> dict[str, str | None]:
    """Flags a server needs on this device (None: a flag without a value).

    GPU: our windowed triton backend (``sglang_seams/mixkv/triton.py``). CPU: SGLang's
    CPU device with the torch_native backend (our ``patches/torch_native.py``), and
    ``--sleep-on-idle``: SGLang's scheduler busy-polls when idle, which on a small CPU
    box starves the forward passes of whatever else runs (the harness, a second
    server)."""
    if gpu:
        return {"--attention-backend": "triton"}
    return {"--device": "cpu", "--attention-backend": "torch_native", "--sleep-on-idle": None}


#: SGLang's ``--triton-attention-num-kv-splits`` default (``server_args.py``), and the
#: fewest keys its MLA path gives one split (``layers/attention/triton_backend.py:70``).
STOCK_KV_SPLITS = 8
MIN_KEYS_PER_SPLIT = 32


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def decode_kv_splits(sm_count: int, context_len: int) -> int:
    """The triton decode kernel's split-KV cap for a GPU of ``sm_count`` SMs serving
    contexts up to ``context_len`` tokens.

    SGLang's decode kernel runs one program per (request, KV-head block, split)
    (``kernels/ops/attention/decode_attention.py:640-650``), and
    ``get_num_kv_splits_triton`` (``kernels/ops/attention/metadata.py``) picks each
    batch's splits to fill about ``sm_count * log2(seq / 64)`` programs, but never more
    than this cap. At the stock cap of 8, one request at 31K with 4 KV heads runs 32
    programs on 132 SMs (measured: 5-10x off the bandwidth bound). The cap here is
    SGLang's own for MLA (``_mla_decode_kv_splits_cap``, ``triton_backend.py:73-80``):
    the SM count rounded up to a power of two, but no more splits than the longest
    context has blocks of 32 keys, and never below the stock 8."""
    sm_cap = _next_power_of_2(sm_count)
    ctx_cap = _next_power_of_2(-(-int(context_len) // MIN_KEYS_PER_SPLIT))
    return max(STOCK_KV_SPLITS, min(sm_cap, ctx_cap))


def triton_split_flags(flags: list[str], sm_count: int, context_len: int) -> list[str]:
    """``flags`` with ``--triton-attention-num-kv-splits`` set by :func:`decode_kv_splits`
    for a server on the triton backend, unless the user gave it."""
    decode = flag_value(flags, "--decode-attention-backend") or flag_value(flags, "--attention-backend")
    if decode != "triton" or flag_given(flags, "--triton-attention-num-kv-splits"):
        return flags
    context = int(flag_value(flags, "--context-length") or context_len)
    return flags + ["--triton-attention-num-kv-splits", str(decode_kv_splits(sm_count, context))]


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


def with_model_override(flags: list[str], key: str, value) -> list[str]:
    """``flags`` with ``key: value`` merged into ``--json-model-override-args`` (SGLang
    applies it to the model's HF config, ``configs/model_config.py:290-302``); the
    user's other overrides are kept. ValueError if theirs is not a JSON object."""
    given = flag_value(flags, "--json-model-override-args")
    try:
        merged = json.loads(given) if given else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--json-model-override-args is not JSON: {e}") from None
    if not isinstance(merged, dict):
        raise ValueError("--json-model-override-args must be a JSON object")
    merged[key] = value
    return without_flag(flags, "--json-model-override-args") + [
        "--json-model-override-args", json.dumps(merged)]


def fast_prefill_flags(plan: plans.Plan, flags: list[str], on: bool, gpu: bool) -> list[str]:
    """``flags`` with fast prefill's switch and, on a GPU, its one condition.

    Off: the model's config gets ``mixkv_fast_prefill: false`` (the model then runs
    every layer on every row). On, on a GPU: SGLang 0.5.17 captures prefill in breakable
    CUDA graphs by default, for every chunk up to ``--chunked-prefill-size`` tokens
    (``model_executor/cuda_graph_config.py:110-120``, ``server_args.py:4724-4729``),
    and replays the captured layer stack whole with the graph's own batch
    (``runner/prefill_cuda_graph_runner.py:1606-1659``, ``layers/radix_attention.py:169-277``):
    a batch inside a graph takes the full path. So, with layers to skip, prefill graphs
    are turned off (``--disable-prefill-cuda-graph``; at thousands of tokens per chunk
    they save only kernel launches) unless the user chose a prefill graph setting.
    Decode graphs are untouched."""
    if not on:
        return with_model_override(flags, FAST_PREFILL_CONFIG_KEY, False)
    if gpu and plan.tail and not any(flag_given(flags, f) for f in (
            "--disable-prefill-cuda-graph", "--cuda-graph-backend-prefill",
            "--cuda-graph-config", "--disable-cuda-graph")):
        return flags + ["--disable-prefill-cuda-graph"]
    return flags


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


def cpu_paged_env(flags: list[str]) -> dict[str, str]:
    """``--page-size N`` > 1 on a CPU: SGLang 0.5.17's paged allocator allocates with
    Triton kernels (``mem_cache/allocator/paged.py:197``, ``alloc_extend``), which find no
    driver without a GPU, and the first prefill (SGLang's own warm-up) stops the server.
    Triton's interpreter (``TRITON_INTERPRET=1``) runs them on the host: exact (the
    outputs of a page-16 server equal a page-1 server's), slower to allocate."""
    page = int(flag_value(flags, "--page-size") or 1)
    if page <= 1 or "TRITON_INTERPRET" in os.environ:
        return {}
    return {"TRITON_INTERPRET": "1"}


def adakv_flags(cfg, flags: list[str], gpu: bool) -> list[str]:
    """``flags`` with Ada-KV's settings (``mixkv_adakv`` in the model's config, through
    ``--json-model-override-args``) and its conditions; ValueError for a combination it
    does not support, naming why.

    - attention backends: ``torch_native`` and ``triton`` attend over per-head kept cells
      (``patches/torch_native.py``, ``mixkv/triton.py``); flashinfer, fa3 and the others
      would read the compacted region as positions: refused.
    - ``--enable-mixed-chunk``: a compressed request must never extend again (its prompt
      KV is no longer position-ordered); mixed batches extend and decode together: refused.
    - speculative decoding and DP attention: not built for (refused).
    - streaming sessions and PD disaggregation read a request's prompt slots after its
      prefill, which compression freed and rewrote (``adakv.check_server``; the model
      checks the same at start-up when SGLang is launched without ``serve``): refused.
    - CUDA graphs: decode graphs stay on (``mixkv/triton.py`` rebuilds the per-head lists
      inside the graph from device tables); prefill graphs go off
      (``--disable-prefill-cuda-graph``): scoring stashes the window queries and
      compresses after the forward, per request, on the host. A prefill graph setting of
      the user's is refused."""
    if cfg is None:
        return flags
    backends = {flag_value(flags, f) for f in ("--attention-backend", "--decode-attention-backend",
                                               "--prefill-attention-backend")} - {None}
    bad = backends - {"torch_native", "triton"}
    if bad:
        raise ValueError(f"Ada-KV attends over per-head kept cells with the torch_native and "
                         f"triton backends only; {', '.join(sorted(bad))} would read the "
                         "compressed region as positions")
    for flag, why in (("--enable-mixed-chunk", "a compressed request must never extend again"),
                      ("--speculative-algorithm", "speculative decoding is not supported"),
                      ("--enable-dp-attention", "DP attention is not supported")):
        if flag_given(flags, flag):
            raise ValueError(f"Ada-KV with {flag}: {why}")
    adakv_check_server(flag_given(flags, "--enable-streaming-session"),
                       flag_value(flags, "--disaggregation-mode"))
    if gpu:
        prefill = flag_value(flags, "--cuda-graph-backend-prefill")
        if flag_given(flags, "--cuda-graph-config") or prefill not in (None, "disabled"):
            raise ValueError("Ada-KV with a prefill CUDA graph setting: scoring and compaction "
                             "run on the host after each prompt's last chunk; prefill runs "
                             "eagerly (--disable-prefill-cuda-graph)")
        if not any(flag_given(flags, f) for f in ("--disable-prefill-cuda-graph",
                                                   "--disable-cuda-graph",
                                                   "--cuda-graph-backend-prefill")):
            flags = flags + ["--disable-prefill-cuda-graph"]
    return with_model_override(flags, ADAKV_CONFIG_KEY, cfg.to_config())


def gemma_defaults(family: str, gpu: bool, flags: list[str]) -> tuple[dict[str, str | None], dict]:
    """Defaults (flags, environment) for serving a Gemma 3n / 4 folder.

    SGLang 0.5.17 serves Gemma 4 with the triton, trtllm_mha or intel_xpu backend only
    (``server_args.py:5452-5466``); on a machine without a GPU triton's kernels run in
    Triton's interpreter (``TRITON_INTERPRET=1``: exact, slow), without CUDA graphs.
    Gemma 3n takes any backend: torch_native on CPU, as for our folders."""
    if gpu or family != "gemma4":
        return {}, {}
    backend = flag_value(flags, "--attention-backend")
    if backend not in (None, "triton"):
        raise ValueError(f"Gemma 4 on SGLang 0.5.17 runs on triton, trtllm_mha or intel_xpu "
                         f"only, not {backend}; on CPU triton runs in Triton's interpreter")
    return ({"--attention-backend": "triton", "--disable-cuda-graph": None},
            {"TRITON_INTERPRET": "1"})
