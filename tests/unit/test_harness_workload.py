"""Workload: seeded, exact lengths, id range, stable per index, Poisson arrivals."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.workload import PROFILES, IdRange, arrival_offsets, make_requests


def test_same_seed_same_prompts_different_seed_different():
    a = make_requests(5, 100, 7, seed=1, ids=IdRange(3, 512))
    b = make_requests(5, 100, 7, seed=1, ids=IdRange(3, 512))
    c = make_requests(5, 100, 7, seed=2, ids=IdRange(3, 512))
    assert [r.input_ids for r in a] == [r.input_ids for r in b]
    assert [r.input_ids for r in a] != [r.input_ids for r in c]
    assert len({tuple(r.input_ids) for r in a}) == 5  # distinct prompts


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 8), length=st.integers(1, 300), out=st.integers(1, 50),
       lo=st.integers(0, 10), span=st.integers(1, 600), seed=st.integers(0, 2**31))
def test_exact_lengths_and_range(n, length, out, lo, span, seed):
    ids = IdRange(lo, lo + span)
    reqs = make_requests(n, length, out, seed, ids)
    assert len(reqs) == n
    for i, r in enumerate(reqs):
        assert r.index == i and r.output_len == out and r.input_len == length
        arr = np.asarray(r.input_ids)
        assert arr.min() >= ids.lo and arr.max() < ids.hi


def test_request_i_does_not_depend_on_num_prompts():
    small = make_requests(3, 64, 4, seed=0, ids=IdRange(3, 512))
    big = make_requests(300, 64, 4, seed=0, ids=IdRange(3, 512))
    assert [r.input_ids for r in small] == [r.input_ids for r in big[:3]]


def test_warmup_prompts_differ_from_measured():
    m = make_requests(4, 64, 4, seed=0, ids=IdRange(3, 512))
    w = make_requests(4, 64, 4, seed=0, ids=IdRange(3, 512), warmup=True)
    assert all(r.warmup for r in w) and not any(r.warmup for r in m)
    assert not {tuple(r.input_ids) for r in m} & {tuple(r.input_ids) for r in w}


def test_special_tokens_avoided_by_default():
    ids = IdRange.for_vocab(512)
    assert (ids.lo, ids.hi) == (3, 512)
    r = make_requests(1, 20_000, 1, seed=0, ids=ids)[0]
    assert min(r.input_ids) == 3 and max(r.input_ids) == 511  # the whole range is used


def test_id_range_parse_and_validation():
    assert IdRange.parse("3:512") == IdRange(3, 512)
    with pytest.raises(ValueError):
        IdRange(5, 5)
    with pytest.raises(ValueError):
        make_requests(1, 0, 1, 0, IdRange(3, 10))


def test_paper_profile():
    p = PROFILES["paper"]
    assert (p.num_prompts, p.input_len, p.output_len) == (300, 31_000, 1_000)
    assert p.concurrency == (1, 8, 32, 64, 128, 300)


def test_arrivals():
    assert not arrival_offsets(5, math.inf, 0).any()
    a = arrival_offsets(20_000, 10.0, seed=3)
    assert (np.diff(a) >= 0).all() and a[0] > 0
    assert np.array_equal(a, arrival_offsets(20_000, 10.0, seed=3))
    assert abs(np.diff(a).mean() - 0.1) < 0.005  # mean gap 1/rate
    with pytest.raises(ValueError):
        arrival_offsets(3, 0.0, 0)
