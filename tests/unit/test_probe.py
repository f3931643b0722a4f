"""The capacity probe's search (no server: the probe itself is replaced)."""

from __future__ import annotations

import asyncio

import pytest

from mixkv_bench import probe as pr


@pytest.mark.parametrize("capacity", [0, 1, 5, 33, 64, 100])
def test_search_starts_at_one_and_finds_the_largest_count_held(monkeypatch, capacity):
    sent = []

    async def fake_probe(url, n, input_len, output_len, *, vocab, seed=0, timeout=3600):
        sent.append(n)
        held = n <= capacity
        return pr.ProbeResult(sent=n, max_held=n if held else capacity, retracted=0 if held else 1,
                              completed=n if held else 0)

    monkeypatch.setattr(pr, "probe", fake_probe)
    seen = []
    out = asyncio.run(pr.max_held("http://x", 200, 8, 100, vocab=512, on_probe=seen.append))
    assert sent[0] == 1 and out["max_held"] == capacity and len(out["probes"]) == len(sent) == len(seen)
    assert out["first_failed"] == capacity + 1 and not out["capped"]
    assert max(sent) <= 2 * max(capacity, 1)  # doubling overshoots by at most 2x
    assert len(sent) <= 2 * max(capacity, 1).bit_length() + 1


def test_search_reports_when_it_ended_at_the_cap(monkeypatch):
    async def always(url, n, *a, **k):
        return pr.ProbeResult(sent=n, max_held=n, retracted=0, completed=n)

    monkeypatch.setattr(pr, "probe", always)
    out = asyncio.run(pr.max_held("http://x", 20, 8, 100, vocab=512))
    assert out == {**out, "max_held": 20, "first_failed": None, "capped": True}
    assert [p["sent"] for p in out["probes"]] == [1, 2, 4, 8, 16, 20]
