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
    - CUDA graphs: a captured decode replays fixed index lists, not per-head ones, so on a
      GPU serve turns them off (``--disable-cuda-graph``) unless told otherwise, which is
      refused."""
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
    if gpu:
        graphs = [f for f in ("--cuda-graph-config", "--cuda-graph-max-bs",
                              "--cuda-graph-backend-decode") if flag_given(flags, f)]
        if graphs:
            raise ValueError(f"Ada-KV with {', '.join(graphs)}: a decode CUDA graph replays "
                             "fixed index lists, not per-head kept cells")
        if not flag_given(flags, "--disable-cuda-graph"):
            flags = flags + ["--disable-cuda-graph"]
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
