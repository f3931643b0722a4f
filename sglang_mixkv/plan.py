"""Layer plans: which layers attend globally or locally, and whose KV each layer reads.

A plan gives every layer a *kind* (global or sliding-window local) and a *KV source*:
itself (a producer, which owns KV) or an earlier producer of the same kind (a consumer,
which owns no KV and attends over its producer's). One letter per layer:

    G  global producer          g  global consumer (reads the nearest earlier G)
    L  local producer           l  local consumer  (reads the nearest earlier L)

A consumer may name its producer explicitly: ``g0`` reads layer 0. Spaces, ``_`` and
``|`` are ignored, so ``"GLlLll gLlLll"`` reads like the preset tables.

Invariants of a :class:`Plan` (checked on construction, so every Plan is valid):
it is non-empty, layer 0 is a producer, and every consumer's source is an earlier
producer of the same kind.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

Kind = Literal["global", "local"]
GLOBAL: Kind = "global"
LOCAL: Kind = "local"

_PRODUCER_LETTER = {GLOBAL: "G", LOCAL: "L"}
_LETTER_KIND: dict[str, Kind] = {"G": GLOBAL, "g": GLOBAL, "L": LOCAL, "l": LOCAL}
_IGNORED = set(" \t\n_|")

#: Value of ``hybrid_layer_pattern`` for layers that own no KV. SGLang 0.5.17 puts
#: 1 in its SWA list and 0 in its full list; anything else gets no buffer.
CONSUMER_PATTERN = 2
DEFAULT_WINDOW = 1024


class PlanError(ValueError):
    """A plan string or config that breaks a rule; the message names layer and rule."""


@dataclass(frozen=True)
class Layer:
    kind: Kind
    source: int  # == own index for a producer

    def is_producer(self, index: int) -> bool:
        return self.source == index


@dataclass(frozen=True)
class Plan:
    layers: tuple[Layer, ...]

    def __post_init__(self) -> None:
        if not self.layers:
            raise PlanError("empty plan: a plan needs at least one layer")
        for i, layer in enumerate(self.layers):
            if layer.kind not in (GLOBAL, LOCAL):
                raise PlanError(f"layer {i}: unknown kind {layer.kind!r}")
            s = layer.source
            if s == i:
                continue
            if not isinstance(s, int) or s < 0 or s > i:
                raise PlanError(
                    f"layer {i}: reads layer {s}, but a consumer must read an earlier layer"
                )
            src = self.layers[s]
            if src.source != s:
                raise PlanError(
                    f"layer {i}: reads layer {s}, which is itself a consumer; "
                    "a consumer must read a producer"
                )
            if src.kind != layer.kind:
                raise PlanError(
                    f"layer {i}: {layer.kind} consumer reads layer {s}, a {src.kind} "
                    "producer; a consumer must read a producer of its own kind"
                )

    # ---- views -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def is_producer(self, i: int) -> bool:
        return self.layers[i].source == i

    @property
    def producers(self) -> list[int]:
        return [i for i in range(len(self)) if self.is_producer(i)]

    @property
    def global_producers(self) -> list[int]:
        return [i for i in self.producers if self.layers[i].kind == GLOBAL]

    @property
    def local_producers(self) -> list[int]:
        return [i for i in self.producers if self.layers[i].kind == LOCAL]

    @property
    def kinds(self) -> list[Kind]:
        return [layer.kind for layer in self.layers]

    @property
    def sources(self) -> list[int]:
        return [layer.source for layer in self.layers]

    @property
    def has_consumers(self) -> bool:
        return len(self.producers) < len(self)

    @property
    def tail(self) -> list[int]:
        """The consumer-only layers after the last producer (empty when the last layer is
        a producer): they write no KV, so fast prefill runs them only on the rows whose
        logits are read."""
        return list(range(max(self.producers) + 1, len(self)))

    def __str__(self) -> str:
        """Canonical plan string: parses back to an equal Plan."""
        out = []
        last: dict[Kind, int] = {}
        for i, layer in enumerate(self.layers):
            letter = _PRODUCER_LETTER[layer.kind]
            if layer.source == i:
                out.append(letter)
                last[layer.kind] = i
            elif last.get(layer.kind) == layer.source:
                out.append(letter.lower())
            else:
                out.append(f"{letter.lower()}{layer.source}")
        return "".join(out)

    def pretty(self, period: int = 6) -> str:
        """The plan string in blocks of ``period`` letters, as the README prints it."""
        tokens = re.findall(r"[GgLl]\d*", str(self))
        return " ".join("".join(tokens[i : i + period]) for i in range(0, len(tokens), period))


# ---- parsing ----------------------------------------------------------------------
def parse(text: str) -> Plan:
    """Parse a plan string; raise PlanError naming the layer and the broken rule."""
    if not isinstance(text, str):
        raise PlanError(f"a plan is a string of G/g/L/l letters, got {type(text).__name__}")
    layers: list[Layer] = []
    last: dict[Kind, int] = {}
    pos = 0
    while pos < len(text):
        ch = text[pos]
        if ch in _IGNORED:
            pos += 1
            continue
        i = len(layers)
        if ch not in _LETTER_KIND:
            raise PlanError(
                f"layer {i}: unknown letter {ch!r} at position {pos} of {text!r}; "
                "use G, g, L or l (optionally a consumer's source index, e.g. g0)"
            )
        kind = _LETTER_KIND[ch]
        m = re.match(r"\d+", text[pos + 1 :])
        pos += 1 + (m.end() if m else 0)
        if ch.isupper():
            if m:
                raise PlanError(
                    f"layer {i}: producer {ch} cannot name a source ({ch}{m.group()}); "
                    "only consumers (g, l) read another layer"
                )
            layers.append(Layer(kind, i))
            last[kind] = i
            continue
        if m:
            source = int(m.group())
        elif kind in last:
            source = last[kind]
        else:
            raise PlanError(
                f"layer {i}: {kind} consumer {ch!r} comes before any {kind} producer "
                f"({_PRODUCER_LETTER[kind]}); a consumer needs an earlier producer of its kind"
            )
        layers.append(Layer(kind, source))
    if not layers:
        raise PlanError(f"empty plan {text!r}: a plan needs at least one layer")
    return Plan(tuple(layers))


# ---- presets ----------------------------------------------------------------------
PERIOD = 6


def _blocks(n: int, first: str, middle: str, last: str) -> str:
    """Blocks of PERIOD layers: ``first``, then ``middle`` repeated, then ``last``.

    The final block may be cut; it keeps its final letter on layer n-1 (so a global
    at the end of the last block stays at the end of the model)."""
    nb = math.ceil(n / PERIOD)
    if nb == 1:
        return first[:n]
    k = n - PERIOD * (nb - 1)
    return first + middle * (nb - 2) + last[: k - 1] + last[-1]


def _ma_pairs(n: int) -> str:
    nb = math.ceil(n / PERIOD)
    deep = nb // 2  # the block whose global becomes a second producer
    if nb == 1:
        return "GLlLll"[:n]
    blocks = []
    for b in range(nb - 1):
        blocks.append("GLlLll" if b in (0, deep) else "gLlLll")
    k = n - PERIOD * (nb - 1)
    end = "G" if deep == nb - 1 else "g"
    return "".join(blocks) + "LlLll"[: k - 1] + end


def _ma_successive(n: int) -> str:
    n_global = max(1, math.ceil(n / PERIOD))
    prefix = ("LlLlll" * n)[: n - n_global]
    return prefix + "G" + "g" * (n_global - 1)


def _yoco(n: int) -> str:
    half = n // 2
    return "L" * half + "G" + "g" * (n - half - 1)


PRESETS: dict[str, Callable[[int], str]] = {
    "standard": lambda n: "G" * n,
    "swa": lambda n: _blocks(n, "GLLLLL", "GLLLLL", "LLLLLG"),
    "ma": lambda n: _blocks(n, "GLlLll", "gLlLll", "LlLllg"),
    "ma-offset": lambda n: _blocks(n, "LlLllG", "LlLllg", "LlLllg"),
    "ma-endslide": lambda n: _blocks(n, "GLlLll", "gLlLll", "LlLlll"),
    "ma-pairs": _ma_pairs,
    "ma-successive": _ma_successive,
    "ma-noshare": lambda n: _blocks(n, "GLlLll", "GLlLll", "LlLllG"),
    "yoco": _yoco,
    "cla2": lambda n: ("Gg" * n)[:n],
    "cla3": lambda n: ("Ggg" * n)[:n],
}

PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def preset(name: str, num_layers: int) -> Plan:
    if name not in PRESETS:
        raise PlanError(f"unknown preset {name!r}; presets: {', '.join(PRESET_NAMES)}")
    if num_layers < 1:
        raise PlanError(f"preset {name!r} needs at least one layer, got {num_layers}")
    return parse(PRESETS[name](num_layers))


def resolve(spec: str, num_layers: int) -> Plan:
    """A preset name or a plan string, checked against the model's layer count."""
    plan = preset(spec, num_layers) if spec in PRESETS else parse(spec)
    if len(plan) != num_layers:
        raise PlanError(
            f"plan {spec!r} has {len(plan)} layers but the model has {num_layers}"
        )
    return plan


