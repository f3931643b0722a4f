"""``python -m mixkv_bench.train``: train a small model of any plan on the recall task, on
CPU, into a model folder ``serve --model-path`` serves as it is.

    python -m mixkv_bench.train --plan ma-offset --out models/recall-ma-offset \\
        [--steps 20000] [--minutes 20] [--lr 1e-3] [--batch 32] [--seed 0]

The model is the plain-PyTorch MixAttention of :mod:`mixkv_bench.reference`, batched and
differentiable (:class:`Trainable`: the same layers, the same window rule, the same
weight names, so the folder loads into our SGLang model and into the reference alike),
at the ``recall`` size (12 layers, hidden 64, window 8). One recipe for every plan:
AdamW, linear warm-up then cosine decay over ``--steps``, loss on the queried values
only. A run stops after ``--minutes`` and resumes from ``OUT/checkpoint.pt`` (model,
optimizer, data stream, curve), so a long training spans sessions; the folder is
written at every stop, and ``OUT/runs.json`` lists every run's command, commit, versions
and hardware. ``OUT/curve.csv``: loss and held-out accuracy (seed
:data:`HELDOUT_SEED`, never trained on) on all queries and on the queries whose pair lies
more than one window back, with wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.sysinfo import collect
from mixkv_bench import recall
from sglang_mixkv import plan as plans
from sglang_mixkv.model_folder import get_size, write_model_folder
from sglang_mixkv.rope import Rope

HELDOUT_SEED = 10_000
HELDOUT_N = 256


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, producer: bool):
        super().__init__()
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        if producer:
            self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
            self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, size, producer: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(size.hidden, size.rms_eps)
        self.self_attn = Attention(size.hidden, size.heads, size.kv_heads, size.head_dim, producer)
        self.post_attention_layernorm = RMSNorm(size.hidden, size.rms_eps)
        self.mlp = MLP(size.hidden, size.intermediate)


class Trainable(nn.Module):
    """The MixAttention model of ``plan`` at ``size``, batched ([B, T] ids) and
    differentiable; parameter names are the model folder's (HF Llama names, no K/V
    projections on consumers)."""

    def __init__(self, size, plan: plans.Plan, window: int, shared_embedding: float = 0.0,
                 init_std: float = 0.0):
        """``init_std`` 0 keeps the modules' own initialization (``nn.Linear``: uniform
        within 1/sqrt(fan-in); ``nn.Embedding``: N(0, 1)); above 0, every matrix is drawn
        from N(0, init_std), as results/quality-search's probes were (0.02)."""
        super().__init__()
        self.size, self.plan, self.window = size, plan, window
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(size.vocab, size.hidden)
        self.model.layers = nn.ModuleList(Layer(size, plan.is_producer(i)) for i in range(len(plan)))
        self.model.norm = RMSNorm(size.hidden, size.rms_eps)
        self.lm_head = nn.Linear(size.hidden, size.vocab, bias=False)
        self.rope = Rope(size.head_dim, size.max_position, size.rope_theta)
        if init_std:
            for p in self.parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, std=init_std)
        if shared_embedding:  # a direction every token shares: attention by position alone
            with torch.no_grad():  # (a previous-token head) is then learnable from the start
                emb = self.model.embed_tokens.weight
                u = torch.randn(size.hidden)
                emb += shared_embedding * emb.norm(dim=1).mean() * u / u.norm()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T, vocab] logits of the next token at every position."""
        s, (b, t) = self.size, ids.shape
        pos = torch.arange(t).repeat(b)
        i = torch.arange(t).unsqueeze(1)
        j = torch.arange(t).unsqueeze(0)
        masks = {plans.GLOBAL: j <= i, plans.LOCAL: (j <= i) & (i - j < self.window)}
        x = self.model.embed_tokens(ids)
        kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def heads(z: torch.Tensor, n: int) -> torch.Tensor:
            return z.view(b, t, n, s.head_dim).transpose(1, 2)

        for idx, (layer, spec) in enumerate(zip(self.model.layers, self.plan.layers)):
            a = layer.self_attn
            h = layer.input_layernorm(x).reshape(b * t, -1)
            q = a.q_proj(h)
            if spec.source == idx:
                q, k = self.rope(pos, q, a.k_proj(h))
                kv[idx] = (heads(k, s.kv_heads), heads(a.v_proj(h), s.kv_heads))
            else:
                q, _ = self.rope(pos, q)
            k, v = kv[spec.source]
            o = F.scaled_dot_product_attention(heads(q, s.heads), k, v, attn_mask=masks[spec.kind],
                                               enable_gqa=True)
            x = x + a.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.model.norm(x))

    def weights(self) -> dict[str, torch.Tensor]:
        """The folder's ``model.safetensors`` tensors (contiguous copies, float32)."""
        return {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}


