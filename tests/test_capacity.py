"""KV capacity formulas: seed formulas, the worked example, presets, the CLI."""

import json
import subprocess
import sys

import pytest

from sglang_mixkv import capacity as cap
from sglang_mixkv.plan import PRESET_NAMES, parse, preset
from sglang_mixkv.sizes import SIZES, param_count

MHA = cap.KVDims(kv_heads=40, head_dim=128, dtype_bytes=2)  # LLaMA-13B: 40 heads x 128 = 5120


def test_llama13b_worked_example():
    standard = preset("standard", 40)
    pt = cap.bytes_per_token(standard, MHA)
    assert pt.global_bytes == 819_200 == 4 * 5120 * 40  # 800 KB per token
    assert cap.request_bytes(standard, MHA, window=1024, tokens=2048) == 2048 * 819_200  # ~1.6 GB
    assert cap.seed_kv_bytes(1, 40, 5120, 2048) == 2048 * 819_200


def test_seed_formula_variants_agree_with_plans():
    n, hidden, seq = 24, 2048, 1000
    gqa = cap.KVDims(kv_heads=4, head_dim=128)  # 16 query heads -> group 4
    for name, factor in (("standard", 1), ("cla2", 2), ("cla3", 3)):
        per_token = cap.bytes_per_token(preset(name, n), gqa).global_bytes
        assert per_token * seq == cap.seed_kv_bytes(1, n, hidden, seq, gqa_group=4, cla_factor=factor)
    # YOCO: one global producer serves the top half; the bottom half is local (windowed).
    yoco = preset("yoco", n)
    assert cap.bytes_per_token(yoco, gqa).global_bytes * seq == cap.seed_kv_bytes(
        1, n, hidden, seq, gqa_group=4, yoco_layers=1)
    assert cap.seed_kv_bytes(3, n, hidden, seq) == 3 * cap.seed_kv_bytes(1, n, hidden, seq)


def test_window_bounds_local_cost():
    p, d = parse("GLl"), cap.KVDims(1, 4, 2)  # 16 bytes per layer-token
    assert cap.bytes_per_token(p, d) == cap.PerToken(16, 16)
    assert cap.request_bytes(p, d, window=10, tokens=5) == 5 * 16 + 5 * 16
    assert cap.request_bytes(p, d, window=10, tokens=100) == 100 * 16 + 10 * 16
    budget = 10 * cap.request_bytes(p, d, 10, 100)
    assert cap.max_concurrent(budget, p, d, 10, 100) == 10
    assert cap.max_tokens(budget, p, d, 10, 100) == 1000


def test_max_tokens_of_plain_plans_ignores_request_length():
    p, d = preset("standard", 4), cap.KVDims(2, 8, 2)
    b = 1 << 20
    assert cap.max_tokens(b, p, d, 1024, 5) == cap.max_tokens(b, p, d, 1024, 32000) == b // (4 * 64)


def test_pool_split_window_bounded_and_rest_global():
    p, d = preset("ma", 12), cap.KVDims(2, 32, 4)
    split = cap.pool_split(8 << 20, p, d, window=32, max_running=4, chunk=64, eviction_interval=4)
    per_request = 2 * 32 + 4 + 2  # two windows with the radix cache on
    no_radix = cap.pool_split(8 << 20, p, d, window=32, max_running=4, chunk=64,
                              eviction_interval=4, radix_cache=False)
    assert no_radix.local_tokens == (32 + 4 + 2) * 4 + 2 * 64 + 1
    assert split.local_tokens == per_request * 4 + 2 * 64 + 1
    pt = cap.bytes_per_token(p, d)
    assert split.local_bytes == split.local_tokens * pt.local_bytes
    assert split.global_tokens == ((8 << 20) - split.local_bytes) // pt.global_bytes
    # no local layers: the local pool mirrors the global one at zero bytes
    c = cap.pool_split(1 << 20, preset("cla2", 12), d, window=32, max_running=4, chunk=64)
    assert c.global_tokens == c.local_tokens and c.local_bytes == 0
    # no global layers: everything is local
    a = cap.pool_split(1 << 20, parse("LlLl"), d, window=32, max_running=4, chunk=64)
    assert a.global_tokens == 0 and a.local_tokens == (1 << 20) // (2 * 512)  # 2 local producers x 512 B
    with pytest.raises(ValueError, match="leaves no room for the global pool"):
        cap.pool_split(1 << 12, p, d, window=32, max_running=4, chunk=64)


def test_page_alignment():
    p, d = preset("ma", 12), cap.KVDims(2, 32, 4)
    s = cap.pool_split(8 << 20, p, d, window=32, max_running=3, chunk=64, page=16)
    assert s.local_tokens % 16 == 0 and s.global_tokens % 16 == 0


def test_parse_bytes():
    assert cap.parse_bytes("80GiB") == 80 * 2**30
    assert cap.parse_bytes("80 GB") == 80 * 10**9
    assert cap.parse_bytes("1e6") == 10**6
    with pytest.raises(ValueError):
        cap.parse_bytes("eighty")


def test_param_count_paper_size_is_about_2b():
    size = SIZES["paper"]
    assert 1.8e9 < param_count(size, preset("standard", 24)) < 2.2e9
    # consumers own no K/V projections
    diff = param_count(size, preset("standard", 24)) - param_count(size, preset("ma", 24))
    assert diff == 15 * 2 * size.hidden * size.kv_heads * size.head_dim


def test_cli_json_has_every_preset_with_design_counts():
    out = subprocess.run(
        [sys.executable, "-m", "sglang_mixkv.capacity", "--plans", "all", "--gpu-mem", "80GiB", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    rows = json.loads(out)
    assert [r["plan"] for r in rows] == list(PRESET_NAMES)
    keys = {"plan", "layers", "global_producers", "local_producers", "global_bytes_per_token",
            "local_bytes_per_token", "max_tokens", "max_concurrent_31k"}
    by = {r["plan"]: r for r in rows}
    for r in rows:
        assert keys <= set(r) and r["layers"] == 24
    assert (by["ma"]["global_producers"], by["ma"]["local_producers"]) == (1, 8)
    assert (by["swa"]["global_producers"], by["swa"]["local_producers"]) == (4, 20)
    assert by["standard"]["global_bytes_per_token"] == 24 * 2 * 4 * 128 * 2
    # sharing buys capacity: every MixAttention preset holds more than standard
    assert all(by[n]["max_tokens"] > by["standard"]["max_tokens"] for n in PRESET_NAMES if n != "standard")
    assert by["ma"]["max_concurrent_31k"] > 10 * by["standard"]["max_concurrent_31k"]


def test_cli_writes_csv_and_png(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "sglang_mixkv.capacity", "--plans", "standard,ma,GLlLllLlLllg",
         "--model", "tiny", "--gpu-mem", "1GiB", "--csv", str(tmp_path / "c.csv"),
         "--png", str(tmp_path / "c.png")],
        check=True, capture_output=True,
    )
    assert (tmp_path / "c.csv").read_text().count("\n") == 4
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_cli_bad_plan_is_a_clear_error():
    r = subprocess.run([sys.executable, "-m", "sglang_mixkv.capacity", "--plans", "GLx"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown letter 'x'" in r.stderr
