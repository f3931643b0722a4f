"""KV capacity formulas: seed formulas, the worked example, presets, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

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
    per_request = 32 + 4 + 2  # one window, with the radix cache on too (sglang_seams.radix)
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


def test_pool_max_requests_counts_what_each_pool_holds():
    p, d = preset("ma", 12), cap.KVDims(2, 32, 4)
    kw = dict(window=32, chunk=64, eviction_interval=4)
    split = cap.pool_split(8 << 20, p, d, max_running=10, **kw)
    # the local pool holds exactly the 10 requests it was sized for; the global pool more
    assert split.global_tokens // 300 > 10
    assert cap.pool_max_requests(split, p, 300, **kw) == 10
    # short requests (never out of their window) cost their tokens + a page locally
    assert cap.local_per_request(32, 1, 4, tokens=10) == 11
    # a plan without local layers: the global pool alone
    std = cap.pool_split(8 << 20, preset("standard", 12), d, max_running=10, **kw)
    assert cap.pool_max_requests(std, preset("standard", 12), 300, **kw) == std.global_tokens // 300
    # all-local: the one pool at one window + interval + 2 pages each, after the chunks
    a = cap.pool_split(1 << 20, parse("LlLl"), d, max_running=10, **kw)
    assert cap.pool_max_requests(a, parse("LlLl"), 300, **kw) == (a.local_tokens - 129) // 38


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
    ``capacity_rows``: if the formula or the pool split changes, this fails until the
    README says what the code computes."""
    from sglang_mixkv.sizes import get_size

    rows = {r["plan"]: r for r in cap.capacity_rows(["standard", "ma", "yoco"], get_size("paper"),
                                                    80 << 30, 0.85)}
    text = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    s, m, y = rows["standard"], rows["ma"], rows["yoco"]
    assert (f"`standard` holds {s['max_concurrent_31k']} at once "
            f"({s['max_tokens'] / 1e6:.2f}M tokens), "
            f"`ma` {m['max_concurrent_31k']} ({m['max_tokens'] / 1e6:.1f}M tokens)"
            ) in text
    assert (f"(`ma` {m['pool_max_requests']} of {m['max_concurrent_31k']}, "
            f"`yoco` {y['pool_max_requests']} of {y['max_concurrent_31k']})") in text
    assert f"about {m['kv_budget_bytes'] / 2**30:.1f} GiB" in text
