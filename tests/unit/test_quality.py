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
    assert (p.layout, p.regime) == ("zoology", "agnostic")


def test_an_aware_probe_asks_its_keys_in_the_prompt_too():
    for layout in ("zoology", "scattered"):
        task = recall.RecallTask(**{**TASK.to_dict(), "layout": layout, "regime": "aware"})
        (p,) = quality.probes(task, 1)
        assert len(p.prompt) == 1 + TASK.context + TASK.queries == task.prompt
        assert p.prompt[-TASK.queries:] == p.keys  # the question block, in asking order
        context = p.prompt[1: 1 + TASK.context]
        for key, answer, d in zip(p.keys, p.answers, p.distances):
            at = context.index(key)  # the pair: the key, then its value
            assert context[at + 1] == answer
            # distance: from the pair's value to the answer (after the question block)
            assert d == task.prompt + 2 * p.keys.index(key) + 1 - (1 + at + 1)
    (z,) = quality.probes(recall.RecallTask(**{**TASK.to_dict(), "regime": "aware"}), 1)
    (s,) = quality.probes(recall.RecallTask(**{**TASK.to_dict(), "layout": "scattered",
                                               "regime": "aware"}), 1)
    is_key = [recall.FIRST_TOKEN <= t < recall.FIRST_TOKEN + TASK.keys for t in z.prompt[1:9]]
    assert is_key == [True, False] * 4  # zoology: the pairs open the context
    assert s.prompt != z.prompt
    with pytest.raises(ValueError, match="per layout and regime"):
        quality.probes(recall.RecallTask(**{**TASK.to_dict(), "layout": "mixed"}), 1)


def test_mixed_training_draws_both_layouts_and_both_regimes():
    g = torch.Generator().manual_seed(0)
    task = recall.RecallTask(**{**TASK.to_dict(), "layout": "mixed", "regime": "mixed"})
    lengths, scattered = set(), []
    for _ in range(8):
        b = recall.sample(task, 8, g)
        lengths.add(b.ids.shape[1])
        scattered += b.scattered.tolist()
    assert lengths == {1 + TASK.context + 2 * TASK.queries, task.length}
    assert 0 < sum(scattered) < len(scattered)
    # the frozen task's stream is unchanged by the options (the committed models' data)
    old = recall.sample(TASK, 4, torch.Generator().manual_seed(3))
    assert old.ids.shape[1] == TASK.length and not old.scattered.any()


def test_forced_keys_forces_even_steps_only():
    logits = torch.zeros(3, 10)
    params = [{"keys": [4, 7], "__req__": SimpleNamespace(output_ids=[])},
              {"keys": [4, 7], "__req__": SimpleNamespace(output_ids=[4])},
              {"keys": [4, 7], "__req__": SimpleNamespace(output_ids=[4, 9])}]
    out = forced.ForcedKeys()(logits, params)
    assert out[0].argmax() == 4 and torch.isinf(out[0]).sum() == 9
    assert torch.equal(out[1], torch.zeros(10))  # the model's own answer
    assert out[2].argmax() == 7 and torch.isinf(out[2]).sum() == 9


