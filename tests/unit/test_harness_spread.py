"""Run-to-run spread: levels run several times, aggregated, speed-ups marked significant or
not; the anchor's gate derived from the spread."""

import pandas as pd
import pytest

from harness import anchor, metrics

from tests.helpers.harness_fixtures import fake_record


def frame_of(recs):
    return pd.DataFrame(recs)


def runs(label, level, durations):
    """One request of 3 output tokens per run, each run lasting ``durations[i]`` seconds."""
    return [fake_record(label=label, level=level, repeat=i, index=0, done=d)
            for i, d in enumerate(durations)]


def test_aggregate_sums_counts_and_takes_medians_with_ranges():
    s = metrics.summarize(frame_of(runs("a", 1, [1.0, 2.0, 4.0]))).iloc[0]
    assert (s["runs"], s["ok"], s["requests"], s["output_tokens"]) == (3, 3, 3, 9)
    assert s["output_tok_per_s"] == pytest.approx(1.5)  # median of 3, 1.5, 0.75
    assert (s["output_tok_per_s_min"], s["output_tok_per_s_max"]) == (0.75, 3.0)
    assert s["output_tok_per_s_spread"] == pytest.approx((3.0 - 0.75) / 1.5)
    per = metrics.per_run(frame_of(runs("a", 1, [1.0, 2.0, 4.0])))
    assert per["repeat"].tolist() == [0, 1, 2] and per["duration_s"].tolist() == [1.0, 2.0, 4.0]


def test_speedup_inside_the_spread_is_not_significant():
    recs = (runs("standard", 1, [1.0, 1.1, 1.2]) + runs("fast", 1, [0.5, 0.55, 0.6])
            + runs("close", 1, [0.95, 1.05, 1.15]) + runs("standard", 8, [1.0])
            + runs("fast", 8, [0.5]))
    s = metrics.speedup(metrics.summarize(frame_of(recs)), "standard").set_index(["label", "level"])
    assert s.loc[("fast", 1), "significant"] == "yes"
    assert s.loc[("fast", 1), "speedup_vs_standard"] == pytest.approx(1.1 / 0.55)
    assert s.loc[("fast", 1), "speedup_low"] == pytest.approx(1.0 / 0.6)  # worst vs standard's best
    assert s.loc[("close", 1), "significant"].startswith("no")
    assert s.loc[("fast", 8), "significant"] == "n/a (1 run)"
    assert s.loc[("standard", 1), "significant"] == "-"


def test_significance_is_a_paired_t_interval_over_the_rounds():
    """Paired by round: a variant faster in every round by a steady factor is significant
    even when a slow round drags both (its range overlaps standard's); one that loses a
    round is not. The interval is Student's t on the log ratios, computed here by hand."""
    import math

    recs = (runs("standard", 1, [1.0, 2.0, 1.1]) + runs("fast", 1, [0.8, 1.7, 0.9])
            + runs("mixed", 1, [0.8, 2.1, 0.9]))
    per = metrics.per_run(frame_of(recs))
    s = metrics.speedup(metrics.aggregate(per), "standard", runs=per).set_index("label")
    assert s.loc["fast", "significant"] == "yes (paired)"
    logs = [math.log(1.0 / 0.8), math.log(2.0 / 1.7), math.log(1.1 / 0.9)]
    mean = sum(logs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert s.loc["fast", "speedup_ci_low"] == pytest.approx(math.exp(mean - half))
    assert s.loc["fast", "speedup_ci_high"] == pytest.approx(math.exp(mean + half))
    assert s.loc["mixed", "significant"].startswith("no (paired")
    assert s.loc["mixed", "speedup_ci_low"] < 1 < s.loc["mixed", "speedup_ci_high"]
    # the ranges-only rule calls "fast" inside the noise: the slow round overlaps
    assert metrics.speedup(metrics.aggregate(per), "standard").set_index("label").loc[
        "fast", "significant"].startswith("no")


def test_significance_unpaired_when_the_runs_differ():
    recs = runs("standard", 1, [1.0, 1.05, 1.1, 1.0]) + runs("fast", 1, [0.5, 0.52, 0.55])
    per = metrics.per_run(frame_of(recs))
    s = metrics.speedup(metrics.aggregate(per), "standard", runs=per).set_index("label")
    assert s.loc["fast", "significant"] == "yes (unpaired)"
    assert 1.7 < s.loc["fast", "speedup_ci_low"] < s.loc["fast", "speedup_ci_high"] < 2.3


def _tool_runs(req_s, ttft):
    return [{"request_throughput": r, "input_throughput": 10 * r, "output_throughput": 3 * r,
             "total_throughput": 13 * r, "mean_ttft_ms": t, "median_ttft_ms": t, "mean_itl_ms": 5.0,
             "median_itl_ms": 5.0, "mean_tpot_ms": 5.0, "mean_e2e_latency_ms": t + 10}
            for r, t in zip(req_s, ttft)]


def test_anchor_gate_follows_the_measured_spread():
    res = {"1": {"harness": _tool_runs([9.0, 10.0, 9.5], [30.0, 31.0, 33.0]),
                 "bench_serving": _tool_runs([9.6, 9.2, 9.4], [30.5, 36.0, 32.0])}}
    cmp = anchor.compare(res, 0.02)["1"]
    rt = cmp["request_throughput"]
    assert rt["tolerance"] == pytest.approx(10.0 / 9.0 - 1)  # the harness's spread is the larger
    assert rt["ratio"] == pytest.approx(10.0 / 9.6) and rt["within"]
    assert cmp["mean_ttft_ms"]["ratio"] == pytest.approx(30.0 / 30.5) and cmp["mean_ttft_ms"]["within"]
    assert cmp["median_itl_ms"]["tolerance"] == 0.02 and cmp["median_itl_ms"]["within"]
    assert cmp["mean_tpot_ms"]["within"] is None  # listed, not gated
    # a tool that measures TTFT 20% longer than the other, both within 3% run to run, fails
    res["1"] = {"harness": _tool_runs([9.6, 9.2, 9.4], [36.0, 37.0, 36.5]),
                "bench_serving": _tool_runs([9.6, 9.2, 9.4], [30.0, 30.5, 30.2])}
    assert not anchor.compare(res, 0.02)["1"]["mean_ttft_ms"]["within"]