# ---- HF config.json fields ------------------------------------------------------------
def to_config(plan: Plan, window: int = DEFAULT_WINDOW) -> dict[str, Any]:
    """The config.json fields that describe ``plan`` to our model and to SGLang.

    - ``mixkv_plan``, ``layer_types`` (HF names), ``kv_source_layers``: for our model.
    - ``sliding_window``: tokens a local layer sees, its own included (W).
    - ``is_hybrid_swa`` / ``hybrid_layer_pattern``: SGLang 0.5.17's generic hybrid-SWA
      opt-in. 0 = global producer (full pool), 1 = local producer (SWA pool),
      2 = consumer (no buffer). Only plans that need it opt in: a plan with no local
      producers and no consumers is a plain model and uses SGLang's stock pool.
    """
    if window < 1:
        raise PlanError(f"sliding window must be >= 1 token, got {window}")
    pattern = [
        CONSUMER_PATTERN if not plan.is_producer(i) else (1 if k == LOCAL else 0)
        for i, k in enumerate(plan.kinds)
    ]
    hybrid = bool(plan.local_producers) or plan.has_consumers
    return {
        "mixkv_plan": str(plan),
        "num_hidden_layers": len(plan),
        "layer_types": [
            "sliding_attention" if k == LOCAL else "full_attention" for k in plan.kinds
        ],
        "kv_source_layers": plan.sources,
        "sliding_window": window,
        "is_hybrid_swa": hybrid,
        "hybrid_layer_pattern": pattern if hybrid else None,
    }


