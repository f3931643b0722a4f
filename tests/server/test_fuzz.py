"""One bad request must never take the endpoint down (issue 11), against the real server.

One tiny ``ma`` server under SGLang's strict per-step pool check
(``SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY=1``) takes, in order: every bad input that
killed stock SGLang 0.5.17 (each a 400 naming the field and the bound, the server still
serving), a few hundred fuzzed bodies (:func:`sglang_mixkv.soak.fuzz_case`), and a short
soak of mixed valid / invalid / aborted requests. After each request the scheduler must
answer; at the end the KV pool must be empty. The server has an inference key, which the
test holds, and an admin key, which it never does: admin routes are in the fuzzed mix and
must be refused. The seed is in every failure message: ``MIXKV_FUZZ_SEED=N`` reruns it
(``MIXKV_FUZZ_REQUESTS`` changes the count).
"""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest
import requests

from mixkv_bench import soak
from sglang_mixkv.defaults import auth_headers
from sglang_mixkv.model_folder import SIZES
from tests.helpers.serving import start_server

pytestmark = pytest.mark.server
SIZE = SIZES["tiny"]
V = SIZE.vocab
SEED = int(os.environ.get("MIXKV_FUZZ_SEED", "11"))
FUZZ_REQUESTS = int(os.environ.get("MIXKV_FUZZ_REQUESTS", "300"))
SP = {"max_new_tokens": 2}
KEY = "fuzz-" + secrets.token_hex(8)
HEADERS = auth_headers(KEY)

#: (what, path, body, words the 400's message must contain). Each of these killed the
#: server or was accepted silently before sglang_seams.validation (see its docstring), or
#: was a 500 (the last three).
BAD = [
    ("id = vocab", "/generate", {"input_ids": [5, V], "sampling_params": SP},
     ["input_ids[1]", f"[0, {V})"]),
    ("id 99999", "/generate", {"input_ids": [5, 99999], "sampling_params": SP},
     ["input_ids[1] = 99999", f"[0, {V})"]),
    ("id -1", "/generate", {"input_ids": [-1, 5], "sampling_params": SP},
     ["input_ids[0] = -1", f"[0, {V})"]),
    ("id true", "/generate", {"input_ids": [5, True], "sampling_params": SP},
     ["input_ids[1]", "not an integer"]),
    ("empty batch row", "/generate", {"input_ids": [[5], []], "sampling_params": SP},
     ["input_ids[1]", "empty"]),
    ("batch row id", "/generate", {"input_ids": [[5, 6], [5, V]], "sampling_params": SP},
     ["input_ids[1][1]", f"[0, {V})"]),
    ("streamed id", "/generate", {"input_ids": [5, V], "sampling_params": SP, "stream": True},
     ["input_ids[1]", f"[0, {V})"]),
    ("top_logprobs_num", "/generate", {"input_ids": [5, 6], "sampling_params": SP,
                                       "return_logprob": True, "top_logprobs_num": 100000},
     ["top_logprobs_num", f"[0, {V}]"]),
    ("batch top_logprobs_num", "/generate",
     {"input_ids": [[5], [6]], "sampling_params": SP, "return_logprob": True,
      "top_logprobs_num": [1, V + 1]}, ["top_logprobs_num[1]", f"[0, {V}]"]),
    ("negative top_logprobs_num", "/generate", {"input_ids": [5, 6], "sampling_params": SP,
                                                "return_logprob": True, "top_logprobs_num": -1},
     ["top_logprobs_num", f"[0, {V}]"]),
    ("token_ids_logprob", "/generate", {"input_ids": [5, 6], "sampling_params": SP,
                                        "return_logprob": True, "token_ids_logprob": [V]},
     ["token_ids_logprob", f"[0, {V})"]),
    ("stop_token_ids", "/generate", {"input_ids": [5, 6],
                                     "sampling_params": {**SP, "stop_token_ids": [V]}},
     ["stop_token_ids", f"[0, {V})"]),
    ("logprob_start_len", "/generate", {"input_ids": [5, 6], "sampling_params": SP,
                                        "return_logprob": True, "logprob_start_len": -5},
     ["logprob_start_len", "-1"]),
    ("batch list length", "/generate", {"input_ids": [[5], [6]], "sampling_params": [SP]},
     ["sampling_params", "batch of 2"]),
    ("session id not a string", "/generate",
     {"input_ids": [5, 6], "sampling_params": SP, "session_params": {"id": {"x": 1}}},
     ["session_params.id", "str"]),
    ("session rid a list", "/generate",
     {"input_ids": [5, 6], "sampling_params": SP, "session_params": {"id": "s", "rid": ["r"]}},
     ["session_params.rid", "str"]),
    ("session offset a string", "/generate",
     {"input_ids": [5, 6], "sampling_params": SP, "session_params": {"id": "s", "offset": "3"}},
     ["session_params.offset", "int"]),
    ("session unknown field", "/generate",
     {"input_ids": [5, 6], "sampling_params": SP, "session_params": {"id": "s", "turn": 2}},
     ["session_params", "'turn'"]),
    ("completions prompt", "/v1/completions", {"model": "default", "prompt": [5, V],
                                               "max_tokens": 2}, ["prompt[1]", f"[0, {V})"]),
    ("completions batch", "/v1/completions", {"model": "default", "prompt": [[5], [-1]],
                                              "max_tokens": 2}, ["prompt[1][0]", f"[0, {V})"]),
    ("completions stream", "/v1/completions", {"model": "default", "prompt": [5, V],
                                               "max_tokens": 2, "stream": True},
     ["prompt[1]", f"[0, {V})"]),
    ("completions logprobs", "/v1/completions", {"model": "default", "prompt": [5, 6],
                                                 "max_tokens": 2, "logprobs": 100000},
     ["logprobs", f"[0, {V}]"]),
    ("completions stop_token_ids", "/v1/completions",
     {"model": "default", "prompt": [5, 6], "max_tokens": 2, "stop_token_ids": [V]},
     ["stop_token_ids[0]", f"[0, {V})"]),
    # 500s rather than crashes (sglang_seams.patches.parser_names)
    ("unknown tool parser", "/parse_function_call", {"text": "x", "tool_call_parser": "nope"},
     ["tool_call_parser 'nope'", "qwen25"]),
    ("no tool parser", "/parse_function_call", {"text": "x"}, ["tool_call_parser None"]),
    ("unknown reasoning parser", "/separate_reasoning",
     {"text": "x", "reasoning_parser": "nope"}, ["reasoning_parser 'nope'", "deepseek-r1"]),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    s = start_server(["--plan", "ma", "--size", "tiny", "--model-path", str(tmp / "ma"),
                      "--kv-budget", "16MiB", "--max-running-requests", "8",
                      "--chunked-prefill-size", "128", "--enable-metrics"],
                     log=tmp / "server.log",
                     env={**soak.STRICT_MEM_CHECK, "MIXKV_API_KEY": KEY,
                          "MIXKV_ADMIN_API_KEY": secrets.token_hex(16)})
    yield s
    s.stop()


def _served(s) -> bool:
    r = s.post("/generate", {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 3,
                                                                          "ignore_eos": True}},
               headers=HEADERS)
    return r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 3


