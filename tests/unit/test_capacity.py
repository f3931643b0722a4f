"""KV capacity formulas: seed formulas, the worked example, presets, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mixkv_bench.capacity import capacity_rows
from sglang_mixkv import kv_math as cap
from sglang_mixkv.defaults import parse_bytes
from sglang_mixkv.plan import PRESET_NAMES, parse, preset
from sglang_mixkv.model_folder import SIZES, param_count

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
    assert cap.request_bytes(p, d, window=10, tokens=100) == 100 * 16 + 10 * 16 == 1760
    # 17,600 bytes hold 10 such requests (1,000 tokens); one byte less, 9 (900 tokens)
    assert cap.max_concurrent(17_600, p, d, 10, 100) == 10
    assert cap.max_tokens(17_600, p, d, 10, 100) == 1000
    assert cap.max_concurrent(17_599, p, d, 10, 100) == 9


def test_max_tokens_of_plain_plans_ignores_request_length():
    p, d = preset("standard", 4), cap.KVDims(2, 8, 2)
    b = 1 << 20
    assert cap.max_tokens(b, p, d, 1024, 5) == cap.max_tokens(b, p, d, 1024, 32000) == b // (4 * 64)


def test_pool_split_window_bounded_and_rest_global():
    p, d = preset("ma", 12), cap.KVDims(2, 32, 4)
    assert str(p) == "GLlLllLlLllg"  # 1 global producer, 4 local producers
    split = cap.pool_split(8 << 20, p, d, window=32, max_running=4, chunk=64, eviction_interval=4)
    # By hand: K+V of one layer-token = 2 x 2 heads x 32 x 4 B = 512 B, so 512 B per global
    # token and 4 x 512 = 2,048 B per local token. Local pool: per running request one
    # window + the eviction interval + 2 pages (32 + 4 + 2 = 38), x 4 requests, + 2
    # chunks in flight (128) + 1 page = 281 tokens = 575,488 B. Global pool: the rest,
    # (8,388,608 - 575,488) / 512 = 15,260 tokens exactly.
    assert split == cap.PoolSplit(global_tokens=15_260, local_tokens=281,
                                  global_bytes=15_260 * 512, local_bytes=575_488)
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
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("80 GB") == 80 * 10**9
    assert parse_bytes("1e6") == 10**6
    with pytest.raises(ValueError):
        parse_bytes("eighty")
    with pytest.raises(ValueError, match="no memory at all"):  # a server could not start
        parse_bytes("0MiB")


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


def test_pool_max_requests_counts_what_each_pool_holds():
    p, d = preset("ma", 12), cap.KVDims(2, 32, 4)
    kw = dict(window=32, chunk=64, eviction_interval=4)
    split = cap.pool_split(8 << 20, p, d, max_running=10, **kw)
    # By hand (512 B per global token, 2,048 B per local one): local 38 x 10 + 129 = 509
    # tokens (1,042,432 B), global (8,388,608 - 1,042,432) / 512 = 14,348 tokens. The global
    # pool holds 14,348 // 300 = 47 requests of 300 tokens, the local one exactly the 10
    # it was sized for: (509 - 129) // 38.
    assert (split.global_tokens, split.local_tokens) == (14_348, 509)
    assert cap.pool_max_requests(split, p, 300, **kw) == 10
    # short requests (never out of their window) cost their tokens + a page locally
    assert cap.local_per_request(32, 1, 4, tokens=10) == 11
    # a plan without local layers: the global pool alone, 8,388,608 // (12 x 512) = 1,365
    # tokens, 4 requests of 300
    std = cap.pool_split(8 << 20, preset("standard", 12), d, max_running=10, **kw)
    assert std.global_tokens == 1_365
    assert cap.pool_max_requests(std, preset("standard", 12), 300, **kw) == 4
    # all-local (2 producers, 1,024 B per token): 1,048,576 / 1,024 = 1,024 tokens; after
    # two chunks and a page, (1,024 - 129) // 38 = 23 requests
    a = cap.pool_split(1 << 20, parse("LlLl"), d, max_running=10, **kw)
    assert a.local_tokens == 1_024
    assert cap.pool_max_requests(a, parse("LlLl"), 300, **kw) == 23


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sglang_mixkv.capacity", *args],
                          capture_output=True, text=True)


def test_cli_pools_hold_within_5_percent_of_the_formula_at_paper_scale():
    """One window per running request: at the formula's request count, the pools our
    configurator would allocate on an 80 GiB GPU hold at least 95% of the formula's
    requests for every preset (two windows per request held 76-93%)."""
    r = _cli("--plans", "all", "--model", "paper", "--gpu-mem", "80GiB", "--json")
    assert r.returncode == 0, r.stderr
    for row in json.loads(r.stdout):
        n = row["max_concurrent_31k"]
        assert row["max_running"] == n
        assert 0.95 * n <= row["pool_max_requests"] <= n, row
        if row["local_producers"]:
            assert row["pool_local_tokens"] >= n * 1024  # never less than a window each


def test_cli_max_running_sizes_the_local_pool():
    rows = {m: json.loads(_cli("--plans", "ma", "--max-running", str(m), "--json").stdout)[0]
            for m in (100, 300)}
    assert rows[100]["max_running"] == 100 and rows[100]["pool_max_requests"] == 100
    assert rows[300]["pool_local_tokens"] > rows[100]["pool_local_tokens"]
    assert rows[300]["pool_global_tokens"] < rows[100]["pool_global_tokens"]


def test_cli_kv_heads_mqa():
    """--kv-heads 1 (MQA): a quarter of the paper size's GQA-4 KV bytes per token, and
    K/V projections that shrink the weights."""
    gqa, mqa = (json.loads(_cli("--plans", "ma,cla2", "--json", *extra).stdout)
                for extra in ((), ("--kv-heads", "1")))
    for g, m in zip(gqa, mqa):
        assert (g["kv_heads"], m["kv_heads"]) == (4, 1)
        assert m["global_bytes_per_token"] * 4 == g["global_bytes_per_token"]
        assert m["weight_bytes"] < g["weight_bytes"]
        assert m["max_concurrent_31k"] > 3 * g["max_concurrent_31k"]
    r = _cli("--plans", "ma", "--kv-heads", "3")
    assert r.returncode == 2 and "must divide" in r.stderr


def test_cli_budget_below_the_weights_is_a_clear_error():
    r = _cli("--plans", "ma", "--model", "paper", "--gpu-mem", "1GiB")
    assert r.returncode == 2 and not r.stdout
    assert "cannot hold" in r.stderr and "weights" in r.stderr


def test_readme_capacity_figures_are_the_modules():
    """The figures the README quotes for the paper size on an 80 GiB GPU come from
    ``mixkv_bench.capacity.capacity_rows``: if the formula or the pool split changes, this fails until the
    README says what the code computes."""
    from sglang_mixkv.model_folder import get_size

    rows = {r["plan"]: r for r in capacity_rows(["standard", "ma", "yoco"], get_size("paper"),
                                                80 << 30, 0.85)}
    text = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    s, m, y = rows["standard"], rows["ma"], rows["yoco"]
    assert (f"`standard` holds {s['max_concurrent_31k']} at once "
            f"({s['max_tokens'] / 1e6:.2f}M tokens), "
            f"`ma` {m['max_concurrent_31k']} ({m['max_tokens'] / 1e6:.1f}M tokens)"
            ) in text
    assert (f"(`ma` {m['pool_max_requests']} of {m['max_concurrent_31k']}, "
            f"`yoco` {y['pool_max_requests']} of {y['max_concurrent_31k']})") in text
    assert f"about {m['kv_budget_bytes'] / 2**30:.1f} GiB" in text
