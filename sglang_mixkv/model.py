"""The MixAttention causal LM as SGLang 0.5.17 runs it.

Llama-style pre-norm blocks with GQA. Each layer follows the plan in ``config.json``
(:mod:`sglang_mixkv.plan`):

- a *producer* projects Q, K and V, writes K/V into its own KV buffer (its RadixAttention
  has its own layer id) and attends over it;
- a *consumer* projects Q only and attends over its producer's buffer: its
  RadixAttention carries the producer's layer id and is called with
  ``save_kv_cache=False``. It also receives the producer's post-RoPE K/V of the same
  forward pass, which backends that attend over the new tokens directly (flashinfer
  ragged prefill, fa3) need and cache-reading backends ignore.
- local layers attend over the last ``sliding_window`` tokens (their own included);
  SGLang's convention for ``sliding_window_size`` is that count minus one.

The KV pool (producers only, windowed local pool) is sized and built by SGLang from
the ``is_hybrid_swa`` / ``hybrid_layer_pattern`` config fields plus our pool
configurator (``sglang_seams/mixkv/pools.py``); the model never touches it. What the
model needs of SGLang beyond its layers (which rows fast prefill computes, the narrowed
batch it attends with) comes from ``sglang_seams/mixkv/fast_prefill.py``.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import torch
from torch import nn

from sglang.srt.distributed import get_pp_group
from sglang.srt.layers.activation import SiluAndMul
from sglang.srt.layers.layernorm import RMSNorm
from sglang.srt.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from sglang.srt.layers.logits_processor import LogitsProcessor
from sglang.srt.layers.quantization.base_config import QuantizationConfig
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from sglang.srt.model_executor.forward_batch_info import ForwardBatch
from sglang.srt.model_loader.weight_utils import default_weight_loader
from sglang.srt.runtime_context import get_parallel
from sglang.srt.utils import add_prefix

from sglang_mixkv import adakv
from sglang_mixkv import plan as plans
from sglang_mixkv.rope import Rope
from sglang_mixkv.sglang_seams.mixkv import adakv as adakv_seam
from sglang_mixkv.sglang_seams.mixkv import fast_prefill

logger = logging.getLogger(__name__)

#: K/V of the producers seen so far in one forward pass, by producer layer id.
ProducerKV = dict[int, tuple[torch.Tensor, torch.Tensor]]


class Norm(RMSNorm):
    """SGLang's RMSNorm; float32 stays on plain torch on CUDA.

    ``RMSNorm.forward_cuda`` (``layers/layernorm.py:405-490``) calls sgl_kernel's
    ``rmsnorm`` / ``fused_add_rmsnorm``, which dispatch fp16/bf16 only: a float32
    model (the ``tiny`` size) would die at start-up on a GPU."""

    def forward_cuda(self, x, residual=None, post_residual_addition=None):
        if x.dtype == torch.float32:
            return self.forward_native(x, residual, post_residual_addition)
        return super().forward_cuda(x, residual, post_residual_addition)


class Act(SiluAndMul):
    """SGLang's SiluAndMul; float32 stays on plain torch on CUDA (its ``forward_cuda``,
    ``layers/activation.py:142-147``, calls sgl_kernel's ``silu_and_mul``, built for
    half precision)."""

    def forward_cuda(self, x):
        if x.dtype == torch.float32:
            return self.forward_native(x)
        return super().forward_cuda(x)


def sglang_window(config) -> int:
    """SGLang's ``sliding_window_size`` for local layers: the window minus one."""
    return int(config.sliding_window) - 1


def _checkpoint_heads(config) -> int:
    """Attention heads as in the checkpoint. On CPU, SGLang pads heads that do not divide
    the TP size (e.g. MQA at tp 2, ``configs/update_config.py:193-250``) for its CPU
    engine's padded weight loading; ``original_num_attention_heads`` keeps the real count."""
    return getattr(config, "original_num_attention_heads", None) or config.num_attention_heads


def _server_args():
    """SGLang's published server arguments (None outside a server)."""
    try:
        from sglang.srt.server_args import get_global_server_args

        return get_global_server_args()
    except Exception:  # noqa: BLE001 - no server args published (a test building the model)
        return None