def test_a_budget_is_served_by_every_method_through_one_code_path():
    (plain,) = quality.settings_of(variants.parse("ma"))
    assert plain.serve_args() == [] and plain.reference_budget() is None
    assert plain.method == "full"
    by = {s.method: s for s in quality.settings_of(variants.parse("ma@adakv=48"))}
    assert list(by) == ["adakv", "adakv-readers", "snapkv", "recent", "random"]
    assert (by["adakv"].scoring, by["adakv"].alpha) == ("producer", 0.2)
    assert (by["adakv-readers"].scoring, by["adakv-readers"].alpha) == ("readers", 0.2)
    assert (by["snapkv"].scoring, by["snapkv"].alpha) == ("producer", 1.0)
    assert by["snapkv"].serve_args() == ["--adakv-budget", "48", "--adakv-window", "32",
                                         "--adakv-scoring", "producer", "--adakv-alpha", "1.0",
                                         "--adakv-rule", "adakv"]
    assert by["recent"].serve_args()[-2:] == ["--adakv-rule", "recent"]
    assert by["random"].reference_budget().rule == "random"
    assert by["snapkv"].reference_budget().alpha == 1.0
    assert by["adakv-readers"].reference_budget().scoring == "readers"
    # standard and ma-pairs: every reader of a global producer is the producer itself
    for plan in ("standard", "ma-pairs"):
        got = [s.method for s in quality.settings_of(variants.parse(f"{plan}@adakv=48"))]
        assert got == ["adakv", "snapkv", "recent", "random"]
    assert [s.method for s in quality.settings_of(variants.parse("ma@adakv=48"),
                                                  ["recent"])] == ["recent"]


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
    assert list(by_distance.columns) == ["setting", "layout", "regime", "<= 1W", "<= 2W", "<= 4W"]
    assert (row["layout"], row["regime"], row["method"]) == ("zoology", "agnostic", "full")
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
    (["--plans", "ma@adakv=32"], "must be above --adakv-window 32"),
    (["--plans", "ma", "--budgets", "20"], "must be above --adakv-window 32"),
    (["--plans", "ma@adakv=40", "--methods", "h2o"], "unknown method 'h2o'"),
    (["--plans", "ma", "--regimes", "before"], "unknown regime 'before'"),
])
def test_bad_input_gets_a_clear_error(models, capsys, args, message):
    assert quality.main(["--models", str(models), "--out", str(models / "out"), *args]) == 2
    assert message in capsys.readouterr().err.lower()


def test_budget_curve_and_the_smallest_budget_within_two_points():
    rec = dict(models="seed0", plan="ma", scoring="producer", alpha=0.2, context=48,
               layout="zoology", regime="aware", far=True, error=None)

    def rows(setting, method, budget, share, right, n=100):
        return [{**rec, "setting": setting, "variant": setting.split(" ")[0], "method": method,
                 "budget": budget, "kept_share": share, "distance": 40,
                 "correct": i < right} for i in range(n)]

    records = (rows("ma", "full", None, 1.0, 90) + rows("ma@adakv=40 adakv", "adakv", 40, 0.5, 50)
               + rows("ma@adakv=48 adakv", "adakv", 48, 0.6, 89)
               + rows("ma@adakv=56 adakv", "adakv", 56, 0.7, 91)
               + rows("ma@adakv=40 recent", "recent", 40, 0.5, 10)
               + rows("ma@adakv=48 recent", "recent", 48, 0.6, 20))
    curve = quality.curves(quality.spread(quality.summarize(records, window=16)[0]))
    adakv = curve[curve["method"] == "adakv"]
    assert adakv["kept_share"].tolist() == pytest.approx([0.5, 0.6, 0.7, 1.0])  # full closes it
    assert adakv["acc_far_mean"].tolist() == pytest.approx([0.5, 0.89, 0.91, 0.9])
    smallest = quality.smallest_budgets(curve).set_index("method")
    assert smallest.loc["adakv", "smallest_budget"] == 48  # 0.89 >= 0.90 - 0.02
    assert smallest["smallest_budget"].isna()["recent"]  # 20% is not within 2 points of 90%


def test_the_report_tabulates_the_curves(tmp_path):
    rec = dict(models="seed0", plan="ma", scoring="producer", alpha=0.2, context=48,
               layout="zoology", far=True, error=None, distance=40)
    records = [{**rec, "setting": s, "variant": s.split(" ")[0], "method": m, "budget": b,
                "regime": regime, "prompt_tokens": n, "kept_share": 1.0 if b is None else b / n,
                "correct": i < right}
               for regime, n in (("agnostic", 49), ("aware", 52))
               for s, m, b, right in (("ma", "full", None, 9), ("ma@adakv=40 recent", "recent", 40, 3))
               for i in range(10)]
    meta = {"command": "test", "git": {"commit": "x", "dirty": False}, "versions": {}, "hardware": {}}
    quality.report(tmp_path, records, [], ["ma", "ma@adakv=40"], 16, TASK, meta)
    text = (tmp_path / "report.md").read_text()
    assert "| ma     | zoology  | agnostic | recent   |  0.300 |  0.900 |" in text
    assert "agnostic 49, aware 52" in text
    assert (tmp_path / "budget_curve.png").exists() and (tmp_path / "curves.csv").exists()
