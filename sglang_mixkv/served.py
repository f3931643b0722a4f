"""Which served models are ours: the one place a served config becomes a plan.

Our ``MixAttentionForCausalLM`` folders carry their plan (``mixkv_plan``,
:func:`sglang_mixkv.plan.from_config`); Gemma 3n / 4 configs describe one
(:func:`sglang_mixkv.gemma.plan_of`). Pools, radix cache and attention backends ask
:func:`plan_for`, never the config fields themselves.
"""

from __future__ import annotations

from typing import Any, Mapping

from sglang_mixkv import gemma
from sglang_mixkv.plan import Plan, from_config


def plan_for(hf_config: Any) -> Plan | None:
    """The plan of the model SGLang loaded (an HF ``PretrainedConfig`` or a dict), or
    None for a model whose KV layout the seams leave to SGLang. Raises PlanError for a
    config whose fields disagree."""
    get = hf_config.get if isinstance(hf_config, Mapping) else (
        lambda k, d=None: getattr(hf_config, k, d))
    if get("mixkv_plan") is None:
        return gemma.plan_of(hf_config)
    return from_config(hf_config)


def is_mixkv(hf_config: Any) -> bool:
    """Whether SGLang is serving a model whose KV layout a plan describes."""
    return plan_for(hf_config) is not None
