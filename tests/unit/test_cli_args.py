"""Bad settings of the command lines (``python -m harness run``, ``make bench``, ``serve``,
``capacity``, ``roofline``, ``soak``) stop before anything is sent, started or written:
exit code 2, one line naming the flag, no run or model folder (a level of 0 requests
waited forever, 0 prompts divided by zero in the report, a negative rate or a missing
trace file ended in a traceback, ``--window 0`` served the default window and
``--kv-budget 0`` a server that died at start-up)."""

import pytest

from harness import __main__ as harness_cli
from harness import runner
from mixkv_bench import bench, capacity, roofline_cli, soak
from sglang_mixkv import serve
from tests.helpers.harness_fixtures import run_inproc, stub


@pytest.mark.parametrize("args, says", [
    (["--concurrency", "1,0"], "--concurrency item 2 = 0: Input should be greater than 0"),
    (["--num-prompts", "-3"], "--num-prompts -3: Input should be greater than 0"),
    (["--output-len", "0"], "--output-len 0: Input should be greater than 0"),
    (["--request-rate", "-1"], "--request-rate -1.0: Input should be greater than 0"),
    (["--trace", "no-such.jsonl"], "--trace no-such.jsonl: Path does not point to a file"),
    (["--timeout", "0"], "--timeout 0.0: Input should be greater than 0"),
    (["--repeats", "0"], "--repeats 0: Input should be greater than 0"),
    (["--warmup", "-1"], "--warmup -1: Input should be greater than or equal to 0"),
    (["--metrics-interval", "0"], "--metrics-interval 0.0: Input should be greater than 0"),
    (["--shared-prefix", "0:8"], "--shared-prefix item 1 = 0: Input should be greater than 0"),
])
def test_harness_refuses_bad_settings(tmp_path, capsys, args, says):
    out = tmp_path / "run"
    code = harness_cli.main(["run", "--url", "http://127.0.0.1:9", "--out", str(out), *args])
    assert code == 2 and capsys.readouterr().err.strip() == f"error: {says}"
    assert not out.exists()


def test_a_workload_longer_than_the_servers_context_is_refused(tmp_path):
    """The server's own context (``/v1/models`` ``max_model_len``, as SGLang and vLLM say
    it): prompt + output may fill it (SGLang's rule, ``tokenizer_manager.py:1165-1170``),
    one token more and every request would be a 400, so nothing is sent."""
    with stub("--context", "64") as (url, _):
        with pytest.raises(runner.StartupError, match="60 prompt \\+ 5 output tokens exceed "
                                                      "the server's context of 64"):
            run_inproc(url, tmp_path / "long", input_len=60, output_len=5)
        assert not (tmp_path / "long").exists()
        run_inproc(url, tmp_path / "fits", input_len=59, output_len=5, num_prompts=2)
        with pytest.raises(runner.StartupError, match="context of 32"):  # --max-context wins
            run_inproc(url, tmp_path / "mine", input_len=30, output_len=5, max_context=32)
    assert (tmp_path / "fits" / "requests.jsonl").read_text().count("\n") == 2


@pytest.mark.parametrize("args, says", [
    (["--concurrency", "0"], "--concurrency item 1 = 0: Input should be greater than 0"),
    (["--num-prompts", "0"], "--num-prompts 0: Input should be greater than 0"),
    (["--repeats", "0"], "--repeats 0: Input should be greater than 0"),
    (["--mem-fraction", "1.5"], "--mem-fraction 1.5: Input should be less than or equal to 1"),
    (["--dp", "0"], "--dp 0: Input should be greater than 0"),
    (["--kv-budget", "lots"], "--kv-budget lots: Value error, cannot read a byte size from "
                              "'lots' (e.g. 80GiB, 80GB, 1e9)"),
    (["--input-len", "4000", "--output-len", "97"],
     "4000 prompt + 97 output tokens exceed the 'tiny' model's context of 4096"),
])
def test_bench_refuses_bad_settings(tmp_path, capsys, args, says):
    out = tmp_path / "bench"
    assert bench.main(["--plans", "standard", "--out", str(out), *args]) == 2
    assert capsys.readouterr().err.strip() == f"error: {says}"
    assert not out.exists()


@pytest.mark.parametrize("args, says", [
    (["--window", "0"], "error: invalid plan: sliding window must be >= 1 token, got 0"),
    (["--kv-budget", "0GiB"],
     "error: argument --kv-budget: '0GiB' is no memory at all: give a size of at least one byte"),
])
def test_serve_refuses_bad_settings(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.setenv("MIXKV_MODELS", str(tmp_path))
    try:
        code = serve.main(["--plan", "ma", "--dry-run", *args])
    except SystemExit as e:  # argparse's refusal
        code = e.code
    assert code == 2 and capsys.readouterr().err.strip().endswith(says)
    assert not any(tmp_path.iterdir())


def test_serve_writes_a_folder_per_window(tmp_path, monkeypatch, capsys):
    """Another window is another model: its own folder, not a rewrite of the default's."""
    monkeypatch.setenv("MIXKV_MODELS", str(tmp_path))
    for extra in ([], ["--window", "16"]):
        assert serve.main(["--plan", "ma", "--dry-run", *extra]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-ma-seed0", "tiny-ma-w16-seed0"]
    assert '"sliding_window": 16' in (tmp_path / "tiny-ma-w16-seed0" / "config.json").read_text()


@pytest.mark.parametrize("args, says", [
    (["--window", "-3"], "argument --window: -3 is not a positive integer (Input should be "
                         "greater than 0)"),
    (["--request-tokens", "0"], "argument --request-tokens: 0 is not a positive integer"),
    (["--mem-fraction", "2"], "argument --mem-fraction: 2 is not a share in (0, 1] (Input "
                              "should be less than or equal to 1)"),
])
def test_capacity_refuses_bad_settings(capsys, args, says):
    """(A window of -3 or a request of 0 tokens divided by zero; a memory fraction of 2
    printed a table.)"""
    with pytest.raises(SystemExit) as e:
        capacity.main(args)
    assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("args, says", [
    (["--concurrency", "1,0"], "argument --concurrency: 1,0 is not a comma-separated list of "
                               "positive integers (Input should be greater than 0)"),
    (["--flops-fraction", "0"], "argument --flops-fraction: 0 is not a share in (0, 1]"),
])
def test_roofline_refuses_bad_settings(capsys, args, says):
    """(A FLOP/s fraction of 0 divided by zero; a level of 0 and a bandwidth fraction of 3
    printed bounds.)"""
    with pytest.raises(SystemExit) as e:
        roofline_cli.main(args)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_soak_refuses_bad_settings_and_a_server_that_is_not_there(capsys):
    """(Concurrency 0 sent nothing and passed; an unreachable --url was a traceback.)"""
    with pytest.raises(SystemExit) as e:
        soak.main(["--url", "http://127.0.0.1:9", "--concurrency", "0"])
    assert e.value.code == 2 and "--concurrency: 0 is not a positive integer" in capsys.readouterr().err
    assert soak.main(["--url", "http://127.0.0.1:9", "--requests", "4"]) == 2
    assert capsys.readouterr().err.strip() == "error: no healthy server at http://127.0.0.1:9 (GET /health)"