@dataclass(frozen=True)
class Recipe:
    """One recipe for every plan (chosen on ``standard``, then frozen: the defaults are
    results/quality-search's; uptraining overrides lr, warm-up and steps, the same for
    every plan, in scripts/quality_models.sh).

    Two choices took the 12-layer ``recall`` model past the plateau of a model that only
    eliminates the values already asked (results/quality-search): ``init_std`` 0 (the
    modules' own initialization; at N(0, 0.02) every probe of the search stopped there)
    and ``repeat_mix`` 0.5 (half the batches are repeated random spans, every repeated
    token a target: the key-to-next-token lookup recall needs, with dense supervision).
    With the first alone the 12-layer model was still at the plateau after 30 minutes;
    with both it passes 99% on the 8-pair task at step 2,250, and on the 16-pair one 90%
    at step 3,250 and 99% from 5,750 (one core, 0.37 s a step)."""

    steps: int = 20_000
    lr: float = 1e-3
    warmup: int = 0
    batch: int = 32
    weight_decay: float = 0.0
    seed: int = 0
    pair_mix: str = ""  # e.g. "4,8,16": each batch draws its number of pairs from these
    repeat_mix: float = 0.5  # share of batches that are repeated random spans (recall.sample_repeat)
    shared_embedding: float = 0.0  # norm of a component all initial embeddings share, relative
    init_std: float = 0.0  # 0: the modules' own initialization (Trainable)

    def pairs(self, task: recall.RecallTask) -> list[int]:
        """The pair counts batches draw from (the task's alone unless ``pair_mix``)."""
        mix = [int(p) for p in self.pair_mix.split(",") if p.strip()] or [task.pairs]
        for p in mix:
            replace(task, pairs=p, queries=min(task.queries, p))  # raises if the task cannot
        return mix

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        done = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.lr * 0.5 * (1 + math.cos(math.pi * done))


def answer_loss(logits: torch.Tensor, batch: recall.Batch) -> torch.Tensor:
    """Cross-entropy of the queried values, read from the logits one position earlier."""
    rows = torch.arange(batch.ids.shape[0]).unsqueeze(1)
    pred = logits[rows, batch.answer_pos - 1]  # [B, Q, V]
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), batch.ids[rows, batch.answer_pos].reshape(-1))


@torch.no_grad()
def accuracy(model: Trainable, batch: recall.Batch, chunk: int = 64) -> dict[str, float]:
    """Greedy accuracy on every query and on those whose pair lies more than one window
    back (the ones a sliding window alone cannot answer)."""
    hits = []
    for lo in range(0, batch.ids.shape[0], chunk):
        part = recall.Batch(batch.ids[lo:lo + chunk], batch.answer_pos[lo:lo + chunk],
                            batch.distance[lo:lo + chunk])
        logits = model(part.ids)
        rows = torch.arange(part.ids.shape[0]).unsqueeze(1)
        hits.append(logits[rows, part.answer_pos - 1].argmax(-1) == part.ids[rows, part.answer_pos])
    hit = torch.cat(hits)
    far = batch.distance > model.window
    return {"acc": hit.float().mean().item(),
            "acc_far": hit[far].float().mean().item() if far.any() else float("nan")}


