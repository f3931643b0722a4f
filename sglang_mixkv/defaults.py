"""Serving defaults, environment names, byte sizes and key redaction.

A leaf module (standard library only): the serving core, the measurement package and
the harness all import it, so each name below is written once. Environment variables
are how ``serve`` (one process) talks to SGLang's scheduler processes, which it does
not create itself; every one read inside SGLang is listed here.
"""

from __future__ import annotations

import re
from typing import Any

# ---- environment ------------------------------------------------------------------------
#: API key of inference requests (``serve --api-key``, ``harness run --api-key``).
API_KEY_ENV = "MIXKV_API_KEY"
#: Admin key (``serve --admin-api-key``): the only key that opens SGLang's admin routes.
ADMIN_API_KEY_ENV = "MIXKV_ADMIN_API_KEY"
#: KV budget in bytes; the pool configurator caps the KV cache at it (``serve --kv-budget``).
KV_BUDGET_ENV = "MIXKV_KV_BUDGET_BYTES"
#: Running requests the local pool is sized for, instead of ``--max-running-requests``
#: (the capacity probe serves with a larger cap than the pools hold).
POOL_REQUESTS_ENV = "MIXKV_POOL_MAX_RUNNING"
#: ``1``: SGLang's own pool sizing and per-layer buffers (every layer of a Gemma model,
#: the SWA pool at SGLang's ratio); every other seam stays. Measures stock pools beside ours.
STOCK_POOLS_ENV = "MIXKV_STOCK_POOLS"
#: ``1``: log every fast-prefill forward (tests use it to prove the fast path ran).
FAST_PREFILL_LOG_ENV = "MIXKV_FAST_PREFILL_LOG"
#: Where ``serve`` writes model folders it creates (default ``<repo>/models``).
MODELS_ENV = "MIXKV_MODELS"
#: Default model size of ``serve`` (``tiny`` or ``paper``).
SIZE_ENV = "MIXKV_SIZE"

#: ``config.json`` key (set by ``serve --no-fast-prefill`` through SGLang's
#: ``--json-model-override-args``): False runs every layer on every row.
FAST_PREFILL_CONFIG_KEY = "mixkv_fast_prefill"

# ---- serving defaults ----------------------------------------------------------------------
#: KV budget of a server on a machine without a GPU (SGLang would size it from free RAM).
CPU_KV_BUDGET = "1GiB"
#: Per model size: ``--max-running-requests`` (the local pool is sized for it) and
#: ``--chunked-prefill-size``; the user's flags win.
SERVE_DEFAULTS: dict[str, dict[str, str]] = {
    "tiny": {"--max-running-requests": "32", "--chunked-prefill-size": "256"},
    "recall": {"--max-running-requests": "32", "--chunked-prefill-size": "256"},
    "paper": {"--max-running-requests": "300", "--chunked-prefill-size": "8192"},
}


def serve_default(size: str, flag: str) -> int:
    """``serve``'s default for ``flag`` at model size ``size`` (``paper``'s for others)."""
    return int(SERVE_DEFAULTS.get(size, SERVE_DEFAULTS["paper"])[flag])


def eviction_interval(window: int) -> int:
    """Decode steps between out-of-window evictions (``SGLANG_SWA_EVICTION_INTERVAL``,
    which ``serve`` sets): 16 per window, at most SGLang's default of 128. A running
    request's local-pool share is one window plus this (``kv_math.local_per_request``)."""
    return max(1, min(128, window // 16))


# ---- byte sizes ----------------------------------------------------------------------------
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> int:
    """``80GiB``, ``80 GB``, ``1e9`` -> bytes (at least one: every size given is memory to
    hold something); ValueError names the text."""
    m = re.fullmatch(r"\s*([0-9.]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot read a byte size from {text!r} (e.g. 80GiB, 80GB, 1e9)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n < 1:
        raise ValueError(f"{text!r} is no memory at all: give a size of at least one byte")
    return n


# ---- keys ----------------------------------------------------------------------------------
#: Flags whose value is a secret, and ``/server_info`` fields that hold one.
SECRET_FLAGS = ("--api-key", "--admin-api-key")
SECRET_FIELDS = ("api_key", "admin_api_key")
REDACTED = "***"


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization: Bearer KEY`` (nothing without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def redact_argv(argv: list[str]) -> list[str]:
    """``argv`` with the value of every secret flag replaced (``--api-key K`` and
    ``--api-key=K`` forms)."""
    out, hide = [], False
    for a in argv:
        if hide:
            out.append(REDACTED)
            hide = False
        elif a in SECRET_FLAGS:
            out.append(a)
            hide = True
        elif a.split("=", 1)[0] in SECRET_FLAGS and "=" in a:
            out.append(a.split("=", 1)[0] + "=" + REDACTED)
        else:
            out.append(a)
    return out


def redact_server_info(info: Any) -> Any:
    """A copy of a ``/server_info`` answer without secret fields' values."""
    if isinstance(info, dict):
        return {k: (REDACTED if k in SECRET_FIELDS and v else redact_server_info(v))
                for k, v in info.items()}
    if isinstance(info, list):
        return [redact_server_info(x) for x in info]
    return info


def redact_text(text: str, *secrets: str | None) -> str:
    """``text`` with every occurrence of each non-empty secret replaced."""
    for s in secrets:
        if s:
            text = text.replace(s, REDACTED)
    return text