def _page_size() -> int:
    """SGLang's ``--page-size`` (1 outside a server)."""
    sa = _server_args()
    return int(getattr(sa, "page_size", None) or 1)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // _checkpoint_heads(config)


class MixAttention(nn.Module):
    def __init__(self, config, layer_id: int, layer: plans.Layer, rope: Rope,
                 quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        tp = get_parallel().tp_size
        self.layer_id = layer_id
        self.is_producer = layer.source == layer_id
        self.source = layer.source
        # The checkpoint's heads (not SGLang's CPU padding); QKVParallelLinear replicates
        # KV heads that do not divide the TP size, as on GPU.
        heads = _checkpoint_heads(config)
        kv_heads = getattr(config, "original_total_num_kv_heads", None) or config.num_key_value_heads
        self.head_dim = _head_dim(config)
        if heads % tp or (kv_heads % tp and tp % kv_heads):
            raise ValueError(f"{heads} heads / {kv_heads} KV heads cannot split over tp={tp}")
        self.num_heads = heads // tp
        self.num_kv_heads = max(1, kv_heads // tp)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.rope = rope
        #: Ada-KV's hook (set by the model when Ada-KV is on): window queries for scoring
        self.ada: Optional[adakv_seam.ModelHook] = None
        if self.is_producer:
            self.qkv_proj = QKVParallelLinear(
                config.hidden_size, self.head_dim, heads, kv_heads, bias=False,
                quant_config=quant_config, prefix=add_prefix("qkv_proj", prefix),
            )
        else:
            self.q_proj = ColumnParallelLinear(
                config.hidden_size, heads * self.head_dim, bias=False,
                quant_config=quant_config, prefix=add_prefix("q_proj", prefix),
            )
        self.o_proj = RowParallelLinear(
            heads * self.head_dim, config.hidden_size, bias=False,
            quant_config=quant_config, prefix=add_prefix("o_proj", prefix),
        )
        self.attn = RadixAttention(
            self.num_heads, self.head_dim, self.head_dim**-0.5,
            num_kv_heads=self.num_kv_heads,
            layer_id=layer.source,  # a consumer reads its producer's KV buffer
            sliding_window_size=sglang_window(config) if layer.kind == plans.LOCAL else -1,
            quant_config=quant_config, prefix=add_prefix("attn", prefix),
        )

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                forward_batch: ForwardBatch, kv: ProducerKV) -> torch.Tensor:
        if self.is_producer:
            qkv, _ = self.qkv_proj(hidden)
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q, k = self.rope(positions, q, k)
            self._stash(forward_batch, q)
            kv[self.layer_id] = (k, v)
            out = self.attn(q, k, v, forward_batch)
        else:
            q, _ = self.q_proj(hidden)
            q, _ = self.rope(positions, q)
            self._stash(forward_batch, q)
            k, v = kv[self.source]
            out = self.attn(q, k, v, forward_batch, save_kv_cache=False)
        out, _ = self.o_proj(out)
        return out

    def _stash(self, forward_batch, q: torch.Tensor) -> None:
        """Ada-KV: hand this layer's window queries to the hook, if it scores with them."""
        ada = self.ada
        if ada is not None and ada.batch is not None and ada.scores_with(self.layer_id, self.source):
            ada.stash(forward_batch, self.source, self.layer_id, q, self.num_heads, self.head_dim)


class MLP(nn.Module):
    def __init__(self, config, quant_config, prefix: str):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [config.intermediate_size] * 2, bias=False,
            quant_config=quant_config, prefix=add_prefix("gate_up_proj", prefix),
        )
        self.down_proj = RowParallelLinear(
            config.intermediate_size, config.hidden_size, bias=False,
            quant_config=quant_config, prefix=add_prefix("down_proj", prefix),
        )
        self.act = Act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, _ = self.gate_up_proj(x)
        x, _ = self.down_proj(self.act(gate_up))
        return x


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_id: int, layer: plans.Layer, rope: Rope,
                 quant_config, prefix: str):
        super().__init__()
        self.self_attn = MixAttention(config, layer_id, layer, rope, quant_config,
                                      add_prefix("self_attn", prefix))
        self.mlp = MLP(config, quant_config, add_prefix("mlp", prefix))
        self.input_layernorm = Norm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Norm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, positions, hidden, forward_batch, residual, kv: ProducerKV):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, forward_batch, kv)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class MixAttentionModel(nn.Module):
    def __init__(self, config, plan: plans.Plan, quant_config=None, prefix: str = ""):
        super().__init__()
        theta = getattr(config, "rope_theta", None) or (
            (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        )
        self.rope = Rope(_head_dim(config), config.max_position_embeddings, theta)
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, quant_config=quant_config,
            prefix=add_prefix("embed_tokens", prefix),
        )
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, layer, self.rope, quant_config,
                         add_prefix(f"layers.{i}", prefix))
            for i, layer in enumerate(plan.layers)
        )
        self.norm = Norm(config.hidden_size, eps=config.rms_norm_eps)
        # SGLang's weight loading and PP code read these.
        self.start_layer, self.end_layer = 0, len(self.layers)

        # Layers from here on own no KV (None: the last layer is a producer, or the
        # config turns fast prefill off): see forward_tail_rows.
        self.tail_start = plan.tail[0] if plan.tail and fast_prefill.enabled(config) else None
        #: the producers the tail reads: the only K/V it needs at its rows
        self.tail_sources = sorted({plan.layers[i].source for i in plan.tail})
        self.log_tail = fast_prefill.log_enabled()
        #: Ada-KV (None: off): scoring, compaction and kept-set bookkeeping
        cfg = adakv.config_for(config)
        self.ada = None
        if cfg is not None:
            cfg.check(plan, getattr(config, "sliding_window", None) if plan.local_producers else None)
            sa = _server_args()
            adakv.check_server(bool(getattr(sa, "enable_streaming_session", False)),
                               getattr(sa, "disaggregation_mode", None))
            adakv_seam.configure(cfg, _page_size())
            self.ada = adakv_seam.ModelHook(cfg, plan)
            for layer in self.layers:
                layer.self_attn.ada = self.ada

    def _embed(self, input_ids, input_embeds):
        """The first layer's input: the token embeddings, or a request's own
        ``input_embeds`` in the model's dtype (SGLang 0.5.17 hands them over as bfloat16
        whatever the model's dtype, ``model_executor/model_runner.py:1344``: a float32
        model's first projection raised on them, in the scheduler)."""
        if input_embeds is None:
            return self.embed_tokens(input_ids)
        return input_embeds.to(self.embed_tokens.weight.dtype)

    def forward(self, input_ids, positions, forward_batch, input_embeds=None):
        """Every layer on every row; the final-norm hidden states [tokens, hidden]."""
        hidden = self._embed(input_ids, input_embeds)
        kv: ProducerKV = {}  # lives for this forward pass only
        hidden, residual = self._run(self.layers, positions, hidden, None, forward_batch, kv)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def forward_tail_rows(self, input_ids, positions, forward_batch,
                          rows: fast_prefill.TailRows, input_embeds=None):
        """Fast prefill: layers up to the last producer on every row, the consumer-only
        tail on ``rows`` only (the rows the logits processor reads). Exact: a tail layer
        writes no KV, so its outputs at other rows feed nothing.

        The tail attends with a narrowed copy of the batch (``rows`` as the extend, the
        rest as cached prefix, written by the producers above) and the producers' K/V of
        those rows (:func:`fast_prefill.attending_with` plans the backend for it).
        Returns [tokens, hidden] with the final norm applied at ``rows`` and zeros
        elsewhere."""
        hidden = self._embed(input_ids, input_embeds)
        kv: ProducerKV = {}
        t = self.tail_start
        hidden, residual = self._run(self.layers[:t], positions, hidden, None, forward_batch, kv)
        idx = rows.index
        out = hidden.new_zeros(hidden.shape)
        if len(idx):  # else every request is in a middle chunk: nothing is read
            kv_rows = {src: (kv[src][0][idx], kv[src][1][idx]) for src in self.tail_sources}
            with fast_prefill.attending_with(forward_batch, rows) as view:
                h, r = self._run(self.layers[t:], view.positions, hidden[idx], residual[idx],
                                 view, kv_rows)
            out[idx], _ = self.norm(h, r)
        if self.log_tail:
            logger.info("mixkv fast prefill: tail layers %d-%d ran on %d of %d rows", t,
                        len(self.layers) - 1, len(idx), hidden.shape[0])
        return out

    @staticmethod
    def _run(layers, positions, hidden, residual, forward_batch, kv: ProducerKV):
        for layer in layers:
            hidden, residual = layer(positions, hidden, forward_batch, residual, kv)
        return hidden, residual