def test_bad_inputs_are_400s_naming_field_and_bound(server):
    for what, path, body, words in BAD:
        r = requests.post(server.url + path, json=body, timeout=60, headers=HEADERS)
        assert r.status_code == 400, f"{what}: {r.status_code} {r.text[:300]}"
        msg = r.json()["error"]["message"] if "error" in r.json() else r.json()["message"]
        assert all(w in msg for w in words), f"{what}: {msg!r} lacks {words}"
        assert _served(server), f"{what}: the server stopped serving"
    # the bounds themselves are fine
    r = server.post("/generate", {"input_ids": [0, V - 1], "sampling_params": SP,
                                  "return_logprob": True, "top_logprobs_num": V,
                                  "token_ids_logprob": [0, V - 1]}, headers=HEADERS)
    assert r.status_code == 200, r.text
    assert len(r.json()["meta_info"]["output_top_logprobs"][0]) == V


def test_fuzzed_requests_never_take_the_server_down(server):
    cases = soak.make_cases(FUZZ_REQUESTS, SEED, V, SIZE.max_position, "fuzz", keyed=True)
    assert {"admin", "fuzz"} == {c.kind for c in cases}
    s = asyncio.run(soak.run(server.url, cases, concurrency=4, seed=SEED, headers=HEADERS))
    assert not s.failures, s.failure_text()
    assert server.alive(), f"seed {SEED}: the server exited"
    assert set(s.pool["pools"]) == {"global_tokens_used", "local_token_usage"}
    assert not s.pool_problems(), f"seed {SEED}: after the fuzz run: {s.pool_problems()}"
    assert "leak" not in server.log_text().lower()
    statuses = {st for v in s.kinds.values() for st in v}
    assert any(st.startswith("200") for st in statuses) and "400" in statuses, s.kinds
    assert set(s.kinds["admin"]) <= {"401", "403"}, s.kinds["admin"]


def test_short_soak_of_mixed_requests(server):
    """The CI-sized variant of ``python -m sglang_mixkv.soak`` (1,200 requests there)."""
    cases = soak.make_cases(120, SEED + 1, V, SIZE.max_position, "soak", keyed=True)
    s = asyncio.run(soak.run(server.url, cases, concurrency=12, seed=SEED + 1, headers=HEADERS))
    assert not s.failures, s.failure_text()
    assert s.ok(), s.pool
    assert set(s.kinds) == set(soak.KINDS), s.kinds
    assert _served(server) and "leak" not in server.log_text().lower()
