"""Metrics: aggregation of small hand-checked frames (percentiles via numpy)."""

import math

import numpy as np
import pandas as pd
import pytest

from harness import metrics
from harness.client import Record

from tests.helpers.harness_fixtures import fake_record, write_run


def frame(recs):
    return pd.DataFrame(recs)


def test_one_level_by_hand():
    # three requests of 10 in / 3 out, level runs from t=0 to t=2.0
    recs = [
        fake_record(index=0, sent=0.0, first=0.5, done=1.0, ttft=0.5, ttft_from_due=0.5, e2e=1.0,
                    e2e_from_due=1.0, itl=[0.2, 0.3]),
        fake_record(index=1, sent=0.0, first=1.0, done=2.0, ttft=1.0, ttft_from_due=1.0, e2e=2.0,
                    e2e_from_due=2.0, itl=[0.4, 0.6]),
        fake_record(index=2, due=0.0, sent=1.0, first=1.2, done=1.6, ttft=0.2, ttft_from_due=1.2,
                    e2e=0.6, e2e_from_due=1.6, itl=[0.1, 0.3], cached_tokens=4),
        fake_record(index=9, warmup=True, done=50.0),  # ignored
    ]
    s = metrics.summarize(frame(recs))
    assert len(s) == 1
    r = s.iloc[0]
    assert (r["label"], r["level"], math.isinf(r["rate"])) == ("a", 1, True)
    assert (r["requests"], r["ok"], r["failed"], r["cancelled"]) == (3, 3, 0, 0)
    assert r["duration_s"] == 2.0
    assert r["req_per_s"] == pytest.approx(1.5)
    assert r["input_tok_per_s"] == pytest.approx(15.0)
    assert r["output_tok_per_s"] == pytest.approx(4.5)
    assert r["total_tok_per_s"] == pytest.approx(19.5)
    assert r["cached_tokens"] == 4
    ttft = np.array([0.5, 1.0, 0.2]) * 1e3
    assert r["ttft_mean_ms"] == pytest.approx(ttft.mean())
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert r[f"ttft_{key}_ms"] == pytest.approx(np.percentile(ttft, q))
    assert r["ttft_from_due_p50_ms"] == pytest.approx(1000.0)
    # tpot = (e2e - ttft) / (3 - 1)
    tpot = np.array([0.25, 0.5, 0.2]) * 1e3
    assert r["tpot_mean_ms"] == pytest.approx(tpot.mean())
    itl = np.array([0.2, 0.3, 0.4, 0.6, 0.1, 0.3]) * 1e3
    assert r["itl_p90_ms"] == pytest.approx(np.percentile(itl, 90))
    assert r["e2e_p99_ms"] == pytest.approx(np.percentile([1000, 2000, 600], 99))


def test_failures_cancellations_and_levels():
    recs = [fake_record(level=1, index=0),
            fake_record(level=1, index=1, ok=False, error="HTTP 500: boom", status=500,
                        first=None, ttft=None, done=0.5, completion_tokens=None, stream_tokens=0),
            fake_record(level=1, index=2, ok=False, cancelled=True, error="cancelled", done=0.9),
            fake_record(level=4, index=0, done=0.2),
            fake_record(level=4, index=1, mismatch="completion_tokens 2 != 3",
                        completion_tokens=2, done=0.4)]
    df = frame(recs)
    s = metrics.summarize(df).set_index("level")
    assert list(s.index) == [1, 4]
    assert (s.loc[1, "ok"], s.loc[1, "failed"], s.loc[1, "cancelled"], s.loc[1, "requests"]) == (1, 1, 1, 2)
    assert s.loc[1, "duration_s"] == 0.9
    assert s.loc[1, "output_tok_per_s"] == pytest.approx(3 / 0.9)  # failed tokens don't count
    assert s.loc[4, "mismatched"] == 1 and s.loc[4, "output_tokens"] == 5
    f = metrics.failures(df)
    assert f.to_dict("records") == [{"label": "a", "level": 1, "error": "HTTP 500: boom",
                                     "count": 1, "status": "500"}]
    assert metrics.mismatches(df)["index"].tolist() == [1]


def test_rates_are_separate_rows_and_empty_frames():
    s = metrics.summarize(frame([fake_record(rate=2.0), fake_record(rate=None)]))
    assert len(s) == 2 and sorted(s["rate"].tolist()) == [2.0, math.inf]
    assert metrics.summarize(pd.DataFrame()).empty
    assert metrics.summarize(frame([fake_record(warmup=True)])).empty
    assert metrics.failures(pd.DataFrame()).empty


def test_torn_last_line_is_skipped(tmp_path):
    d = write_run(tmp_path / "r", [fake_record(index=0), fake_record(index=1)], label="lbl")
    with open(d / "requests.jsonl", "a") as f:
        f.write('{"label": "a", "lev')  # crash mid-write
    df = metrics.load_run(d)
    assert len(df) == 2 and set(df["label"]) == {"lbl"}


def test_record_finish_checks_lengths():
    r = Record("x", 1, None, 0, False, "generate", 10, 4, due=0.0, sent=0.5, first=1.0)
    r.ok, r.prompt_tokens, r.completion_tokens = True, 10, 4
    r.finish(2.0)
    assert (r.ttft, r.ttft_from_due, r.e2e, r.e2e_from_due, r.mismatch) == (0.5, 1.0, 1.5, 2.0, None)
    r.prompt_tokens, r.completion_tokens = 11, 3
    r.finish(2.0)
    assert r.mismatch == "prompt_tokens 11 != 10; completion_tokens 3 != 4"
