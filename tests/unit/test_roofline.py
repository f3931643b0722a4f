"""The roofline: hand-computed FLOPs and bytes for a small plan, the level model, the CLI."""

import json
import subprocess
import sys

import pytest

from mixkv_bench import roofline as rl
from sglang_mixkv.plan import parse, preset
from sglang_mixkv.model_folder import SIZES, ModelSize

# 4 layers G L l g: layer 2 reads layer 1 (local), layer 3 reads layer 0 (global).
# hidden 8, 2 heads of 4, 1 KV head, MLP 16, vocab 10, window 3, float32.
SMALL = ModelSize(name="small", num_layers=4, hidden=8, heads=2, kv_heads=1, intermediate=16,
                  vocab=10, window=3, max_position=64, dtype="float32")
PLAN = parse("GLlg")
# Per token and layer, multiply-adds: q 8x8 = 64, o 64, MLP 3x8x16 = 384, K+V 2x8x4 = 64
# (producers only): producers 576, consumers 512. Attention: 4 x 2 heads x 4 = 32 FLOPs per
# (query, key). K+V of one token in one layer: 2 x 1 x 4 x 4 bytes = 32.


def test_prefill_by_hand():
    # prompt of 5 tokens in chunks of 4: [0, 4) and [4, 5)
    full = rl.Options(fast_prefill=False)
    cost, forwards = rl.prefill_cost(SMALL, PLAN, 5, chunk=4, opts=full)
    linear = 2 * 5 * (576 * 2 + 512 * 2)  # 21760
    # causal keys: global 1+2+3+4+5 = 15, local (W=3) 1+2+3+3+3 = 12; two of each kind
    attention = 32 * (15 * 2 + 12 * 2)  # 1728
    lm_head = 2 * 8 * 10  # the last row only
    assert cost.flops == linear + attention + lm_head == 23648
    # K/V: 2 producers write 5 tokens; every layer reads per chunk: global 4 then 5 tokens,
    # local min(start, 3) + chunk = 4 then 3 + 1 = 4
    writes, reads = 2 * 5 * 32, (2 * (4 + 5) + 2 * (4 + 4)) * 32
    assert cost.bytes == writes + reads == 1408 and forwards == 2
    # producers only read (an ideal kernel): layers 0 and 1
    ideal, _ = rl.prefill_cost(SMALL, PLAN, 5, chunk=4, opts=rl.Options(fast_prefill=False, consumer_rereads=False))
    assert ideal.bytes == writes + (9 + 8) * 32 == 864


def test_fast_prefill_counts_one_row_in_the_tail():
    assert PLAN.tail == [2, 3]  # after the last producer (layer 1)
    cost, _ = rl.prefill_cost(SMALL, PLAN, 5, chunk=4, opts=rl.Options(fast_prefill=True))
    head = 2 * 5 * 576 * 2 + 32 * 15 + 32 * 12  # layers 0 and 1 on every row
    tail = 2 * 512 * 2 + 32 * 3 + 32 * 5  # layers 2 (local: 3 keys) and 3 (global: 5) on one row
    assert cost.flops == head + tail + 160 == 14848
    assert cost.bytes == 2 * 5 * 32 + (9 + 8 + 3 + 5) * 32 == 1120
    # plans whose last layer is a producer have no tail: fast prefill changes nothing
    std = preset("standard", 4)
    assert rl.prefill_cost(SMALL, std, 5, chunk=4) == \
        rl.prefill_cost(SMALL, std, 5, chunk=4, opts=rl.Options(fast_prefill=False))


def test_decode_step_by_hand():
    # 2 requests attending 6 tokens: global layers 6, local layers min(6, 3) = 3
    step = rl.decode_step_cost(SMALL, PLAN, 2, 6)
    per_request_flops = 160 + 2 * (576 * 2 + 512 * 2) + 32 * (6 + 3 + 3 + 6)
    assert step.flops == 2 * per_request_flops == 10176
    # parameters: 4 x (2x8 norms + 64 + 64 + 384) + 2 x 64 (K/V) + 2 x 10 x 8 + 8 = 2408;
    # a step streams all but the embedding table: (2408 - 80) x 4 bytes
    assert rl.weight_bytes(SMALL, PLAN) == 2408 * 4
    weights = (2408 - 80) * 4
    # per request: its embedding row (32 B), 2 producers' new K/V (64 B), and every layer's
    # read of its producer's K/V: (6 + 3 + 3 + 6) tokens x 32 B -- consumers re-read
    assert step.bytes == weights + 2 * (32 + 64 + 18 * 32) == 10656
    ideal = rl.decode_step_cost(SMALL, PLAN, 2, 6, opts=rl.Options(fast_prefill=False, consumer_rereads=False))
    assert ideal.bytes == weights + 2 * (32 + 64 + 9 * 32)
    # mean spans over contexts 2, 3, 4 with W = 3: global 3, local (2 + 3 + 3) / 3
    assert rl.mean_spans(PLAN, 2, 3, 3) == [3.0, 8 / 3, 8 / 3, 3.0]


