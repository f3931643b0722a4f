"""Variants: a layer plan and the serving options measured with it, written ``PLAN`` or
``PLAN@adakv=B`` (Ada-KV with budget B). The same syntax in ``make bench``, ``make
capacity``, ``capacity`` and ``roofline`` (``--plans standard,ma,ma@adakv=128``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sglang_mixkv import kv_math
from sglang_mixkv import plan as plans


class VariantError(ValueError):
    """A variant string this syntax cannot read; the message says what is expected."""


@dataclass(frozen=True)
class Variant:
    label: str  # as written; also the variant's folder name in a run
    plan: str  # preset name or plan string
    adakv_budget: int | None = None

    def resolve(self, num_layers: int) -> plans.Plan:
        return plans.resolve(self.plan, num_layers)

    def serve_args(self) -> list[str]:
        """The ``serve`` flags this variant adds to the plan's."""
        return ["--adakv-budget", str(self.adakv_budget)] if self.adakv_budget else []

    def compression(self, input_len: int, page: int = 1) -> kv_math.Compression | None:
        """Ada-KV's effect on requests of ``input_len`` prompt tokens (None: off)."""
        if self.adakv_budget is None:
            return None
        return kv_math.Compression(self.adakv_budget, input_len, page)


def parse(text: str) -> Variant:
    """``PLAN`` or ``PLAN@adakv=B``; raises VariantError (the plan itself is checked
    against the model by :meth:`Variant.resolve`)."""
    text = text.strip()
    plan, _, options = text.partition("@")
    if not plan:
        raise VariantError(f"variant {text!r} has no plan (write PLAN or PLAN@adakv=B)")
    budget = None
    for option in filter(None, options.split("@")):
        m = re.fullmatch(r"adakv=(\d+)", option)
        if not m:
            raise VariantError(f"variant {text!r}: unknown option {option!r} (known: adakv=B, "
                               "B an integer budget in tokens)")
        budget = int(m.group(1))
        if budget < 1:
            raise VariantError(f"variant {text!r}: an Ada-KV budget keeps at least one token")
    return Variant(text, plan, budget)


def parse_list(text: str) -> list[Variant]:
    """A comma-separated list of variants (``all``: every preset, no options)."""
    if text.strip() == "all":
        return [Variant(p, p) for p in plans.PRESET_NAMES]
    return [parse(t) for t in text.split(",") if t.strip()]
