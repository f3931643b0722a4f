"""The bench report from a synthetic run folder: spread, significance, the roofline bound
beside each level, and the server timeline's verdict (no server needed)."""

import json
import re
from dataclasses import asdict

import pandas as pd
import pytest

from mixkv_bench import bench_roofline, settings
from mixkv_bench import roofline as rl
from mixkv_bench.bench_report import write_report
from sglang_mixkv.model_folder import get_size

from tests.helpers.harness_fixtures import fake_record, write_run


def variant(run, label, durations: dict, samples: dict, rounds: bool = False):
    """Three runs per level; ``durations[level]``: each run's length; ``samples[level]``:
    (running, queued, global usage) the timeline saw during that level. ``rounds``: each
    run in its own folder ``harness/round-K`` (the bench's rounds), else all in ``harness``."""
    runs = []
    for rep in range(3):
        recs, levels, tl, t = [], [], [], 0.0
        for level, ds in durations.items():
            recs.append(fake_record(label=label, level=level, repeat=rep, done=ds[rep]))
            levels.append({"level": level, "repeat": rep, "start": t, "end": t + ds[rep]})
            running, queued, usage = samples[level]
            tl.append({"t": t + ds[rep] / 2, "level": level, "repeat": rep, "running": running,
                       "queued": queued, "global_usage": usage, "retracted_total": 0.0})
            t += ds[rep] + 0.1
        runs.append((recs, levels, tl))
    if not rounds:  # one folder, the runs one after another on one clock
        shift, merged = 0.0, ([], [], [])
        for recs, levels, tl in runs:
            merged[0].extend(recs)
            merged[1].extend({**w, "start": w["start"] + shift, "end": w["end"] + shift} for w in levels)
            merged[2].extend({**x, "t": x["t"] + shift} for x in tl)
            shift = merged[1][-1]["end"] + 0.1
        runs = [merged]
    for k, (recs, levels, tl) in enumerate(runs):
        if rounds:
            recs = [{**r, "repeat": 0} for r in recs]
            levels = [{**w, "repeat": 0} for w in levels]
            tl = [{**x, "repeat": 0} for x in tl]
        d = write_run(run / label / "harness" / (f"round-{k + 1}" if rounds else ""), recs, label=label)
        meta = json.loads((d / "meta.json").read_text())
        meta.update(levels=levels, timeline={"note": None})
        meta["config"]["num_prompts"] = 8
        (d / "meta.json").write_text(json.dumps(meta))
        (d / "timeline.jsonl").write_text("".join(json.dumps(x) + "\n" for x in tl))


def test_report_shows_spread_significance_roofline_and_bounds(tmp_path):
    run = tmp_path / "run"
    st = settings.Settings(["standard", "ma"], "tiny", 8, 10, 3, [1, 8], 0, "64MiB", None, 32, repeats=3)
    variant(run, "standard", {1: [1.0, 1.1, 1.2], 8: [1.0, 1.05, 1.1]},
            {1: (1, 0, 0.1), 8: (5, 3, 0.95)})
    variant(run, "ma", {1: [0.98, 1.12, 1.15], 8: [0.5, 0.52, 0.55]},
            {1: (1, 0, 0.05), 8: (8, 0, 0.3)})
    hw = rl.Hardware("toy", 1e12, 1e11, 1 << 34, source="test")
    (run / bench_roofline.ROOFLINE).write_text(json.dumps({"hardware": asdict(hw)}))
    md = write_report(run, st).read_text()
    csv = pd.read_csv(run / "summary.csv").set_index(["label", "level"])
    assert csv.loc[("ma", 8), "significant"] == "yes (paired)"
    assert csv.loc[("ma", 1), "significant"].startswith("no")  # it lost the second run
    # The bound of the servers the run describes, written here from its settings (not
    # from the bench's own translation): --kv-budget 64MiB, --max-running-requests 32,
    # serve's tiny chunk (256) and eviction interval (32 / 16 = 2), 8 prompts of 10 + 3.
    srv = rl.Serving(kv_budget=64 << 20, max_running=32, chunk=256, eviction_interval=2)
    bound = rl.level_bound(get_size("tiny"), "ma", hw, rl.Workload(8, 10, 3, (8,)), 8, srv)
    assert csv.loc[("ma", 8), "roofline_out_tok_per_s"] == pytest.approx(bound.output_tok_per_s)
    assert csv.loc[("ma", 8), "roofline_fraction"] == pytest.approx(
        csv.loc[("ma", 8), "output_tok_per_s"] / bound.output_tok_per_s)
    assert "## What bounded each level" in md and "![timeline](timeline.png)" in md
    assert "KV capacity: at most 5 of 8 ran, up to 3 queued (global pool 95% full)" in md
    assert "not admission: all 8 ran at once" in md and "toy" in md
    assert (run / "timeline.png").is_file()


def test_rounds_in_separate_folders_report_as_the_runs_of_one_folder(tmp_path):
    """The bench's rounds (harness/round-K, each with repeat 0) give the same table as the
    same runs in one folder; the timeline pools every round's samples."""
    st = settings.Settings(["standard", "ma"], "tiny", 8, 10, 3, [1, 8], 0, "64MiB", None, 32, repeats=3)
    tables = []
    for rounds in (False, True):
        run = tmp_path / f"run-{rounds}"
        variant(run, "standard", {1: [1.0, 1.1, 1.2], 8: [1.0, 1.05, 1.1]},
                {1: (1, 0, 0.1), 8: (5, 3, 0.95)}, rounds)
        variant(run, "ma", {1: [0.9, 1.0, 1.1], 8: [0.5, 0.52, 0.55]},
                {1: (1, 0, 0.05), 8: (8, 0, 0.3)}, rounds)
        md = write_report(run, st).read_text()
        tables.append(pd.read_csv(run / "summary.csv"))
        assert "KV capacity: at most 5 of 8 ran, up to 3 queued" in md
    pd.testing.assert_frame_equal(tables[0], tables[1])
    csv = tables[1].set_index(["label", "level"])
    assert csv.loc[("ma", 1), "runs"] == 3 and csv.loc[("ma", 1), "significant"] == "yes (paired)"
    assert "in 3 rounds" in md


def test_predicted_duration_of_the_gpu_defaults_fits_two_hours():
    st = settings.defaults(gpu=True)
    pred = bench_roofline.predict(st, rl.gpu("H100"))
    assert pred["bound_s"] < pred["expected_s"] <= 2 * 3600
    assert st.concurrency == [8, 64, 300] and st.repeats == 2


def test_report_names_the_highest_level_meeting_the_slo(tmp_path):
    """Every fake request takes 300 ms end to end (tests/helpers/harness_fixtures.py):
    with E2E <= 400 ms every level meets the SLO; with E2E <= 250 ms none does."""
    run = tmp_path / "run"
    for label in ("standard", "ma"):
        variant(run, label, {1: [1.0, 1.1, 1.2], 8: [1.0, 1.05, 1.1]},
                {1: (1, 0, 0.1), 8: (5, 3, 0.5)})
    for e2e, highest in (("400", "8"), ("250", "none")):
        st = settings.Settings(["standard", "ma"], "tiny", 8, 10, 3, [1, 8], 0, "64MiB", None, 32,
                               repeats=3, slo=f"e2e_ms={e2e}")
        md = write_report(run, st).read_text()
        assert "highest level meeting the SLO" in md
        assert re.search(rf"\| standard\s+\|\s+{highest}\s+\|", md), md
    assert (run / "goodput.png").is_file()
