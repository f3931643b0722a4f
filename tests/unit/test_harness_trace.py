"""Trace replay and shared-prefix workloads (harness/workload.py): the lengths, the
arrival times, and the errors that name the line."""

import json

import pytest

from harness.workload import IdRange, TraceError, load_trace, make_requests, trace_requests
from tests.helpers.harness_fixtures import records, run_inproc, stub

IDS = IdRange(3, 512)


def write(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def test_trace_lengths_and_arrivals(tmp_path):
    # mooncake field names, timestamps in ms from an arbitrary origin
    t = write(tmp_path / "t.jsonl", [{"timestamp": 1000, "input_length": 20, "output_length": 3},
                                     {"timestamp": 1250, "input_length": 7, "output_length": 5,
                                      "hash_ids": [1, 2]},
                                     {"timestamp": 1250, "input_length": 12, "output_length": 1}])
    reqs = trace_requests(load_trace(t, time_unit=0.001), seed=0, ids=IDS)
    assert [(r.input_len, r.output_len, r.due) for r in reqs] == \
        [(20, 3, 0.0), (7, 5, 0.25), (12, 1, 0.25)]
    assert all(IDS.lo <= x < IDS.hi for r in reqs for x in r.input_ids)


@pytest.mark.parametrize("lines, says", [
    (['{"input_len": 5, "output_len": 2}', "not json"], "line 2"),
    ([{"input_len": 5, "output_len": 0}], "line 1: output_len"),
    ([{"input_len": 5}], "line 1: output_len: Field required"),
    ([{"input_len": 5, "output_len": 2, "timestamp": 3}, {"input_len": 5, "output_len": 2,
                                                         "timestamp": 1}], "line 2: timestamp 1"),
    ([{"input_len": 5, "output_len": 2, "timestamp": 3}, {"input_len": 5, "output_len": 2}],
     "line 2: timestamps must be on every line"),
    ([{"input_len": 90, "output_len": 20}], "exceed the server's context of 100"),
])
def test_bad_traces_name_the_line(tmp_path, lines, says):
    with pytest.raises(TraceError, match=says):
        load_trace(write(tmp_path / "bad.jsonl", lines), max_context=100)


def test_shared_prefix_groups():
    reqs = make_requests(5, 40, 4, seed=1, ids=IDS, shared_prefix=(2, 30))
    assert all(len(r.input_ids) == 40 for r in reqs)
    assert reqs[0].input_ids[:30] == reqs[2].input_ids[:30] == reqs[4].input_ids[:30]
    assert reqs[1].input_ids[:30] == reqs[3].input_ids[:30] != reqs[0].input_ids[:30]
    assert len({tuple(r.input_ids[30:]) for r in reqs}) == 5  # own suffixes
    with pytest.raises(ValueError, match="shorter than the prompt"):
        make_requests(2, 40, 4, seed=1, ids=IDS, shared_prefix=(2, 40))


def test_trace_replay_against_the_stub(tmp_path):
    t = write(tmp_path / "t.jsonl", [{"input_len": 8, "output_len": 2, "timestamp": 0.0},
                                     {"input_len": 16, "output_len": 4, "timestamp": 0.2}])
    with stub() as (url, _):
        d = run_inproc(url, tmp_path / "r", trace=t, concurrency=[2])
    recs = sorted(records(d), key=lambda r: r["index"])
    assert [(r["input_len"], r["output_len"], r["completion_tokens"]) for r in recs] == \
        [(8, 2, 2), (16, 4, 4)]
    assert recs[1]["due"] == 0.2 and recs[1]["sent"] >= 0.2
