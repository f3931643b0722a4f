"""The server's timeline: /metrics parsing, sampling a stub while levels run (with repeats),
a server without /metrics, and the real SGLang server, whose pools admit exactly the
requests the roofline says they do."""

import json
import subprocess
import sys

import pytest

from harness import metrics, report, sampler

from tests.helpers.harness_fixtures import run_inproc, stub
from tests.helpers.serving import REPO, start_server

EXPOSITION = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{engine_type="unified",model_name="m",tp_rank="0"} 3.0
sglang:num_running_reqs{engine_type="unified",model_name="m",tp_rank="1"} 2.0
# TYPE sglang:full_token_usage gauge
sglang:full_token_usage{model_name="m",tp_rank="0"} 0.5
sglang:full_token_usage{model_name="m",tp_rank="1"} 0.75
# TYPE sglang:swa_token_usage gauge
sglang:swa_token_usage{model_name="m"} NaN
# TYPE sglang:num_retracted_requests counter
sglang:num_retracted_requests_total{model_name="m"} 4.0
sglang:num_retracted_requests_created{model_name="m"} 1.7e9
# TYPE sglang:something_else gauge
sglang:something_else{model_name="m"} 9.0
"""


def test_parse_sums_counts_and_takes_the_fullest_pool():
    got = sampler.parse(EXPOSITION)
    assert got == {"running": 5.0, "global_usage": 0.75, "retracted_total": 4.0}


def test_what_bounded():
    row = dict(samples=3, peak_running=18, peak_queued=14, peak_global_usage=0.97,
               peak_local_usage=float("nan"), retractions=0)
    assert sampler.what_bounded(row, 32, 32, 32).startswith("KV capacity: at most 18 of 32 ran")
    assert sampler.what_bounded({**row, "peak_running": 32}, 32, 32, 32).startswith("not admission")
    assert sampler.what_bounded({**row, "retractions": 2}, 32, 32, 32).startswith("KV pool: 2 retraction")
    assert sampler.what_bounded({**row, "peak_global_usage": 0.3, "peak_running": 16}, 32, 32, 16) \
        .startswith("--max-running-requests")
    assert sampler.what_bounded({**row, "samples": 0}, 32, 32, 32).startswith("no sample")


def test_timeline_of_a_stub_across_levels_and_repeats(tmp_path):
    with stub("--metrics", "--pool-requests", "4", "--first-delay", "0.2", "--token-delay", "0.2") as (url, _):
        out = run_inproc(url, tmp_path / "r", num_prompts=3, output_len=4, concurrency=[1, 3],
                         repeats=2, metrics_interval=0.1)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["timeline"]["note"] is None and meta["timeline"]["samples"] > 20
    assert [(w["level"], w["repeat"]) for w in meta["levels"]] == [(1, 0), (3, 0), (1, 1), (3, 1)]
    tl = sampler.load(out)
    per = sampler.level_summary(tl, meta["levels"])
    assert per["samples"].min() >= 3
    assert per.set_index(["level", "repeat"])["peak_running"].to_dict() == {
        (1, 0): 1, (3, 0): 3, (1, 1): 1, (3, 1): 3}
    assert per.set_index("level")["peak_global_usage"].max() == 3 / 4
    # every sample inside a level window carries that level
    inside = tl[tl["level"].notna()]
    assert set(inside["level"]) == {1, 3} and (inside["running"] <= inside["level"]).all()
    # records carry their run; the summary has one row per level over both runs
    s = metrics.summarize(metrics.load_run(out)).set_index("level")
    assert s["runs"].tolist() == [2, 2] and s["ok"].tolist() == [6, 6]
    files = report.render([out], out)
    md = files["md"].read_text()
    assert "## Server timeline" in md and "not admission: all 3 ran at once" in md
    assert files["timeline"].stat().st_size > 1000


def test_a_server_without_metrics_is_noted_and_the_run_goes_on(tmp_path):
    with stub() as (url, _):
        out = run_inproc(url, tmp_path / "r", num_prompts=2, output_len=2, concurrency=[1])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and "--enable-metrics" in meta["timeline"]["note"]
    assert not (out / sampler.TIMELINE).exists()
    md = report.render([out], out)["md"].read_text()
    assert "HTTP 404" in md and "--enable-metrics" in md


@pytest.mark.server
def test_real_server_timeline_and_pool_admission(tmp_path):
    """A tiny `standard` server whose pool holds 700 tokens: 4 requests of 128 + 32 tokens.
    The roofline's pool admission, the pool SGLang allocated and the most requests the
    timeline saw running agree; the other 4 of the level's 8 queue."""
    from mixkv_bench import roofline as rl
    from sglang_mixkv.plan import preset
    from sglang_mixkv.model_folder import SIZES

    size, plan = SIZES["tiny"], preset("standard", 12)
    budget = 700 * rl.layer_bytes(size) * 12
    srv = start_server(["--plan", "standard", "--size", "tiny", "--kv-budget", str(budget),
                        "--max-running-requests", "8", "--enable-metrics",
                        "--decode-log-interval", "1"], tmp_path / "server.log")
    try:
        info = srv.get("/server_info").json()
        p = subprocess.run([sys.executable, "-m", "harness", "run", "--url", srv.url, "--num-prompts", "8",
                            "--input-len", "128", "--output-len", "32", "--concurrency", "8",
                            "--warmup", "0", "--metrics-interval", "0.2", "--out", str(tmp_path / "r")],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        srv.stop()
    assert p.returncode == 0, p.stderr
    admitted = rl.pool_admitted(size, plan, rl.Serving(budget, 8, 256, 4), 160)
    assert admitted == info["internal_states"][0]["memory_usage"]["token_capacity"] // 160 == 4
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    per = sampler.level_summary(sampler.load(tmp_path / "r"), meta["levels"]).iloc[0]
    assert per["peak_running"] == admitted and per["peak_queued"] >= 8 - admitted - 1
    assert per["retractions"] == 0 and 0.8 < per["peak_global_usage"] <= 1.0
    bounds, _ = report.timeline_bounds([tmp_path / "r"])
    assert bounds.iloc[0]["bounded_by"].startswith("KV capacity: at most 4 of 8 ran")
