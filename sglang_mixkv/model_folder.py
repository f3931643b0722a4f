"""Model sizes and the model folder: config.json, tokenizer, seeded weights.

A model folder is what ``sglang.launch_server --model-path`` reads: ``config.json``
(the Llama fields plus our plan fields from :func:`sglang_mixkv.plan.to_config`), a
word-level tokenizer over the ids (so SGLang's text endpoints and stock tools work
offline), and, on request, seeded random weights in ``model.safetensors``.

Consumer layers have a Q projection only: their checkpoint has no ``k_proj`` /
``v_proj``, which is also how the plain-PyTorch reference (``mixkv_bench.reference``) and the
SGLang model know who owns KV.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sglang_mixkv import plan as plans

ARCHITECTURE = "MixAttentionForCausalLM"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
# Chat roles are ordinary words of the vocabulary (the tokenizer has no other words).
CHAT_ROLES = {"system": "t3", "user": "t4", "assistant": "t5"}
# A conversation is ``<s>``, then per message its role word and its content, then the
# assistant's role word when a reply is wanted. Unknown roles are an error.
CHAT_TEMPLATE = (
    "{% set roles = " + json.dumps(CHAT_ROLES) + " %}{{ bos_token }}"
    "{% for m in messages %}{% if m['role'] not in roles %}"
    "{{ raise_exception('unknown chat role: ' + m['role']) }}{% endif %}"
    "{{ ' ' + roles[m['role']] + ' ' + m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ' + roles['assistant'] }}{% endif %}"
)
# Bumped when what write_model_folder writes changes, so existing folders are rewritten.
FOLDER_FORMAT = 2  # 2: chat template


@dataclass(frozen=True)
class ModelSize:
    name: str
    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    window: int
    max_position: int
    dtype: str  # torch dtype name as HF writes it
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    init_std: float = 0.02  # for random weights; the tiny size needs real-scale logits

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def dtype_bytes(self) -> int:
        return {"float32": 4, "bfloat16": 2, "float16": 2}[self.dtype]


SIZES: dict[str, ModelSize] = {
    # Runs on two CPU cores in seconds. float32 so the SGLang path and the reference
    # can be compared tightly; init_std 0.2 gives peaked, input-dependent logits.
    "tiny": ModelSize(
        name="tiny", num_layers=12, hidden=128, heads=4, kv_heads=2, intermediate=256,
        vocab=512, window=32, max_position=4096, dtype="float32", init_std=0.2,
    ),
    # Trained on the recall task on two CPU cores (mixkv_bench.train): 12 layers so the
    # presets stay distinct, hidden 64, window 8 (the task's 64-token contexts are 8
    # windows), a vocabulary the task fits in.
    "recall": ModelSize(
        name="recall", num_layers=12, hidden=64, heads=4, kv_heads=2, intermediate=256,
        vocab=256, window=8, max_position=1024, dtype="float32",
    ),
    # The serving test's model: 24 layers, GQA 4:1, dims of a ~2B dense decoder,
    # the paper's 1024-token window and a 32K context (31K in + 1K out).
    "paper": ModelSize(
        name="paper", num_layers=24, hidden=2048, heads=16, kv_heads=4, intermediate=11008,
        vocab=32000, window=1024, max_position=32768, dtype="bfloat16", rope_theta=500000.0,
    ),
}


def get_size(name: str) -> ModelSize:
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; sizes: {', '.join(SIZES)}")
    return SIZES[name]


def with_kv_heads(size: ModelSize, kv_heads: int | None) -> ModelSize:
    """``size`` with ``kv_heads`` KV heads per layer (1 = MQA, ``size.heads`` = MHA);
    ``None`` keeps the size's. The name stays: model folders record the heads in
    ``config.json`` (``num_key_value_heads``)."""
    if kv_heads is None or kv_heads == size.kv_heads:
        return size
    if not 1 <= kv_heads <= size.heads or size.heads % kv_heads:
        raise ValueError(f"--kv-heads {kv_heads}: size {size.name!r} has {size.heads} query "
                         "heads; KV heads must divide them (1 = MQA, "
                         f"{size.heads} = MHA)")
    return replace(size, kv_heads=kv_heads)


def param_count(size: ModelSize, plan: plans.Plan) -> int:
    """Parameters of the model (consumers have no K/V projections; untied LM head)."""
    h, hd = size.hidden, size.head_dim
    per_layer = (
        2 * h  # two RMSNorms
        + h * size.heads * hd  # q
        + size.heads * hd * h  # o
        + 3 * h * size.intermediate  # gate, up, down
    )
    kv = 2 * h * size.kv_heads * hd
    return (
        len(plan) * per_layer
        + len(plan.producers) * kv
        + 2 * size.vocab * h  # embed + lm_head
        + h  # final norm
    )


def hf_config(size: ModelSize, plan: plans.Plan, *, window: int | None = None,
              architecture: str = ARCHITECTURE) -> dict[str, Any]:
    """config.json for ``size`` with ``plan``. ``architecture='LlamaForCausalLM'`` with
    the ``standard`` plan gives a stock Llama that any SGLang/vLLM serves as is."""
    if len(plan) != size.num_layers:
        raise plans.PlanError(
            f"plan has {len(plan)} layers but size {size.name!r} has {size.num_layers}"
        )
    cfg: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": "llama",
        "hidden_size": size.hidden,
        "intermediate_size": size.intermediate,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "head_dim": size.head_dim,
        "num_hidden_layers": size.num_layers,
        "vocab_size": size.vocab,
        "max_position_embeddings": size.max_position,
        "rms_norm_eps": size.rms_eps,
        "rope_theta": size.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": size.dtype,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "mixkv_size": size.name,
    }
    if architecture == ARCHITECTURE:
        cfg.update(plans.to_config(plan, size.window if window is None else window))
    elif plan.has_consumers or plan.local_producers:
        raise plans.PlanError(f"{architecture} can only express the 'standard' plan")
    return cfg


def write_tokenizer(out: Path, vocab: int) -> None:
    """A word-level tokenizer: ``<unk> <s> </s>`` then ``t3 ... t{vocab-1}``.

    Token id i <-> the word ``t{i}``, so ids round-trip through text exactly. The chat
    template (``CHAT_TEMPLATE``) makes ``/v1/chat/completions`` work on every plan."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    words.update({f"t{i}": i for i in range(len(SPECIAL_TOKENS), vocab)})
    tk = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="<unk>", model_max_length=1 << 30,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))


