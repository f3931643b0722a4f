"""Ada-KV's arithmetic by hand: the per-head selection, where the kept KV lives, what a
compressed request costs in the pools and in the roofline, the variant syntax."""

import pytest
import torch

from mixkv_bench import roofline as rl
from mixkv_bench import variants
from sglang_mixkv import adakv
from sglang_mixkv import kv_math as cap
from sglang_mixkv.model_folder import ModelSize
from sglang_mixkv.plan import parse, preset


def test_selection_by_hand():
    # 2 KV heads, 6 scored positions, budget 5 with a window of 2: B_sel = 3 per head on
    # average, 6 picks in all. Sorted over both heads: .9 .8 .7 (head 0), .6 .5 (head 1),
    # then the .1 tie: head 0 first (lower head). Head 0: 4 picks, head 1: 2. With alpha
    # 0.2 the floor is int(0.6) = 0, so head 0 keeps round(4 x 0.8) = 3 and head 1
    # round(2 x 0.8) = 2 of its best positions.
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.1, 0.1],
                           [0.6, 0.05, 0.05, 0.05, 0.05, 0.5]])
    cfg = adakv.AdaKVConfig(budget=5, window=2, alpha=0.2)
    assert adakv.head_budgets(scores, cfg).tolist() == [3, 2]
    assert [k.tolist() for k in adakv.select(scores, cfg)] == [[0, 1, 2], [0, 5]]
    # alpha 1 (SnapKV's uniform budget): floor int(3) = 3 each; head 1's third is the
    # first of its .05 plateau (lowest position)
    uniform = adakv.AdaKVConfig(budget=5, window=2, alpha=1.0)
    assert [k.tolist() for k in adakv.select(scores, uniform)] == [[0, 1, 2], [0, 1, 5]]


def test_window_scores_and_pooling_by_hand():
    # one query head, one KV head, head dim 1, P = 3, w = 1: the last query (q = 0)
    # scores the keys equally, softmax 1/3 each; key 2 is the window, keys 0, 1 scored
    q, k = torch.zeros(1, 1, 1), torch.tensor([[[1.0]], [[2.0]], [[3.0]]])
    s = adakv.window_scores(q, k, scale=1.0)
    assert torch.allclose(s, torch.full((1, 2), 1 / 3))
    # max-pooling (kernel 3): each position takes the max of its neighbours
    assert adakv.pooled(torch.tensor([[0.1, 0.5, 0.2, 0.0]]), 1, 3).tolist() == \
        [[pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.2)]]


def test_region_by_hand():
    # P = 200, B = 48: the request keeps prompt slots [151, 200): 49 slots, room for
    # 2 heads x 48 tokens + the rounding (max_cells 97 <= 2 x 49 = 98 cells)
    assert adakv.cut(200, 48) == 151 and adakv.region_slots(200, 48) == 49
    assert adakv.max_cells(2, adakv.AdaKVConfig(budget=48, window=8)) == 97 <= 2 * 49
    assert adakv.cut(48, 48) == 0 and adakv.region_slots(48, 48) == 48  # P = B
    assert adakv.cut(200, 48, page=16) == 144  # page-aligned down


def test_compressed_request_in_the_pools_by_hand():
    # P = 200 in + 20 out, B = 48: 49 kept prompt slots + 20 = 69 global slots at its
    # longest; while one prompt is prefilled, 151 slots more
    c = cap.Compression(budget=48, input_len=200)
    assert c.global_slots(220) == 69 and c.transient == 151
    assert cap.Compression(budget=48, input_len=47).global_slots(67) == 67  # not compressed
    # standard, 4 layers of 32 B per token: 128 B per global slot. 100,000 B hold
    # (100,000 - 151 x 128) // (69 x 128) = 9 compressed requests, 3 uncompressed (220 x 128)
    p, d = preset("standard", 4), cap.KVDims(1, 4, 4)
    assert cap.max_concurrent(100_000, p, d, 32, 220, c) == 9
    assert cap.max_concurrent(100_000, p, d, 32, 220) == 3
    split = cap.PoolSplit(1000, 1000, 0, 0)
    assert cap.pool_max_requests(split, p, 220, window=32, chunk=64, adakv=c) == (1000 - 151) // 69


def test_roofline_decode_reads_the_kept_prompt():
    # GLlg (window 3), prompt 10, output 3, B = 4: cut(10, 4) = 5, so 5 kept slots: the
    # global layers read 5 fewer tokens per step. Spans over contexts 11, 12: global 11.5
    # -> 6.5, local 3. Per request and step: embedding 32 B + 2 producers' new K/V 64 B +
    # (6.5 + 3 + 3 + 6.5) x 32 B = 704 B.
    small = ModelSize(name="small", num_layers=4, hidden=8, heads=2, kv_heads=1,
                      intermediate=16, vocab=10, window=3, max_position=64, dtype="float32")
    hw = rl.Hardware("toy", flops=1e12, bandwidth=1e6, memory=1 << 30)
    wl = rl.Workload(num_prompts=1, input_len=10, output_len=3, concurrency=(1,))
    srv = rl.Serving(kv_budget=1 << 20, max_running=4, chunk=16, eviction_interval=1)
    lb = rl.level_bound(small, "GLlg@adakv=4", hw, wl, 1, srv)
    assert lb.kv_bytes_per_request_step == pytest.approx(704)
    plain = rl.level_bound(small, "GLlg", hw, wl, 1, srv)
    assert plain.kv_bytes_per_request_step == pytest.approx(704 + 2 * 5 * 32)


