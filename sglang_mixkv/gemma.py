"""Gemma 3n and Gemma 4 (E-series) as layer plans: public KV-sharing models.

Both mix sliding-window (``sliding_attention``) and global (``full_attention``) layers,
and their last ``num_kv_shared_layers`` layers own no KV: each reads the KV of the last
earlier non-shared layer of its own type (transformers 5.12.1,
``models/gemma4/modeling_gemma4.py:1199-1203`` and ``gemma3n/modeling_gemma3n.py:1186-1194``;
SGLang 0.5.17's ``gemma4_causal.py:362-377`` applies the same rule, its
``gemma3n_causal.py:373-382`` hard-codes "the two layers before the shared tail").

That is a plan with a YOCO-style consumer tail; :func:`plan_of` derives it from the
config, and every seam that asks :func:`sglang_mixkv.served.plan_for` then treats the model
like ours: pools for the producer layers only, local ones window-bounded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from sglang_mixkv import plan as plans

#: text-model ``model_type`` of each family (a multimodal config nests one as ``text_config``)
TEXT_TYPES = {"gemma4_text": "gemma4", "gemma3n_text": "gemma3n"}
#: the multimodal wrappers SGLang serves, and their text types
WRAPPER_TYPES = {"gemma4": "gemma4_text", "gemma3n": "gemma3n_text"}
_KINDS = {"sliding_attention": plans.LOCAL, "full_attention": plans.GLOBAL}


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def text_config(cfg: Any) -> Any | None:
    """The Gemma 3n / 4 text config inside ``cfg`` (itself, or its ``text_config``), or
    None for any other model."""
    if family(cfg) is None:
        return None
    return cfg if _get(cfg, "model_type") in TEXT_TYPES else _get(cfg, "text_config")


def family(cfg: Any) -> str | None:
    """``"gemma4"`` or ``"gemma3n"`` for such a config (text or multimodal), else None."""
    kind = _get(cfg, "model_type")
    if kind in TEXT_TYPES:
        return TEXT_TYPES[kind]
    if kind in WRAPPER_TYPES and _get(cfg, "text_config") is not None:
        return kind
    return None


def plan_from_layers(layer_types: list[str], shared: int) -> plans.Plan:
    """The plan of a Gemma stack: ``layer_types`` per layer, the last ``shared`` layers
    reading the last earlier non-shared layer of their type. PlanError when a type is
    unknown or a shared layer has no producer of its type."""
    n = len(layer_types)
    if not 0 <= shared < n:
        raise plans.PlanError(f"num_kv_shared_layers={shared} must be in [0, {n}) for {n} layers")
    unknown = sorted(set(layer_types) - set(_KINDS))
    if unknown:
        raise plans.PlanError(f"layer_types has {unknown}; known: {sorted(_KINDS)}")
    first_shared = n - shared
    layers = []
    for i, name in enumerate(layer_types):
        kind = _KINDS[name]
        if i < first_shared:
            layers.append(plans.Layer(kind, i))
            continue
        earlier = [j for j in range(first_shared) if layer_types[j] == name]
        if not earlier:
            raise plans.PlanError(f"layer {i} ({name}) is shared but no earlier non-shared "
                                  f"layer has that type")
        layers.append(plans.Layer(kind, earlier[-1]))
    return plans.Plan(tuple(layers))


def plan_of(cfg: Any) -> plans.Plan | None:
    """The plan of a Gemma 3n / 4 config (text or multimodal), or None for other models."""
    text = text_config(cfg)
    if text is None:
        return None
    types = list(_get(text, "layer_types") or [])
    n = _get(text, "num_hidden_layers")
    if len(types) != n:
        raise plans.PlanError(f"layer_types has {len(types)} entries for {n} layers")
    return plan_from_layers(types, int(_get(text, "num_kv_shared_layers") or 0))


def window(cfg: Any) -> int | None:
    """W: tokens a sliding layer sees, its own included (HF ``sliding_window``)."""
    text = text_config(cfg)
    return None if text is None else _get(text, "sliding_window")


# ---- the text model of a multimodal checkpoint ------------------------------------------
#: SGLang's text class for each family
TEXT_CLASSES = {"gemma4": "Gemma4ForCausalLM", "gemma3n": "Gemma3nForCausalLM"}


def write_text_folder(src: str | Path, dst: str | Path) -> Path:
    """The text model of a multimodal Gemma checkpoint (``Gemma4ForConditionalGeneration``,
    ``Gemma3nForConditionalGeneration``: what ``google/gemma-4-E2B-it`` and the other
    E-series downloads are) as a folder SGLang serves with its text class.

    ``dst/config.json`` is the checkpoint's ``text_config`` with the text class as its
    architecture (and the checkpoint's dtype); every other file of ``src`` (weights,
    tokenizer, chat template, generation config) is linked, not copied: SGLang's text
    classes read the ``model.language_model.*`` weights and skip the vision and audio
    ones (``models/gemma4_causal.py:1229``, ``gemma3n_causal.py:978``). ValueError for a
    folder that is not a multimodal Gemma checkpoint."""
    src, dst = Path(src).resolve(), Path(dst)
    cfg = json.loads((src / "config.json").read_text())
    kind = family(cfg)
    if kind is None or cfg.get("model_type") not in WRAPPER_TYPES:
        raise ValueError(f"{src} is not a multimodal Gemma 3n / 4 checkpoint "
                         f"(model_type {cfg.get('model_type')!r})")
    text = dict(cfg["text_config"])
    text["architectures"] = [TEXT_CLASSES[kind]]
    for key in ("dtype", "torch_dtype"):
        if key in cfg and key not in text:
            text[key] = cfg[key]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(json.dumps(text, indent=2))
    for f in src.iterdir():
        link = dst / f.name
        if f.name != "config.json" and not link.exists():
            link.symlink_to(f)
    return dst


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(
        prog="python -m sglang_mixkv.gemma",
        description="Write the text model of a multimodal Gemma 3n / 4 checkpoint (e.g. a "
        "download of google/gemma-4-E2B-it) as a folder `serve --model-path` takes: its "
        "text_config and links to its files.")
    ap.add_argument("src", help="the downloaded checkpoint folder")
    ap.add_argument("dst", help="the text folder to write")
    a = ap.parse_args(argv)
    try:
        out = write_text_folder(a.src, a.dst)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"text model of {a.src}: {out} (serve it: python -m sglang_mixkv.serve "
          f"--model-path {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
