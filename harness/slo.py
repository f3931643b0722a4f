"""Service-level objectives and goodput (``--slo ttft_ms=...,tpot_ms=...,e2e_ms=...``).

Definitions, as vLLM's ``bench serve --goodput`` and NVIDIA AIPerf's ``--goodput`` /
``good_request_fraction`` have them:

* a request is **good** when it succeeded and meets *every* objective given: time to
  first token ``ttft <= ttft_ms``, time per output token ``tpot <= tpot_ms`` (``(e2e -
  ttft) / (output tokens - 1)``; a one-token request has none and meets it), end-to-end
  latency ``e2e <= e2e_ms``. Latencies are measured from the moment the request was sent
  (as the tools above do), not from its due time;
* **attainment** (AIPerf's good request fraction) = good requests / requests of the level
  (failed ones count as not good; cancelled ones are left out);
* **goodput** = good requests / the level's duration (requests/s), and the output tokens
  of good requests / duration (tok/s).
"""

from __future__ import annotations

import re
from typing import Optional

import pandas as pd
from pydantic import BaseModel, ConfigDict, PositiveFloat, ValidationError


class SLO(BaseModel):
    """Latency objectives in milliseconds; any subset, at least one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_ms: Optional[PositiveFloat] = None
    tpot_ms: Optional[PositiveFloat] = None
    e2e_ms: Optional[PositiveFloat] = None

    def describe(self) -> str:
        return ", ".join(f"{k} <= {v:g}" for k, v in self.model_dump().items() if v is not None)


def parse(text: str) -> SLO:
    """``"ttft_ms=500,tpot_ms=50"`` -> SLO; a ValueError naming the objective for an
    unknown name, a value that is not a positive number, or no objective at all."""
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([a-z_0-9]+)\s*=\s*(\S+)", part)
        if not m:
            raise ValueError(f"--slo {text!r}: {part!r} is not NAME=VALUE "
                             "(names: ttft_ms, tpot_ms, e2e_ms)")
        pairs[m.group(1)] = m.group(2)
    if not pairs:
        raise ValueError("--slo needs at least one of ttft_ms, tpot_ms, e2e_ms")
    try:
        return SLO.model_validate(pairs)
    except ValidationError as e:
        why = "; ".join(f"{'.'.join(map(str, x['loc']))}={x['input']}: {x['msg']}"
                        for x in e.errors())
        raise ValueError(f"--slo {text!r}: {why} (names: ttft_ms, tpot_ms, e2e_ms)") from None


def good(ok: pd.Series, ttft: pd.Series, tpot: pd.Series, e2e: pd.Series, slo: SLO) -> pd.Series:
    """Per request (seconds in, as the records have them): succeeded and meets every
    objective. ``tpot`` NaN (one output token) meets the TPOT objective."""
    out = ok.astype(bool).copy()
    if slo.ttft_ms is not None:
        out &= ttft * 1e3 <= slo.ttft_ms
    if slo.tpot_ms is not None:
        out &= (tpot * 1e3 <= slo.tpot_ms) | tpot.isna()
    if slo.e2e_ms is not None:
        out &= e2e * 1e3 <= slo.e2e_ms
    return out