def export(model: Trainable, out: Path, spec: str, task: recall.RecallTask, recipe: Recipe,
           step: int, init: dict | None = None) -> Path:
    """Write the model folder (config, tokenizer, trained weights) ``serve`` takes."""
    from safetensors.torch import save_file

    write_model_folder(out, model.size, model.plan, weights=False, window=model.window)
    save_file(model.weights(), str(out / "model.safetensors"))
    cfg = json.loads((out / "config.json").read_text())
    cfg["mixkv_weights"] = {"trained": {"plan": spec, "step": step, "task": task.to_dict(),
                                        "recipe": asdict(recipe), "init": init}}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def start_from(model: Trainable, folder: Path) -> dict:
    """Uptraining: set ``model``'s weights from the trained folder of another plan (as
    CLA/YOCO retrofits do). Every weight ``model`` has is copied; the source's K/V
    projections of layers that are consumers here are dropped. Returns what the source
    was (folder, plan, step); raises ValueError if it lacks a weight ``model`` needs."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    trained = (cfg.get("mixkv_weights") or {}).get("trained")
    if not trained:
        raise ValueError(f"--init {folder}: not a trained model folder")
    weights = load_file(str(folder / "model.safetensors"))
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    if missing:
        raise ValueError(f"--init {folder} ({trained['plan']}) has no {missing[0]}: a producer "
                         "here is a consumer there")
    model.load_state_dict({k: weights[k].to(own[k].dtype) for k in own})
    return {"folder": str(folder), "plan": trained["plan"], "step": trained["step"]}


def train(spec: str, out: Path, task: recall.RecallTask, recipe: Recipe, minutes: float,
          eval_every: int = 250, until: int | None = None, log=print,
          init: Path | None = None) -> dict:
    """Train (or resume) ``spec`` into ``out`` for at most ``minutes``, up to step
    ``until`` (default: the recipe's last); returns the last curve row. ``init``: start
    from that trained folder's weights (:func:`start_from`) instead of random ones."""
    import pandas as pd

    size = get_size("recall")
    if task.vocab > size.vocab:
        raise ValueError(f"the task uses {task.vocab} token ids, the recall size has {size.vocab}")
    if task.length > size.max_position:
        raise ValueError(f"sequences of {task.length} tokens exceed {size.max_position} positions")
    plan = plans.resolve(spec, size.num_layers)
    mix = recipe.pairs(task)
    torch.manual_seed(recipe.seed)
    model = Trainable(size, plan, size.window, recipe.shared_embedding, recipe.init_std)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                            betas=(0.9, 0.98))
    data = torch.Generator().manual_seed(recipe.seed)
    ckpt, step, curve, wall = out / "checkpoint.pt", 0, [], 0.0
    source = start_from(model, init) if init is not None and not ckpt.exists() else None
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if (state["plan"] != spec or recall.RecallTask(**state["task"]) != task
                or Recipe(**state["recipe"]) != recipe):
            raise ValueError(f"{ckpt} was trained with another plan, task or recipe; use "
                             "another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        data.set_state(state["data"])
        step, curve, wall = state["step"], state["curve"], state["wall_s"]
        source = state.get("init")
        log(f"resumed {spec} at step {step} ({wall / 60:.1f} min trained)")
    test = recall.heldout(task, HELDOUT_N, HELDOUT_SEED)
    out.mkdir(parents=True, exist_ok=True)
    runs_file = out / "runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else []
    runs_file.write_text(json.dumps(runs + [{**collect(), "from_step": step}], indent=1))
    start, loss = time.monotonic(), float("nan")
    stop = min(recipe.steps, until) if until is not None else recipe.steps
    while step < stop and time.monotonic() - start < minutes * 60:
        for group in opt.param_groups:
            group["lr"] = recipe.lr_at(step)
        p = mix[int(torch.randint(len(mix), (1,), generator=data))] if len(mix) > 1 else task.pairs
        if recipe.repeat_mix and float(torch.rand((), generator=data)) < recipe.repeat_mix:
            batch = recall.sample_repeat(task, recipe.batch, data)
        else:
            batch = recall.sample(replace(task, pairs=p, queries=min(task.queries, p)),
                                  recipe.batch, data)
        loss_t = answer_loss(model(batch.ids), batch)
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step, loss = step + 1, loss_t.item()
        if step % eval_every == 0 or step == stop:
            row = {"step": step, "loss": loss, "lr": recipe.lr_at(step),
                   "wall_s": wall + time.monotonic() - start, **accuracy(model, test)}
            curve.append(row)
            log(f"{spec} step {step}: loss {loss:.3f} acc {row['acc']:.3f} "
                f"far {row['acc_far']:.3f} ({row['wall_s'] / 60:.1f} min)")
    wall += time.monotonic() - start
    torch.save({"plan": spec, "task": task.to_dict(), "recipe": asdict(recipe), "step": step,
                "model": model.state_dict(), "opt": opt.state_dict(), "data": data.get_state(),
                "curve": curve, "wall_s": wall, "init": source}, ckpt)
    pd.DataFrame(curve).to_csv(out / "curve.csv", index=False)
    export(model, out, spec, task, recipe, step, source)
    return curve[-1] if curve else {"step": step, "loss": loss}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mixkv_bench.train", description=__doc__.split("\n")[0])
    ap.add_argument("--plan", required=True, help="preset or plan string (12 layers)")
    ap.add_argument("--out", required=True, type=Path, help="model folder (and checkpoint)")
    ap.add_argument("--minutes", type=float, default=20.0, help="stop (and save) after this long")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--until", type=int, help="stop at this step (default: --steps)")
    ap.add_argument("--init", type=Path, help="start from this trained folder (uptraining: "
                    "consumers drop its K/V projections) instead of random weights")
    for f in Recipe.__dataclass_fields__.values():
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    for f in recall.RecallTask.__dataclass_fields__.values():
        ap.add_argument("--task-" + f.name, type=type(f.default), default=f.default)
    a = ap.parse_args(argv)
    try:
        task = recall.RecallTask(**{f: getattr(a, "task_" + f) for f in recall.RecallTask.__dataclass_fields__})
        recipe = Recipe(**{f: getattr(a, f) for f in Recipe.__dataclass_fields__})
        train(a.plan, a.out, task, recipe, a.minutes, a.eval_every, a.until, init=a.init)
    except plans.PlanError as e:
        print(f"error: invalid plan: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
