"""``make quality``'s parts without a server: the probes and their forced keys, the
settings a variant expands to, the summary, the Pareto front, the paper-scale projection
and the errors bad input gets. (A trained folder served end to end, with the reference
check: ``tests/server/test_train.py``.)"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from mixkv_bench import forced, quality, recall, variants
from sglang_mixkv.model_folder import get_size, write_model_folder
from sglang_mixkv.plan import resolve

TASK = recall.RecallTask(context=48, pairs=4, queries=3, keys=16, values=16, filler=8)


def test_a_probe_is_the_context_then_its_queries():
    (p,) = quality.probes(TASK, 1)
    b = recall.heldout(TASK, 1, quality.SEED + TASK.context)
    ids = b.ids[0].tolist()
    assert p.prompt == ids[: 1 + TASK.context]
    assert p.keys == ids[1 + TASK.context::2] and p.answers == ids[2 + TASK.context::2]
    assert p.distances == b.distance[0].tolist()
    body = forced.request(p.prompt, p.keys)
    assert body["sampling_params"]["max_new_tokens"] == 2 * TASK.queries
    assert body["sampling_params"]["custom_params"] == {"keys": p.keys}
    assert forced.answers([5, 6, 7, 8]) == [6, 8]


def test_forced_keys_forces_even_steps_only():
    logits = torch.zeros(3, 10)
    params = [{"keys": [4, 7], "__req__": SimpleNamespace(output_ids=[])},
              {"keys": [4, 7], "__req__": SimpleNamespace(output_ids=[4])},
              {"keys": [4, 7], "__req__": SimpleNamespace(output_ids=[4, 9])}]
    out = forced.ForcedKeys()(logits, params)
    assert out[0].argmax() == 4 and torch.isinf(out[0]).sum() == 9
    assert torch.equal(out[1], torch.zeros(10))  # the model's own answer
    assert out[2].argmax() == 7 and torch.isinf(out[2]).sum() == 9


def test_a_budget_is_served_three_ways():
    (plain,) = quality.settings_of(variants.parse("ma"))
    assert plain.serve_args() == [] and plain.reference_budget() is None
    ada, readers, snap = quality.settings_of(variants.parse("ma@adakv=48"))
    assert (ada.scoring, ada.alpha) == ("producer", 0.2)
    assert (readers.scoring, readers.alpha) == ("readers", 0.2)
    assert (snap.scoring, snap.alpha) == ("producer", 1.0)
    assert snap.serve_args() == ["--adakv-budget", "48", "--adakv-scoring", "producer",
                                 "--adakv-alpha", "1.0"]
    assert snap.reference_budget().alpha == 1.0 and readers.reference_budget().scoring == "readers"


def test_summary_counts_far_near_and_failed():
    rec = dict(setting="s", models="seed0", variant="s", plan="ma", budget=None,
               scoring="producer", alpha=0.2, context=48)
    records = [{**rec, "distance": 40, "far": True, "correct": True, "error": None},
               {**rec, "distance": 30, "far": True, "correct": False, "error": None},
               {**rec, "distance": 5, "far": False, "correct": True, "error": None},
               {**rec, "distance": 50, "far": True, "correct": False, "error": "HTTP 500"}]
    summary, by_distance = quality.summarize(records, window=16)
    row = summary.iloc[0]
    assert (row["queries"], row["failed"]) == (4, 1)
    assert row["acc"] == 0.5 and row["acc_far"] == pytest.approx(1 / 3) and row["acc_near"] == 1.0
    assert list(by_distance.columns) == ["setting", "<= 1W", "<= 2W", "<= 4W"]
    other = [{**r, "models": "seed1", "correct": True} for r in records]  # every answer right
    spread = quality.spread(quality.summarize(records + other, window=16)[0]).iloc[0]
    assert spread["seeds"] == 2 and spread["acc_far_mean"] == pytest.approx((1 / 3 + 1) / 2)
    assert (spread["acc_far_min"], spread["acc_far_max"]) == (pytest.approx(1 / 3), 1.0)


def test_pareto_front_by_hand():
    import pandas as pd

    df = pd.DataFrame({"bytes": [10, 5, 5, 1, 8], "acc": [0.9, 0.9, 0.5, 0.1, 0.95]})
    assert quality.pareto(df, "bytes", "acc") == [False, True, False, True, True]


def test_budgets_are_projected_as_the_same_share_of_the_paper_prompt():
    df = quality.paper_scale(["ma", "ma@adakv=64"], context=128).set_index("variant")
    assert df.loc["ma@adakv=64", "paper_variant"] == "ma@adakv=15500"
    assert df.loc["ma@adakv=64", "kv_bytes_per_request"] < df.loc["ma", "kv_bytes_per_request"]
    assert df.loc["ma@adakv=64", "requests_80gib"] > df.loc["ma", "requests_80gib"]
    local = quality.paper_scale(["LLLLLLLLLLLL"], context=64).iloc[0]  # 12 layers -> 24
    assert local["paper_variant"] == "L" * 24


@pytest.fixture()
def models(tmp_path):
    """A folder of model folders: ``ma`` 'trained' on TASK (random weights, marked as
    trained), ``swa`` with random weights."""
    size = get_size("recall")
    write_model_folder(tmp_path / "ma", size, resolve("ma", 12), weights=False, window=size.window)
    cfg = json.loads((tmp_path / "ma" / "config.json").read_text())
    cfg["mixkv_weights"] = {"trained": {"plan": "ma", "step": 0, "task": TASK.to_dict()}}
    (tmp_path / "ma" / "config.json").write_text(json.dumps(cfg))
    write_model_folder(tmp_path / "swa", size, resolve("swa", 12), seed=0, window=size.window)
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["--plans", "GLx"], "invalid plan"),
    (["--plans", "ma@adakv=x"], "unknown option"),
    (["--plans", "standard"], "no trained model folder"),
    (["--plans", "swa"], "random weights"),
    (["--plans", "ma", "--contexts", "6"], "context"),
])
def test_bad_input_gets_a_clear_error(models, capsys, args, message):
    assert quality.main(["--models", str(models), "--out", str(models / "out"), *args]) == 2
    assert message in capsys.readouterr().err.lower()
