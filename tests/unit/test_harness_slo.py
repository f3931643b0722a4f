"""Goodput and SLO attainment by hand (definitions in harness/slo.py)."""

import pandas as pd
import pytest

from harness import metrics, slo
from tests.helpers.harness_fixtures import fake_record


def level():
    # four requests of one level, 5 output tokens each; the level ends at t = 2.0 s
    # r0: TTFT 100 ms, E2E 500 ms -> TPOT (500 - 100) / 4 = 100 ms
    # r1: TTFT 300 ms, E2E 700 ms -> TPOT 100 ms
    # r2: TTFT 100 ms, E2E 1300 ms -> TPOT 300 ms
    # r3: failed
    recs = [fake_record(index=0, ttft=0.1, e2e=0.5, done=0.5, completion_tokens=5),
            fake_record(index=1, ttft=0.3, e2e=0.7, done=0.9, completion_tokens=5),
            fake_record(index=2, ttft=0.1, e2e=1.3, done=2.0, completion_tokens=5),
            fake_record(index=3, ok=False, error="HTTP 500", status=500, ttft=None, e2e=None,
                        done=1.0, completion_tokens=None, stream_tokens=0)]
    return pd.DataFrame(recs)


def test_goodput_by_hand():
    # TTFT <= 200 and TPOT <= 150: only r0 (r1 is late to its first token, r2 too slow
    # per token, r3 failed): 1 of 4 good, 1 / 2 s = 0.5 req/s, 5 tokens / 2 s = 2.5 tok/s
    row = metrics.summarize(level(), slo.parse("ttft_ms=200,tpot_ms=150")).iloc[0]
    assert (row["slo_good"], row["slo_attainment"]) == (1, 0.25)
    assert (row["goodput_req_per_s"], row["goodput_tok_per_s"]) == (0.5, 2.5)
    # E2E <= 800: r0 and r1: 2 of 4, 1.0 req/s, 5.0 tok/s
    row = metrics.summarize(level(), slo.parse("e2e_ms=800")).iloc[0]
    assert (row["slo_good"], row["slo_attainment"]) == (2, 0.5)
    assert (row["goodput_req_per_s"], row["goodput_tok_per_s"]) == (1.0, 5.0)
    assert "slo_attainment" not in metrics.summarize(level())


def test_slo_syntax_errors_name_the_field():
    assert slo.parse(" ttft_ms = 500 , e2e_ms=2e3").model_dump() == \
        {"ttft_ms": 500.0, "tpot_ms": None, "e2e_ms": 2000.0}
    for bad, says in (("ttft=5", "ttft"), ("ttft_ms=-1", "greater than 0"),
                      ("tpot_ms=fast", "tpot_ms"), ("", "at least one"), ("ttft_ms", "NAME=VALUE")):
        with pytest.raises(ValueError, match=says):
            slo.parse(bad)
