"""The harness's clocks against a stub that injects known delays.

The stub (a separate process) waits ``--first-delay`` before the first chunk and
``--token-delay`` before each later one, so TTFT, every inter-token gap and E2E are known.
Requests run one at a time. Two kinds of bound:

- **Causality, against the injected delays**: no token may be seen before the stub sent
  it, so each token's arrival (TTFT plus the gaps before it) is at least what was injected
  (less 1 ms of clock granularity); a single gap may look shorter when the chunk before it
  was read late.
- **Nothing added or lost, against a control client**: the same requests, one at a time,
  read by the plainest aiohttp client (a clock at the send and at each line) right after
  the harness's run on the same stub. Medians of TTFT, inter-token gap and E2E (and the
  mean TPOT) may differ from the control's by at most 10 ms (E2E 20 ms). The machine's
  own delays are in both: on the 2-core VMs this suite runs on, the stub's 250 ms sleep
  wakes 7-9 ms late and each loopback hop to an idle process takes up to ~9 ms (seen
  2026-12-06: TTFT medians of ~284 ms for 250 injected, in the harness and in the
  control alike), so a bound on the injected values alone measured the machine, not
  the harness. Single values, delayed
  when the client or the stub loses its core to other work (seen: 77 ms at a load average
  of 5 on 2 cores), by 250 ms.
"""

import asyncio
import time

import aiohttp
import numpy as np
import pytest

from harness import metrics

from tests.helpers.harness_fixtures import records, run_inproc, stub

FIRST, GAP = 0.25, 0.06
SLACK, MEDIAN_SLACK, STRAGGLER = 0.001, 0.010, 0.25


def _run(tmp_path, tokens_per_chunk: int, output_len: int = 5, control: bool = False):
    """The harness's measured records and run folder; with ``control``, also the control
    client's measurements of the same requests (:func:`_control`)."""
    with stub("--first-delay", str(FIRST), "--token-delay", str(GAP),
              "--tokens-per-chunk", str(tokens_per_chunk)) as (url, _):
        out = run_inproc(url, tmp_path / "r", num_prompts=6, output_len=output_len,
                         concurrency=[1], metrics=False)
        seen = asyncio.run(_control(url, 6, output_len)) if control else None
    recs = [r for r in records(out) if not r["warmup"]]
    return (recs, out, seen) if control else (recs, out)


async def _control(url: str, n: int, output_len: int) -> dict[str, np.ndarray]:
    """TTFT, inter-token gaps and E2E of ``n`` streamed requests, one at a time, as the
    plainest client sees them: a clock at the send and at each event line."""
    ttft, itl, e2e = [], [], []
    body = {"input_ids": list(range(3, 35)), "stream": True,
            "sampling_params": {"max_new_tokens": output_len, "ignore_eos": True}}
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            t0 = time.perf_counter()
            arrivals = []
            async with session.post(url + "/generate", json=body) as r:
                async for line in r.content:
                    if line.startswith(b"data:") and line.strip() != b"data: [DONE]":
                        arrivals.append(time.perf_counter())
            e2e.append(time.perf_counter() - t0)
            ttft.append(arrivals[0] - t0)
            itl += list(np.diff(arrivals))
    return {"ttft": np.array(ttft), "itl": np.array(itl), "e2e": np.array(e2e)}


def test_ttft_itl_e2e_match_the_injected_delays(tmp_path):
    recs, out, control = _run(tmp_path, tokens_per_chunk=1, control=True)
    assert len(recs) == 6 and all(r["ok"] for r in recs)
    ttft = np.array([r["ttft"] for r in recs])
    itl = np.array([x for r in recs for x in r["itl"]])
    e2e = np.array([r["e2e"] for r in recs])
    assert all(len(r["itl"]) == 4 for r in recs)  # one gap per token after the first
    assert len(control["itl"]) == 6 * 4
    for name, got, want, slack in (("ttft", ttft, FIRST, MEDIAN_SLACK),
                                   ("itl", itl, GAP, MEDIAN_SLACK),
                                   ("e2e", e2e, FIRST + 4 * GAP, 2 * MEDIAN_SLACK)):
        ctl = control[name]
        assert abs(np.median(got) - np.median(ctl)) <= slack, (name, got, ctl)
        assert got.max() <= want + STRAGGLER, (name, got, want)
    for r in recs:  # token k arrives no earlier than FIRST + k gaps
        arrivals = r["ttft"] + np.cumsum([0.0, *r["itl"]])
        assert (arrivals >= FIRST + GAP * np.arange(5) - SLACK).all(), arrivals
    # the gaps add up to the time from the first to the last token; E2E ends at the end of
    # the stream, which follows the last token
    for r in recs:
        assert 0 <= r["e2e"] - r["ttft"] - sum(r["itl"]) <= STRAGGLER
    # and the summary reports the same numbers in ms
    s = metrics.summarize(metrics.load_run(out)).iloc[0]
    assert s["ttft_p50_ms"] == pytest.approx(np.median(ttft) * 1e3)
    assert s["itl_p50_ms"] == pytest.approx(np.median(itl) * 1e3)
    assert s["tpot_mean_ms"] == pytest.approx(np.mean((e2e - ttft) / 4) * 1e3)
    tpot_control = np.mean(control["itl"]) * 1e3  # 4 gaps a request, the same for all
    assert abs(s["tpot_mean_ms"] - tpot_control) <= MEDIAN_SLACK * 1e3


def test_tokens_arriving_together_split_their_gap(tmp_path):
    # chunks of 2 tokens, 5 in all: 2 at TTFT, then 2 after one gap, then 1 after another
    recs, _ = _run(tmp_path, tokens_per_chunk=2)
    for r in recs:
        assert r["chunks"] == 3 and r["completion_tokens"] == 5
        a, b, c = r["itl"]
        assert a == b  # one gap split over the two tokens of a chunk
        assert r["ttft"] >= FIRST - SLACK and r["ttft"] + a + b >= FIRST + GAP - SLACK
        assert r["ttft"] + a + b + c >= FIRST + 2 * GAP - SLACK
        assert a + b <= GAP + STRAGGLER and c <= GAP + STRAGGLER
    split = np.median([r["itl"][0] for r in recs])
    assert abs(split - GAP / 2) <= MEDIAN_SLACK
