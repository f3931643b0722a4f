"""Client and runner against the stub: both APIs, exact lengths, ITL accounting, cache."""

import asyncio
import json

import pytest

from tests.helpers.harness_fixtures import records, run_inproc, stub


@pytest.mark.parametrize("api", ["generate", "openai", "chat"])
def test_every_api_exact_lengths(tmp_path, api):
    with stub() as (url, _):
        d = run_inproc(url, tmp_path / "r", api=api, concurrency=[1, 3], warmup=2)
    recs = records(d)
    measured = [r for r in recs if not r["warmup"]]
    assert len(recs) == 2 + 2 * 6 and len(measured) == 12
    for r in measured:
        assert r["ok"] and r["error"] is None and r["mismatch"] is None
        template = 3 if api == "chat" else 0  # the stub's chat template: 3 tokens
        assert (r["prompt_tokens"], r["completion_tokens"], r["stream_tokens"]) == (32 + template, 5, 5)
        assert len(r["itl"]) == 4 and r["chunks"] == 5
        assert 0 <= r["due"] <= r["sent"] <= r["first"] <= r["done"]
        assert r["ttft_from_due"] >= r["ttft"] > 0
    meta = json.loads((d / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["flush"] == {"1": "ok", "3": "ok"}
    assert meta["config"]["api"] == api and (d / "server_info.json").is_file()


@pytest.mark.parametrize("api", ["generate", "openai", "chat"])
def test_multi_token_chunks(tmp_path, api):
    # 7 tokens in chunks of 3: [3, 3, 1]; the first chunk's extra 2 tokens get no ITL entry
    with stub("--tokens-per-chunk", "3", "--token-delay", "0.01") as (url, _):
        d = run_inproc(url, tmp_path / "r", api=api, output_len=7, num_prompts=2)
    for r in records(d):
        assert r["ok"] and r["completion_tokens"] == 7 and r["chunks"] == 3
        itl = r["itl"]
        assert len(itl) == 4
        assert itl[0] == itl[1] == itl[2]  # one gap split over 3 tokens
        assert sum(itl) <= r["done"] - r["first"] + 1e-6


def test_cached_tokens_and_flush(tmp_path):
    # The same prompt twice without a flush: the second is a cache hit
    with stub() as (url, _):
        d = run_inproc(url, tmp_path / "a", num_prompts=1, concurrency=[1, 1], flush=False)
        e = run_inproc(url, tmp_path / "b", num_prompts=1, concurrency=[1, 1], seed=9)
    assert [r["cached_tokens"] for r in records(d)] == [0, 31]
    assert [r["cached_tokens"] for r in records(e)] == [0, 0]  # flushed between levels


def test_flush_with_the_admin_key_or_a_note_without_it(tmp_path):
    """A server whose /flush_cache wants an admin key: with the key every level is
    flushed; without it the run still measures, and its meta and report say the levels
    ran unflushed (a run against a server it did not start)."""
    with stub("--admin-key", "adm") as (url, _):
        d = run_inproc(url, tmp_path / "a", concurrency=[1, 2], admin_api_key="adm")
        e = run_inproc(url, tmp_path / "b", concurrency=[1, 2])
    assert json.loads((d / "meta.json").read_text())["flush"] == {"1": "ok", "2": "ok"}
    meta = json.loads((e / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["flush"] == {"1": "refused"}
    assert "admin key" in meta["flush_note"]
    from harness import report

    assert "refused /flush_cache without its admin key" in \
        report.render([e], e)["md"].read_text()


def test_a_flush_that_fails_stops_the_run(tmp_path, monkeypatch):
    """The wrong admin key, or a server that never flushes: the run stops (status
    failed), keeping the levels it finished."""
    from harness import runner

    with stub("--admin-key", "adm") as (url, _):
        with pytest.raises(runner.FlushError, match="refused /flush_cache with the admin key"):
            run_inproc(url, tmp_path / "a", admin_api_key="wrong")
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["status"] == "failed"
    monkeypatch.setattr(runner, "FLUSH_RETRY_S", 1.0)
    with stub("--flush-busy") as (url, _):
        with pytest.raises(runner.FlushError, match="kept failing"):
            run_inproc(url, tmp_path / "b")


def test_vocab_discovered_from_server_model_folder(tmp_path):
    with stub("--vocab", "40") as (url, _):
        d = run_inproc(url, tmp_path / "r", id_range=None, num_prompts=2)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["config"]["vocab_size"] == 40 and meta["config"]["id_range"] == {"lo": 3, "hi": 40}
    assert all(r["ok"] for r in records(d))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_poisson_rate_sets_due_times(tmp_path, loop):
    # uvloop's timers may fire ~1 ms early: nothing may be sent before its due time anyway
    mod = asyncio if loop == "asyncio" else pytest.importorskip(loop)
    with stub() as (url, _):
        d = run_inproc(url, tmp_path / "r", loop_factory=mod.new_event_loop, rate=200.0, num_prompts=40,
                       concurrency=[40])
    recs = sorted(records(d), key=lambda r: r["index"])
    dues = [r["due"] for r in recs]
    assert dues == sorted(dues) and dues[0] > 0 and all(r["rate"] == 200.0 for r in recs)
    assert all(r["sent"] >= r["due"] for r in recs)


@pytest.mark.parametrize("event", [
    {"text": "a b", "output_ids": [5, 6], "meta_info": {"completion_tokens": 2, "x": {"y": [1]}}},
    {"meta_info": {"completion_tokens": 1}, "output_ids": [5]},  # meta_info not last
    {"error": {"message": "bad"}, "meta_info": {"completion_tokens": 1}},
    {"text": "\"meta_info\": {}", "output_ids": []},  # the key's text inside a string
    {"output_ids": [1]},
])
def test_generate_fast_parse_keeps_what_we_read(event):
    from harness.client import GenerateApi

    data = json.dumps(event).encode()
    got = GenerateApi.parse(data)
    assert got.get("meta_info") == event.get("meta_info") and got.get("error") == event.get("error")
