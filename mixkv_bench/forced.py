"""Asking recall queries in decode: a SGLang custom logit processor that forces the query
keys and leaves the answers to the model.

A request's prompt is a context; its output alternates a forced key and the model's
greedy answer (``k1 a1 k2 a2 ...``), so every answer is decoded after the prompt, on the
KV the server kept (Ada-KV compresses after the prompt; a one-token answer would come
from the uncompressed prefill). The server runs with :data:`SERVER_FLAGS`; SGLang
unpickles the class by reference, so it imports this module (keep it free of heavy
imports).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor


#: SGLang refuses custom logit processors without the first flag. The second: the
#: processor counts output steps in ``req.output_ids``, which the overlap scheduler
#: updates one step late (measured: keys forced at the wrong steps). Neither changes
#: what the model computes.
SERVER_FLAGS = ["--enable-custom-logit-processor", "--disable-overlap-schedule"]


class ForcedKeys(CustomLogitProcessor):
    """Output step t even: only ``keys[t // 2]`` may be chosen; t odd: logits untouched.
    ``custom_params``: ``{"keys": [...]}`` per request (SGLang adds ``__req__``)."""

    def __call__(self, logits: torch.Tensor,
                 custom_param_list: list[dict[str, Any]] | None = None) -> torch.Tensor:
        for row, params in enumerate(custom_param_list or []):
            if not params or params.get("__req__") is None:
                continue
            keys, step = params.get("keys") or [], len(params["__req__"].output_ids)
            if step % 2 == 0 and step // 2 < len(keys):
                forced = int(keys[step // 2])
                logits[row] = float("-inf")
                logits[row, forced] = 0.0
        return logits


@cache
def _processor() -> str:
    return ForcedKeys.to_str()  # dill-pickled once, not per request


def request(prompt: list[int], keys: list[int]) -> dict:
    """The ``/generate`` body asking ``keys`` after ``prompt``, greedily."""
    return {"input_ids": prompt, "custom_logit_processor": _processor(),
            "sampling_params": {"max_new_tokens": 2 * len(keys), "temperature": 0,
                                "ignore_eos": True, "custom_params": {"keys": keys}}}


def answers(output_ids: list[int]) -> list[int]:
    """The model's answers in an output ``k1 a1 k2 a2 ...``."""
    return output_ids[1::2]
