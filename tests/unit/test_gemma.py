"""Gemma 3n / 4 as plans, the stock-vs-ours pool arithmetic, and what ``serve`` and
``capacity`` do with them (no SGLang here; the served models are in
``tests/server/test_gemma.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mixkv_bench import gemma as bench_gemma
from sglang_mixkv import gemma
from sglang_mixkv import kv_math as cap
from sglang_mixkv.plan import GLOBAL, LOCAL, PlanError
from sglang_mixkv.served import plan_for

REPO = Path(__file__).resolve().parents[2]
S, F = "sliding_attention", "full_attention"


def test_gemma4_e2b_producers_are_the_published_ones():
    """E2B: 35 layers, full every fifth, the last 20 shared; the shared sliding layers
    read layer 13 and the shared full ones layer 14 (as NVIDIA's and ollama's Gemma 4
    code has it: ``first_kv_shared_layer_idx == 15``, ``KVShareMap[15] = 13``, ``[19] = 14``)."""
    plan = gemma.plan_of({"model_type": "gemma4", "text_config": bench_gemma.PUBLISHED["gemma-4-e2b"]})
    assert len(plan) == 35 and plan.producers == list(range(15))
    assert plan.global_producers == [4, 9, 14]
    assert {plan.layers[i].source for i in range(15, 35) if plan.layers[i].kind == LOCAL} == {13}
    assert {plan.layers[i].source for i in range(15, 35) if plan.layers[i].kind == GLOBAL} == {14}


def test_gemma3n_rule_matches_sglangs_hard_coded_one_on_the_published_shapes():
    """SGLang's Gemma 3n wires shared sliding layers to the layer two before the tail and
    full ones to the layer before it; on the published shapes that is transformers' rule."""
    for name in ("gemma-3n-e2b", "gemma-3n-e4b"):
        fields = bench_gemma.PUBLISHED[name]
        plan = gemma.plan_of(fields)
        first = fields["num_hidden_layers"] - fields["num_kv_shared_layers"]
        for layer in plan.layers[first:]:
            assert layer.source == (first - 2 if layer.kind == LOCAL else first - 1)


def test_plan_for_sees_gemma_text_and_multimodal_configs_and_nothing_else():
    text = dict(model_type="gemma4_text", num_hidden_layers=3, layer_types=[S, F, S],
                num_kv_shared_layers=1)
    assert str(plan_for(text)) == "LGl"
    assert str(plan_for({"model_type": "gemma4", "text_config": text})) == "LGl"
    assert plan_for({"model_type": "llama", "num_hidden_layers": 3}) is None
    assert plan_for({"model_type": "gemma3", "layer_types": [S, F]}) is None


@pytest.mark.parametrize("types, shared, message", [
    ([F, F, S], 1, "no earlier non-shared layer"),
    ([S, "chunked_attention", F], 0, "chunked_attention"),
    ([S, F], 2, "num_kv_shared_layers=2"),
])
def test_bad_gemma_configs_are_refused_with_the_reason(types, shared, message):
    cfg = dict(model_type="gemma3n_text", num_hidden_layers=len(types), layer_types=types,
               num_kv_shared_layers=shared)
    with pytest.raises(PlanError, match=message):
        gemma.plan_of(cfg)


