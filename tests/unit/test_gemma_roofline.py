"""The Gemma roofline (:mod:`mixkv_bench.gemma_roofline`): the work it reads from
transformers' model, held to hand counts, and stock SGLang beside ours."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mixkv_bench import gemma, gemma_roofline as gr
from mixkv_bench import roofline as rl

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny() -> gr.Shape:
    """Tiny Gemma 4: hidden 64, 4 heads of 16 (32 in full layers), 1 KV head, MLP 128,
    per-layer inputs of 8, vocab 512, layers S S F S | S F (the last two shared), fp32."""
    return gr.shape_of("tiny", gemma.TINY["gemma4"], dtype_bytes=4)


def test_layer_work_by_hand(tiny):
    mlp, ple = 3 * 64 * 128, 2 * 64 * 8
    sliding = 64 * 64 + 2 * 64 * 16 + 64 * 64 + mlp + ple  # q, k, v, o
    full = 64 * 128 + 2 * 64 * 32 + 128 * 64 + mlp + ple  # global_head_dim 32
    shared_sliding, shared_full = 2 * 64 * 64 + mlp + ple, 2 * 64 * 128 + mlp + ple  # no k, v
    assert tiny.layer_macs == (sliding, sliding, full, sliding, shared_sliding, shared_full)
    assert tiny.model_macs == 64 * 6 * 8  # the per-layer-input projection
    assert tiny.head_macs == 512 * 64
    assert tiny.gathered_row_bytes == (64 + 6 * 8) * 4  # token and per-layer embeddings
    assert tiny.streamed_bytes == (sum(tiny.layer_macs) + tiny.model_macs + tiny.head_macs) * 4
    assert [tiny.attention_flops_per_key(i) for i in (0, 2, 4, 5)] == [256, 512, 256, 512]
    assert [tiny.kv_bytes(i) for i in (0, 2, 4, 5)] == [128, 256, 128, 256]


def test_published_e2b_counts_the_double_wide_mlp_of_its_shared_layers():
    s = gr.shape("gemma-4-e2b")
    q_o, ple = 2 * 1536 * 2048, 2 * 1536 * 256
    assert s.layer_macs[0] == q_o + 2 * 1536 * 256 + 3 * 1536 * 6144 + ple
    assert s.layer_macs[15] == q_o + 3 * 1536 * 12288 + ple  # shared: no K/V, MLP x2
    assert s.gathered_row_bytes == (1536 + 35 * 256) * 2


def test_fast_prefill_runs_the_shared_tail_on_one_row(tiny):
    n, chunk = 20, 8
    stock, forwards = gr.prefill_cost(tiny, n, chunk, fast_prefill=False)
    ours, _ = gr.prefill_cost(tiny, n, chunk, fast_prefill=True)
    assert forwards == 3
    saved = 0
    for i, cap_ in ((4, 8), (5, None)):  # the tail: one sliding, one full
        saved += 2 * tiny.layer_macs[i] * (n - 1)
        saved += tiny.attention_flops_per_key(i) * (rl.causal_keys(n, cap_) - min(n, cap_ or n))
    assert stock.flops - ours.flops == saved
    # stock reads, per chunk [0,8) [8,16) [16,20): sliding 8, 16, 12 keys; full 8, 16, 20
    read_stock_tail = 128 * (8 + 16 + 12) + 256 * (8 + 16 + 20)
    assert stock.bytes - ours.bytes == read_stock_tail - (128 * 8 + 256 * 20)


def test_decode_step_by_hand(tiny):
    spans = [30.0 if i in (2, 5) else 8.0 for i in range(6)]  # full layers 2, 5
    step = gr.decode_step_cost(tiny, 3, spans)
    per_request = (tiny.gathered_row_bytes + 3 * 128 + 256  # producers' new K/V
                   + 128 * 8 * 4 + 256 * 30 * 2)  # every layer reads its producer's span
    assert step.bytes == tiny.streamed_bytes + 3 * per_request
    macs = sum(tiny.layer_macs) + tiny.model_macs + tiny.head_macs
    assert step.flops == 3 * (2 * macs + 256 * 8 * 4 + 512 * 30 * 2)


def test_cli_puts_stock_sglang_beside_ours():
    r = subprocess.run([sys.executable, "-m", "sglang_mixkv.roofline", "--model", "gemma-4-e2b",
                        "--concurrency", "1,64,300", "--json"], capture_output=True, text=True,
                       cwd=REPO, check=True)
    levels = {(row["pools"], row["level"]): row for row in json.loads(r.stdout)["levels"]}
    held = gr.admitted("gemma-4-e2b", rl.gpu("H100").memory, 0.85, 32_000)
    assert levels[(gr.STOCK, 64)]["running"] == held[gr.STOCK] < 64
    assert levels[(gr.STOCK, 64)]["limited_by"] == "kv-pool"
    assert levels[(gr.OURS, 64)]["running"] == 64
    one_stock, one_ours = levels[(gr.STOCK, 1)], levels[(gr.OURS, 1)]
    assert one_stock["tpot_ms"] == one_ours["tpot_ms"]  # the same reads per request
    assert one_ours["ttft_ms"] < one_stock["ttft_ms"] / 2  # 20 of 35 layers on one row
    assert all(levels[(gr.OURS, c)]["speedup_vs_stock"] > 1 for c in (1, 64, 300))