def from_config(config: Mapping[str, Any] | Any) -> Plan:
    """Read the plan back from config.json fields (a dict or a PretrainedConfig).

    Round trip: ``from_config(to_config(p)) == p``. If the redundant fields disagree
    (someone edited one by hand) this raises PlanError rather than guess.
    """
    get = config.get if isinstance(config, Mapping) else (lambda k, d=None: getattr(config, k, d))
    text = get("mixkv_plan")
    if text is None:
        raise PlanError("config has no 'mixkv_plan' field: not a MixAttention config")
    plan = parse(text)
    n = get("num_hidden_layers")
    if n is not None and n != len(plan):
        raise PlanError(f"mixkv_plan {text!r} has {len(plan)} layers, num_hidden_layers is {n}")
    expected = to_config(plan, int(get("sliding_window") or DEFAULT_WINDOW))
    for key in ("layer_types", "kv_source_layers", "hybrid_layer_pattern"):
        have = get(key)
        if have is not None and list(have) != expected[key]:
            raise PlanError(
                f"config field {key}={list(have)} disagrees with mixkv_plan {text!r} "
                f"(expected {expected[key]})"
            )
    if get("is_hybrid_swa") is not None and bool(get("is_hybrid_swa")) != expected["is_hybrid_swa"]:
        raise PlanError(
            f"config field is_hybrid_swa={get('is_hybrid_swa')} disagrees with mixkv_plan {text!r}"
        )
    return plan