class MixAttentionForCausalLM(nn.Module):
    """Entry point SGLang instantiates for ``architectures: [MixAttentionForCausalLM]``."""

    def __init__(self, config, quant_config: Optional[QuantizationConfig] = None,
                 prefix: str = ""):
        super().__init__()
        if get_pp_group().world_size > 1:
            raise NotImplementedError("MixAttention models do not support pipeline parallelism")
        self.config = config
        self.plan = plans.from_config(config)  # raises PlanError on a bad plan
        self.quant_config = quant_config
        self.model = MixAttentionModel(config, self.plan, quant_config, add_prefix("model", prefix))
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size,
                                          quant_config=quant_config,
                                          prefix=add_prefix("lm_head", prefix))
        self.logits_processor = LogitsProcessor(config)

    def get_attention_sliding_window_size(self) -> Optional[int]:
        """SGLang's window (tokens minus one) for its SWA pool and radix cache.

        A plan with consumers but no local producers still uses the hybrid pool (to
        own buffers for producers only); its "local" pool is empty, and a window no
        request reaches keeps SGLang from ever evicting anything on its behalf."""
        if self.plan.local_producers:
            return sglang_window(self.config)
        if getattr(self.config, "is_hybrid_swa", False):
            return int(self.config.max_position_embeddings)
        return None

    @torch.no_grad()
    def forward(self, input_ids, positions, forward_batch: ForwardBatch,
                input_embeds=None, get_embedding: bool = False, **_):
        ada = self.model.ada
        if ada is not None:
            ada.begin(forward_batch)
        rows = None
        if self.model.tail_start is not None and not get_embedding:
            rows = fast_prefill.tail_rows(
                forward_batch, ada.tail_rows_needed(forward_batch) if ada is not None else None)
        if rows is None:
            hidden = self.model(input_ids, positions, forward_batch, input_embeds)
        else:
            hidden = self.model.forward_tail_rows(input_ids, positions, forward_batch, rows,
                                                  input_embeds)
        out = self.logits_processor(input_ids, hidden, self.lm_head, forward_batch)
        if ada is not None:
            ada.finish(forward_batch, self.model.layers, out)
        return out

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        stacked = [  # (our param, checkpoint name, shard)
            (".qkv_proj", ".q_proj", "q"),
            (".qkv_proj", ".k_proj", "k"),
            (".qkv_proj", ".v_proj", "v"),
            (".gate_up_proj", ".gate_proj", 0),
            (".gate_up_proj", ".up_proj", 1),
        ]
        params = dict(self.named_parameters())
        for name, tensor in weights:
            if "rotary_emb" in name:
                continue
            if self.config.tie_word_embeddings and name.startswith("lm_head."):
                continue
            if name in params:  # a consumer's q_proj lands here, as do norms etc.
                p = params[name]
                getattr(p, "weight_loader", default_weight_loader)(p, tensor)
                continue
            for ours, theirs, shard in stacked:
                if theirs in name and name.replace(theirs, ours) in params:
                    p = params[name.replace(theirs, ours)]
                    p.weight_loader(p, tensor, shard)
                    break
            else:
                raise ValueError(
                    f"checkpoint tensor {name} has no place in plan {self.plan}: "
                    "consumer layers own no k_proj/v_proj"
                )


EntryClass = MixAttentionForCausalLM