def test_stock_and_our_pools_by_hand():
    """Gemma 4 E2B's geometry: full layers 1 KV head x 512 dims, sliding 1 x 256, bf16.
    Stock: every layer a buffer, hybrid: budget / (7 x 2048 + 0.8 x 28 x 1024) full tokens.
    Ours: 3 full producers x 2048 per token, 12 sliding x 1024 per token of the window."""
    fields = bench_gemma.PUBLISHED["gemma-4-e2b"]
    plan, dims = gemma.plan_of(fields), bench_gemma.kv_dims(fields)
    assert (dims.layer_bytes, dims.local_layer_bytes) == (2048, 1024)
    assert cap.bytes_per_token(plan, dims) == cap.PerToken(6144, 12288)
    budget = 10 * 2**30
    stock = cap.stock_pool_split(budget, plan, dims, hybrid=True)
    assert stock.global_tokens == int(budget // (7 * 2048 + 0.8 * 28 * 1024))
    assert stock.local_tokens == int(stock.global_tokens * 0.8)
    gemma3n = bench_gemma.PUBLISHED["gemma-3n-e2b"]
    one_pool = cap.stock_pool_split(budget, gemma.plan_of(gemma3n), bench_gemma.kv_dims(gemma3n),
                                    hybrid=False)
    assert one_pool.global_tokens == budget // (30 * 2 * 2 * 256 * 2)


def test_text_params_count_the_per_layer_embeddings():
    """transformers' E2B text model: ~4.6B parameters, of which the per-layer input
    embeddings alone are 262144 x 35 x 256 = 2.35B (the card's "2.3B effective, 5.1B with
    embeddings" also counts ~0.45B of vision and audio towers)."""
    n = bench_gemma.text_params(bench_gemma.PUBLISHED["gemma-4-e2b"])
    assert 262144 * 35 * 256 < n and 4.5e9 < n < 4.8e9


def test_capacity_cli_puts_stock_beside_ours_for_a_published_shape():
    r = subprocess.run([sys.executable, "-m", "sglang_mixkv.capacity", "--model", "gemma-4-e4b",
                        "--json"], capture_output=True, text=True, cwd=REPO, check=True)
    rows = json.loads(r.stdout)
    assert [(row["gpu_mem_gib"], row["pools"]) for row in rows] == [
        (80, "stock SGLang 0.5.17"), (80, "sglang-mixkv"), (24, "stock SGLang 0.5.17"),
        (24, "sglang-mixkv")]
    for stock, ours in (rows[:2], rows[2:]):
        assert (stock["layers_with_kv"], ours["layers_with_kv"]) == (42, 24)
        assert ours["requests_held"] > 3 * stock["requests_held"] > 0


def _dry_run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sglang_mixkv.serve", *args, "--dry-run"],
                          capture_output=True, text=True, cwd=REPO)


def test_serve_takes_a_gemma_folder_as_it_is(tmp_path):
    """No plan is written; Gemma 4 gets triton (the only backend SGLang allows it) under
    Triton's interpreter on CPU; --plan or Ada-KV on a Gemma folder are refused."""
    folder = tmp_path / "g4"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "gemma4_text", "architectures": ["Gemma4ForCausalLM"], "num_hidden_layers": 3,
         "layer_types": [S, F, S], "num_kv_shared_layers": 1, "sliding_window": 8,
         "dtype": "float32"}))
    r = _dry_run(["--model-path", str(folder)])
    assert r.returncode == 0, r.stderr
    assert "--attention-backend triton" in r.stderr and "TRITON_INTERPRET=1" in r.stderr
    assert "--load-format" not in r.stderr and "--dtype float32" in r.stderr
    assert json.loads((folder / "config.json").read_text())["model_type"] == "gemma4_text"
    for extra in (["--plan", "ma"], ["--adakv-budget", "64"]):
        r = _dry_run(["--model-path", str(folder), *extra])
        assert r.returncode == 2 and "Gemma 3n/4 folder" in r.stderr
    r = _dry_run(["--model-path", str(folder), "--attention-backend", "torch_native"])
    assert r.returncode == 2 and "triton" in r.stderr


def test_serve_refuses_a_folder_it_cannot_plan(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    r = _dry_run(["--model-path", str(tmp_path)])
    assert r.returncode == 2 and "neither a MixAttention folder" in r.stderr


def test_a_multimodal_checkpoint_is_served_through_its_text_folder(tmp_path):
    """``serve`` names the way to the text model; ``python -m sglang_mixkv.gemma`` writes it
    (the text config with SGLang's text class, every other file linked) and refuses a
    folder that is not a multimodal Gemma checkpoint."""
    src = tmp_path / "gemma-4-E2B-it"
    src.mkdir()
    text = dict(model_type="gemma4_text", num_hidden_layers=3, layer_types=[S, F, S],
                num_kv_shared_layers=1, sliding_window=8)
    (src / "config.json").write_text(json.dumps(
        {"model_type": "gemma4", "architectures": ["Gemma4ForConditionalGeneration"],
         "dtype": "bfloat16", "text_config": text}))
    (src / "model.safetensors").write_bytes(b"weights")
    r = _dry_run(["--model-path", str(src)])
    assert r.returncode == 2 and f"python -m sglang_mixkv.gemma {src}" in r.stderr
    dst = tmp_path / "text"
    r = subprocess.run([sys.executable, "-m", "sglang_mixkv.gemma", str(src), str(dst)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma4ForCausalLM"] and cfg["dtype"] == "bfloat16"
    assert (dst / "model.safetensors").resolve() == (src / "model.safetensors").resolve()
    assert _dry_run(["--model-path", str(dst)]).returncode == 0
    r = subprocess.run([sys.executable, "-m", "sglang_mixkv.gemma", str(dst), str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "not a multimodal Gemma" in r.stderr
