"""The recall task and the trainer (``python -m mixkv_bench.train``): a few dozen steps
lower the loss, the folder it writes is served by our server through ``make quality``'s
path, and the server's greedy answers are the reference's on the same weights (the
trained model is not a second model path)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mixkv_bench import quality, recall
from mixkv_bench.reference import Reference
from mixkv_bench.train import Recipe, Trainable, export, train
from sglang_mixkv.model_folder import get_size
from sglang_mixkv.plan import resolve
from tests.helpers.serving import REPO

TASK = recall.RecallTask(context=48, pairs=4, queries=2, keys=16, values=16, filler=8)


def test_sequences_hold_the_pairs_the_queries_ask():
    b = recall.heldout(TASK, 16, seed=1)
    assert b.ids.shape == (16, TASK.length) and (b.ids[:, 0] == recall.BOS).all()
    for row, pos, dist in zip(b.ids, b.answer_pos, b.distance):
        for p, d in zip(pos.tolist(), dist.tolist()):
            key, value = row[p - 1].item(), row[p].item()
            earlier = row[: 1 + TASK.context]
            (at,) = (earlier == key).nonzero(as_tuple=True)  # each key once in the context
            assert earlier[at + 1].item() == value and p - (at.item() + 1) == d
    assert not torch.equal(b.ids, recall.heldout(TASK, 16, seed=2).ids)


@pytest.mark.parametrize("bad, message", [
    (dict(pairs=30, context=48), "context"),
    (dict(pairs=20, keys=16), "distinct keys"),
    (dict(layout="spread"), "layout"),
])
def test_bad_tasks_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        recall.RecallTask(**{**TASK.to_dict(), **bad})


def test_trainable_model_is_the_reference(tmp_path):
    """The trainer's model and the reference agree on the folder it writes (windows,
    sharing, RoPE, weight names): what training optimizes is what the server serves."""
    size, plan = get_size("recall"), resolve("ma-offset", 12)
    torch.manual_seed(0)
    model = Trainable(size, plan, size.window).eval()
    for p in model.parameters():  # away from the initial scale, so windows matter
        p.data.normal_(0, 0.3) if p.dim() == 2 else p.data.uniform_(0.5, 1.5)
    ids = recall.heldout(TASK, 1, seed=3).ids
    ref = Reference(export(model, tmp_path / "m", "ma-offset", TASK, Recipe(), step=0))
    with torch.no_grad():
        assert torch.allclose(model(ids)[0], ref.logits(ids[0].tolist()), atol=1e-4)


@pytest.mark.server
def test_a_short_training_lowers_the_loss_and_the_folder_serves(tmp_path):
    out = tmp_path / "seed0" / "ma"
    recipe = Recipe(steps=40, lr=3e-3, warmup=5, batch=16)
    lines = []
    first = train("ma", out, TASK, recipe, minutes=5, eval_every=1, until=1, log=lines.append)
    last = train("ma", out, TASK, recipe, minutes=5, eval_every=20, log=lines.append)
    assert any("resumed ma at step 1" in ln for ln in lines)
    assert last["step"] == 40 and last["loss"] < first["loss"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mixkv_weights"]["trained"]["step"] == 40
    # make quality's path: our server serves the folder, every answer comes back and a
    # sample of them is replayed through the reference (exit status 1 if one differs)
    report = tmp_path / "quality"
    # (both regimes; a budget curve of one point served with the recent-tokens baseline)
    assert quality.main(["--models", str(tmp_path / "seed0"), "--plans", "ma", "--sequences", "4",
                         "--budgets", "40", "--methods", "recent", "--check", "8",
                         "--out", str(report)]) == 0
    for setting in ("ma", "ma@adakv=40_recent"):
        records = [json.loads(ln) for ln in
                   (report / "seed0" / setting / "records.jsonl").read_text().splitlines()]
        assert len(records) == 2 * 4 * TASK.queries and all(r["error"] is None for r in records)
        assert {r["regime"] for r in records} == {"agnostic", "aware"}
        assert {r["adakv_window"] for r in records} == ({None} if setting == "ma" else {32})
    summary = (report / "summary.csv").read_text()
    assert summary.startswith("setting,") and "\nma," in summary
    curve = (report / "curves.csv").read_text()
    assert curve.count("recent") == 4  # (40, full) x 2 regimes
    assert "Every sampled answer equals the plain-PyTorch reference's." in (report / "report.md").read_text()


def test_uptraining_starts_from_another_plans_weights(tmp_path):
    """``--init``: every weight of the new plan is the source's; the K/V projections of
    layers that are consumers in the new plan are dropped, and the reverse is refused."""
    from safetensors.torch import load_file

    recipe = Recipe(steps=2, warmup=1, batch=4)
    train("standard", tmp_path / "standard", TASK, recipe, minutes=1, log=lambda _: None)
    train("ma", tmp_path / "ma", TASK, recipe, minutes=1, until=0, log=lambda _: None,
          init=tmp_path / "standard")
    src = load_file(str(tmp_path / "standard" / "model.safetensors"))
    got = load_file(str(tmp_path / "ma" / "model.safetensors"))
    assert set(got) < set(src) and all(torch.equal(got[k], src[k]) for k in got)
    assert "model.layers.2.self_attn.k_proj.weight" not in got  # a consumer in ma
    cfg = json.loads((tmp_path / "ma" / "config.json").read_text())
    assert cfg["mixkv_weights"]["trained"]["init"]["plan"] == "standard"
    with pytest.raises(ValueError, match="a producer here is a consumer there"):
        train("standard", tmp_path / "back", TASK, recipe, minutes=1, until=0,
              log=lambda _: None, init=tmp_path / "ma")


def test_cli_refuses_an_unknown_plan_and_a_task_the_context_cannot_hold(tmp_path):
    for extra, message in ((["--plan", "GLx"], "invalid plan"), (["--plan", "ma", "--task-pairs", "99"], "context")):
        r = subprocess.run([sys.executable, "-m", "mixkv_bench.train", "--out", str(tmp_path / "x"),
                            *extra], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 2 and message in r.stderr.lower(), r.stderr