def random_weights(size: ModelSize, plan: plans.Plan, seed: int) -> dict[str, Any]:
    """Seeded random weights in HF Llama names; consumers get no k_proj/v_proj."""
    import torch

    g = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, size.dtype)
    h, hd = size.hidden, size.head_dim

    def normal(*shape: int, std: float = size.init_std) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    def norm_weight() -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(h, generator=g)).to(dtype)

    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": normal(size.vocab, h, std=1.0)}
    for i in range(len(plan)):
        p = f"model.layers.{i}."
        # Scale projections by fan-in so activations stay O(1) through the depth.
        s_in, s_mid = size.init_std * math.sqrt(128 / h), size.init_std * math.sqrt(256 / size.intermediate)
        w[p + "input_layernorm.weight"] = norm_weight()
        w[p + "post_attention_layernorm.weight"] = norm_weight()
        w[p + "self_attn.q_proj.weight"] = normal(size.heads * hd, h, std=s_in)
        if plan.is_producer(i):
            w[p + "self_attn.k_proj.weight"] = normal(size.kv_heads * hd, h, std=s_in)
            w[p + "self_attn.v_proj.weight"] = normal(size.kv_heads * hd, h, std=s_in)
        w[p + "self_attn.o_proj.weight"] = normal(h, size.heads * hd, std=s_in)
        w[p + "mlp.gate_proj.weight"] = normal(size.intermediate, h, std=s_in)
        w[p + "mlp.up_proj.weight"] = normal(size.intermediate, h, std=s_in)
        w[p + "mlp.down_proj.weight"] = normal(h, size.intermediate, std=s_mid)
    w["model.norm.weight"] = norm_weight()
    w["lm_head.weight"] = normal(size.vocab, h, std=s_in)
    return w


def write_model_folder(out: str | Path, size: ModelSize | str, plan: plans.Plan | str, *,
                       weights: bool = False, seed: int = 0, window: int | None = None,
                       architecture: str = ARCHITECTURE) -> Path:
    """Write config.json + tokenizer (+ seeded ``model.safetensors`` if ``weights``).

    Idempotent: an existing folder with the same config and weights is left alone, so
    servers and tests can call this freely. Returns the folder."""
    size = get_size(size) if isinstance(size, str) else size
    plan = plans.resolve(plan, size.num_layers) if isinstance(plan, str) else plan
    out = Path(out)
    cfg = hf_config(size, plan, window=window, architecture=architecture)
    cfg["mixkv_weights"] = {"seed": seed} if weights else None
    cfg["mixkv_folder_format"] = FOLDER_FORMAT
    cfg_path = out / "config.json"
    st = out / "model.safetensors"
    if cfg_path.exists() and json.loads(cfg_path.read_text()) == cfg and (st.exists() or not weights):
        return out
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out, size.vocab)
    if weights:
        from safetensors.torch import save_file

        save_file(random_weights(size, plan, seed), str(st))
    elif st.exists():
        st.unlink()
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}) + "\n"
    )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sglang_mixkv.sizes",
                                 description="Write a MixAttention model folder.")
    ap.add_argument("--size", default="tiny", choices=list(SIZES))
    ap.add_argument("--plan", default="ma", help="preset name or plan string")
    ap.add_argument("--out", help="model folder to write (required unless --show)")
    ap.add_argument("--weights", action="store_true", help="write seeded random weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--architecture", default=ARCHITECTURE)
    ap.add_argument("--show", action="store_true", help="print the sizes and exit")
    a = ap.parse_args(argv)
    if a.show:
        for s in SIZES.values():
            print(json.dumps(asdict(s) | {"head_dim": s.head_dim}))
        return
    if not a.out:
        ap.error("--out is required (or --show to print the sizes)")
    path = write_model_folder(a.out, a.size, a.plan, weights=a.weights, seed=a.seed,
                              window=a.window, architecture=a.architecture)
    print(path)


if __name__ == "__main__":
    main()