def test_variant_syntax():
    v = variants.parse("ma@adakv=128")
    assert (v.plan, v.adakv_budget, v.serve_args()) == ("ma", 128, ["--adakv-budget", "128"])
    assert variants.parse("GLlLllLlLllg").adakv_budget is None
    for bad, says in (("ma@adakv=x", "unknown option"), ("ma@foo=1", "unknown option"),
                      ("ma@adakv=0", "at least one token"), ("@adakv=3", "no plan")):
        with pytest.raises(variants.VariantError, match=says):
            variants.parse(bad)
    assert parse("GLlg") == variants.parse("GLlg@adakv=9").resolve(4)


def test_bad_settings_name_the_bound():
    ma = preset("ma", 12)
    for cfg, says in ((adakv.AdaKVConfig(budget=32, window=32), "must be above"),
                      (adakv.AdaKVConfig(budget=40, window=8, alpha=-0.1), "[0, 1]"),
                      (adakv.AdaKVConfig(budget=40, window=8, kernel=4), "odd"),
                      (adakv.AdaKVConfig(budget=24, window=8), "below the sliding window 32"),
                      (adakv.AdaKVConfig(budget=40, window=8, rule="streaming"),
                       "must be one of adakv, recent, random"),
                      (adakv.AdaKVConfig(budget=40, window=8, rule="recent", sink=-1),
                       "at least 0")):
        with pytest.raises(adakv.AdaKVError, match=says.replace("[", r"\[").replace("]", r"\]")):
            cfg.check(ma, 32)
    with pytest.raises(adakv.AdaKVError, match="no global producer"):
        adakv.AdaKVConfig(budget=40, window=8).check(parse("LlLl"), 32)
    adakv.AdaKVConfig(budget=24, window=8).check(preset("standard", 12), None)  # no window


def test_baselines_by_hand():
    # 10 positions before the window, budget 7 with a window of 2: B_sel = 5 per head.
    # recent: sink 2 keeps positions 0, 1 and the last 3; a sink above B_sel keeps B_sel
    recent = adakv.AdaKVConfig(budget=7, window=2, rule="recent", sink=2)
    assert [k.tolist() for k in adakv.baseline(10, 2, recent, layer=3)] == [[0, 1, 7, 8, 9]] * 2
    wide = adakv.AdaKVConfig(budget=7, window=2, rule="recent", sink=9)
    assert adakv.baseline(10, 1, wide, layer=0)[0].tolist() == [0, 1, 2, 3, 4]
    # random: B_sel distinct positions per head, ascending, fixed by (seed, layer, head)
    rnd = adakv.AdaKVConfig(budget=7, window=2, rule="random", seed=5)
    heads = [k.tolist() for k in adakv.baseline(10, 4, rnd, layer=3)]
    assert all(len(set(h)) == 5 and h == sorted(h) and max(h) < 10 for h in heads)
    assert len({tuple(h) for h in heads}) > 1  # heads draw apart
    assert [k.tolist() for k in adakv.baseline(10, 2, rnd, layer=3, first_head=2)] == heads[2:]
    assert [k.tolist() for k in adakv.baseline(10, 4, rnd, layer=3)] == heads
    assert [k.tolist() for k in adakv.baseline(10, 4, rnd, layer=3, key=1)] != heads  # a prompt's own
    assert adakv.prompt_key([1, 2]) == adakv.prompt_key([1, 2]) != adakv.prompt_key([2, 1])
    assert [k.tolist() for k in adakv.baseline(10, 4, adakv.AdaKVConfig(
        budget=7, window=2, rule="random", seed=6), layer=3)] != heads


def test_baselines_equal_the_references(tmp_path):
    """The server's baseline choice (sglang_mixkv.adakv.baseline, per rank's heads) and the
    reference's own (Reference._baseline) keep the same positions."""
    from mixkv_bench.reference import AdaBudget, Reference
    from sglang_mixkv.model_folder import get_size, write_model_folder

    size = get_size("tiny")
    write_model_folder(tmp_path, size, "ma", weights=True, seed=0)
    ref = Reference(tmp_path)
    prompt = list(range(3, 3 + 90))
    for rule in ("recent", "random"):
        kept = ref.adakv_kept(prompt, AdaBudget(budget=40, window=8, rule=rule, seed=1))
        cfg = adakv.AdaKVConfig(budget=40, window=8, rule=rule, seed=1)
        assert set(kept) == set(ref.plan.global_producers)
        for layer, heads in kept.items():
            half = ref.kv_heads // 2 or 1
            key = adakv.prompt_key(prompt)
            ours = [k.tolist() + list(range(82, 90)) for r in range(ref.kv_heads // half)
                    for k in adakv.baseline(82, half, cfg, layer, first_head=r * half, key=key)]
            assert ours == heads and all(len(h) == 40 for h in heads)