def test_level_adds_prefill_and_decode_and_queues_on_the_pool():
    hw = rl.Hardware("toy", flops=1e6, bandwidth=1e6, memory=1 << 30)
    wl = rl.Workload(num_prompts=4, input_len=5, output_len=3, concurrency=(1, 4))
    # Pools by hand (32 B per token in each of the one global and one local producer):
    # local pool for 4 running requests = (3 + 1 + 2) x 4 + 2 chunks of 4 + 1 = 33 tokens
    # (1,056 B); 1,578 B leave 522 B = 16 global tokens: two requests of 5 + 3 tokens.
    srv = rl.Serving(kv_budget=1_578, max_running=4, chunk=4, eviction_interval=1)
    assert rl.pool_admitted(SMALL, PLAN, srv, 8) == 2
    lb = rl.level_bound(SMALL, "GLlg", hw, wl, 4, srv)
    assert (lb.running, lb.limited_by, lb.pool_admits) == (2, "kv-pool", 2)
    assert rl.level_bound(SMALL, "GLlg", hw, wl, 1, srv).limited_by == "level"
    # Prefill of the 4 prompts, fast prefill on (test above: 14,848 FLOPs and 1,120 B
    # each) + the streamed weights ((2,408 - 80) x 4 = 9,312 B) once per chunk forward,
    # ceil(4 x 5 / 4) = 5: 59,392 FLOPs, 4,480 + 46,560 = 51,040 B -> 59.392 ms.
    assert lb.prefill_s == pytest.approx(0.059392)
    # Decode: 2 steps per request (contexts 6, 7) at a batch of 2; mean spans global 6.5,
    # local 3 (19 per request over the 4 layers). Per request 160 + 4,352 + 32 x 19 =
    # 5,120 FLOPs and 32 + 64 + 19 x 32 = 704 B; a step 10,240 FLOPs, 9,312 + 1,408 =
    # 10,720 B -> 10.72 ms (memory); 4 x 2 / 2 = 4 steps -> 42.88 ms.
    assert lb.decode_s == pytest.approx(0.04288)
    assert lb.duration_s == pytest.approx(0.102272)
    assert lb.output_tok_per_s == pytest.approx(12 / 0.102272)
    # TTFT: one prompt alone, 2 chunk forwards: 14,848 FLOPs, 1,120 + 18,624 B -> 19.744 ms
    assert lb.ttft_ms == pytest.approx(19.744)


def test_pool_admitted_uses_the_servers_split():
    tiny, std = SIZES["tiny"], preset("standard", 12)
    # standard: 12 layers x 512 B per token; 700 tokens of pool hold 4 requests of 160
    srv = rl.Serving(kv_budget=700 * 6144, max_running=8, chunk=256, eviction_interval=4)
    assert rl.pool_admitted(tiny, std, srv, 160) == 4
    ma = preset("ma", 12)
    # ma at 64 MiB, 32 running, chunk 256: local (32 + 4 + 2) x 32 + 513 = 1,729 tokens x
    # 2,048 B; global (67,108,864 - 3,540,992) / 512 = 124,156 tokens = 215 requests of
    # 576; the local pool holds (1,729 - 513) / 38 = 32: 32 admitted
    srv = rl.Serving(kv_budget=64 << 20, max_running=32, chunk=256, eviction_interval=4)
    assert rl.pool_admitted(tiny, ma, srv, 576) == 32
    srv = rl.Serving(kv_budget=64 << 20, max_running=64, chunk=256, eviction_interval=4)
    # sized for 64: local 38 x 64 + 513 = 2,945 tokens; global (67,108,864 - 6,031,360) /
    # 512 = 119,292 tokens = 207 requests; local (2,945 - 513) / 38 = 64
    assert rl.pool_admitted(tiny, ma, srv, 576) == 64


def test_paper_test_on_an_h100():
    """The back-of-envelope roofline of the paper's test: standard ~215 TFLOP per 31K prefill, ~43 requests of
    32K in its pools, a decode step of 43 at ~70 GB; ma-offset wins at every level."""
    size = SIZES["paper"]
    std = preset("standard", 24)
    pf, _ = rl.prefill_cost(size, std, 31_000, chunk=8192)
    assert 200e12 < pf.flops < 230e12
    df = rl.sweep(size, ["standard", "ma-offset"], rl.gpu("H100"), rl.WORKLOADS["paper"])
    s = df[df.plan == "standard"].set_index("level")
    assert s.loc[300, "running"] == 43 and s.loc[300, "limited_by"] == "kv-pool"
    assert 65e9 < s.loc[300, "decode_bytes_per_step"] < 75e9 and s.loc[300, "decode_bound"] == "memory"
    m = df[df.plan == "ma-offset"].set_index("level")
    assert m.loc[300, "running"] == 300 and (m["speedup_vs_standard"] > 1.2).all()
    assert (s["prefill_bound"] == "compute").all()


def test_measure_this_is_quick_and_positive():
    hw = rl.measure_this("float32", working_set=1 << 20, seconds=0.05, threads=1)
    assert hw.flops > 1e8 and hw.bandwidth > 1e8 and hw.source.startswith("measured")


def test_cli_json_and_table():
    out = subprocess.run([sys.executable, "-m", "sglang_mixkv.roofline", "--gpu", "H100", "--plans",
                          "standard,ma-offset,yoco", "--json", "--fast-prefill"],
                         check=True, capture_output=True, text=True).stdout
    doc = json.loads(out)
    assert doc["options"]["fast_prefill"] and len(doc["levels"]) == 3 * 6
    assert any(a.startswith("fast prefill") and a.endswith(": on") for a in doc["assumptions"])
    r = subprocess.run([sys.executable, "-m", "sglang_mixkv.roofline", "--plans", "standard,GLq"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown letter 'q'" in r.stderr
    table = subprocess.run([sys.executable, "-m", "sglang_mixkv.roofline", "--gpu", "A100",
                            "--plans", "standard", "--concurrency", "1"],
                           check=True, capture_output=True, text=True).stdout
    assert "| standard |" in table and "A100" in table
