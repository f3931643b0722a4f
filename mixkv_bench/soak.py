"""``python -m sglang_mixkv.soak``: many mixed requests against one real server; it must
answer every one with 2xx or 4xx, stay alive throughout and end with an empty KV pool.

    python -m sglang_mixkv.soak --requests 1200 --concurrency 16 --out results/soak-cpu
    python -m sglang_mixkv.soak --url http://127.0.0.1:30000 --requests 200  # running server

Without ``--url`` it starts our tiny ``ma`` server with SGLang's strict per-step pool check
(``SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY=1``: a lost or doubly freed KV slot stops
the server), an inference key and an admin key of its own (in the server's environment,
never its command line), and stops it at the end. Request kinds (seeded, so a run can be
repeated):

- ``valid``: ``/generate`` or ``/v1/completions``, streamed or not, single or batch,
  prompts of 1 to ~3,000 tokens; must be a 200 with no error event;
- ``invalid``: a known bad input (ids outside the vocabulary, an empty batch row,
  ``top_logprobs_num`` / stop ids / ``logprob_start_len`` out of range, a prompt longer
  than the context, ...); must be a 4xx;
- ``aborted``: a valid stream the client closes after its first event, or (half of
  them) after a random 10-300 ms before any event: mid-prefill for a long prompt;
- ``fuzz``: a random body from :func:`fuzz_case` (ids, lengths, sampling parameters,
  NaN and infinite values, broken grammars, thousands of stop strings, logprob options,
  streaming, batch forms, text and ids at once, malformed JSON); must be 2xx or 4xx;
- ``admin``: an admin route called with the inference key (when the run has one); must
  be 401 or 403.

After every request ``GET /v1/loads`` (answered by the scheduler) must succeed; at the end
the run waits for the server to be idle, flushes the prefix cache with the admin key (if
it has one) and reads, for each pool ``/server_info`` says the server has, its gauge in
``/metrics``: it must be there and read 0. The fuzz test (``tests/server/test_fuzz.py``)
drives the same code with fewer requests, holding no admin key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from harness import sampler
from harness.errors import POSITIVE
from sglang_mixkv.defaults import ADMIN_API_KEY_ENV, API_KEY_ENV, auth_headers, redact_argv
from sglang_mixkv.model_folder import get_size

KINDS = ("valid", "invalid", "aborted", "fuzz", "admin")
#: Share of each kind in a soak run (``admin`` only against a server with an API key).
MIX = {"valid": 0.42, "invalid": 0.2, "aborted": 0.15, "fuzz": 0.18, "admin": 0.05}
#: Admin routes an inference key must not open (a sample of SGLang 0.5.17's 38; the full
#: matrix is tests/server/test_admin_keys.py), each with a body that would act if it could.
ADMIN_ROUTES = [
    ("/pause_generation", {}), ("/flush_cache", None), ("/release_memory_occupation", {}),
    ("/update_weights_from_disk", {"model_path": "/nonexistent"}), ("/abort_request",
    {"abort_all": True}), ("/slow_down", {"forward_sleep_time": 5}),
    ("/configure_logging", {"log_requests": True}), ("/start_profile", {}),
    ("/set_internal_state", {"server_args": {"max_running_requests": 1}}),
    ("/unload_lora_adapter", {"lora_name": "x"}), ("/freeze_gc", None),
]
#: One stream event with every prompt position's top logprobs over the vocabulary is MBs.
READ_BUFSIZE = 2**26
STRICT_MEM_CHECK = {"SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY": "1"}


@dataclass
class Case:
    """One request: ``body`` is sent as JSON, ``raw`` (when set) as the bytes given."""

    kind: str
    path: str
    body: Any = None
    raw: bytes | None = None
    abort: bool = False  # close the stream after its first event (a streamed body)
    leave_after: float | None = None  # or leave after this many seconds, before any event
    expect: str = "2xx|4xx"  # "|"-separated status classes ("2xx") or codes ("401")

    def show(self) -> str:
        text = self.raw.decode(errors="replace") if self.raw is not None else json.dumps(self.body)
        return f"POST {self.path} {text[:600]}{'...' if len(text) > 600 else ''}"


@dataclass
class Outcome:
    status: int | None = None
    error_events: list[int] = field(default_factory=list)  # codes of errors inside a stream
    aborted: bool = False
    problem: str | None = None  # why the answer breaks the rules; None = fine


# ---- request bodies ------------------------------------------------------------------
def _bad_id(rng: random.Random, vocab: int) -> Any:
    return rng.choice([vocab, vocab + 1, 10 * vocab, 2**31, 2**63 - 1, 2**63, -1, -vocab,
                       1.5, True, "7", None])


def _ids(rng: random.Random, vocab: int, n: int) -> list[int]:
    return [rng.randrange(3, vocab) for _ in range(n)]


def _length(rng: random.Random, context: int) -> int:
    r = rng.random()
    if r < 0.75:
        return rng.choice([1, 2, 3, 7, 16, 33, 64, 100, 200])
    if r < 0.95:
        return rng.randrange(200, 1200)
    return rng.choice([context - 40, context - 1, context, context + 5])


def _maybe(rng: random.Random, p: float) -> bool:
    return rng.random() < p


def _prompt(rng: random.Random, vocab: int, context: int) -> Any:
    """Token ids, maybe with a bad id, maybe empty; or a text prompt."""
    r = rng.random()
    if r < 0.05:
        return []
    if r < 0.12:
        return " ".join(f"t{i}" for i in _ids(rng, vocab, rng.randrange(1, 20)))
    ids: list[Any] = _ids(rng, vocab, _length(rng, context))
    if _maybe(rng, 0.25):
        ids[rng.randrange(len(ids))] = _bad_id(rng, vocab)
    return ids


def _sampling(rng: random.Random, vocab: int) -> dict:
    choices = {
        "max_new_tokens": [0, 1, 4, 8, 16, 24, -1, 10**6],
        "temperature": [0.0, 0.7, 1.0, -0.5, 1e6],
        "top_p": [1.0, 0.9, 0.0, 1.5],
        "top_k": [-1, 1, 5, 0, 100000],
        "min_p": [0.0, 0.1, 2.0],
        "frequency_penalty": [0.0, 1.0, 3.0],
        "presence_penalty": [0.0, -1.0, 2.5],
        "repetition_penalty": [1.0, 1.2, 0.0, 3.0],
        "min_new_tokens": [0, 2, 50],
        "stop_token_ids": [[2], [5, 7], [vocab], [-1], []],
        "stop": ["t5", ["t7", "t9"], ""],
        "ignore_eos": [True, False],
        "n": [1, 2, 0],
        "logit_bias": [{"5": 1.0}, {str(vocab): 1.0}, {"x": 1.0}],
        "sampling_seed": [0, 42, -1, 2**40],
        "skip_special_tokens": [True, False],
        "no_stop_trim": [True, False],
        "regex": ["t[0-9]+"],
        "json_schema": ['{"type": "string"}', "not json"],
    }
    sp = {"max_new_tokens": rng.choice([1, 4, 8, 16])}
    for key in rng.sample(sorted(choices), rng.randrange(0, 5)):
        if key in ("regex", "json_schema") and not _maybe(rng, 0.2):
            continue  # grammars are slow to compile: keep them rare
        sp[key] = rng.choice(choices[key])
    return sp


def _logprobs(rng: random.Random, vocab: int, prompt_len: int) -> dict:
    out: dict[str, Any] = {}
    if _maybe(rng, 0.5):
        out["return_logprob"] = rng.choice([True, False])
    if _maybe(rng, 0.4):
        out["logprob_start_len"] = rng.choice([-2, -1, 0, max(prompt_len - 1, 0), prompt_len,
                                               prompt_len + 3])
    if _maybe(rng, 0.4):
        out["top_logprobs_num"] = rng.choice([-1, 0, 3, vocab, vocab + 1, 100000])
    if _maybe(rng, 0.2):
        out["token_ids_logprob"] = rng.choice([[1, 2], [vocab], [], [-3]])
    return out


def admin_case(rng: random.Random) -> Case:
    """An admin route called with the ordinary key: it must be refused (401 / 403)."""
    path, body = rng.choice(ADMIN_ROUTES)
    return Case("admin", path, body, expect="401|403")


def _odd_sampling(rng: random.Random, vocab: int) -> dict:
    """Sampling options a client may get wrong: NaN and infinite values, grammars that
    do not compile, thousands of stop strings, logit biases outside the vocabulary."""
    nan_inf = [float("nan"), float("inf"), -float("inf")]
    return rng.choice([
        {"temperature": rng.choice(nan_inf)},
        {rng.choice(["frequency_penalty", "presence_penalty", "repetition_penalty"]):
         rng.choice(nan_inf)},
        {"top_p": rng.choice(nan_inf + [2.0])},
        {"regex": rng.choice(["t[", "(", "*t5"])},
        {"json_schema": rng.choice(['{"type": "strin"}', '{"type": ', "[1, 2"])},
        {"stop": [f"t{i}" for i in range(rng.choice([1000, 5000]))]},
        {"logit_bias": {str(vocab + rng.randrange(1, 10**6)): 5.0, "-3": 1.0}},
        {"logit_bias": {"5": float("nan")}},
        {"min_new_tokens": 40, "max_new_tokens": 4},
    ])


def fuzz_case(rng: random.Random, vocab: int, context: int, keyed: bool = False) -> Case:
    """A random request body for ``/generate`` or ``/v1/completions``: valid or not; with
    ``keyed`` (the client holds an inference key) also admin routes it must not open."""
    if keyed and _maybe(rng, 0.04):
        return admin_case(rng)
    if _maybe(rng, 0.12):
        ids = _ids(rng, vocab, rng.randrange(1, 40))
        body: dict[str, Any] = {"input_ids": ids, "sampling_params": {
            "max_new_tokens": 4, **_odd_sampling(rng, vocab)}}
        if _maybe(rng, 0.2):
            body["text"] = "t5 t6 t7"  # text and ids at once
        return Case("fuzz", "/generate", body)
    stream = _maybe(rng, 0.35)
    abort = stream and _maybe(rng, 0.3)
    if _maybe(rng, 0.03):  # not JSON, or JSON of the wrong shape
        raw = rng.choice([b'{"input_ids": [5, 6', b"null", b"[]", b'{"input_ids": "abc"}',
                          b'{"sampling_params": {"max_new_tokens": 2}}'])
        return Case("fuzz", rng.choice(["/generate", "/v1/completions"]), raw=raw)
    if _maybe(rng, 0.7):
        body = {}
        if _maybe(rng, 0.3):  # a batch
            rows = [_prompt(rng, vocab, 300) for _ in range(rng.randrange(1, 4))]
            if all(isinstance(r, list) for r in rows):
                body["input_ids"] = rows
            else:
                body["text"] = [r if isinstance(r, str) else "t5 t6" for r in rows]
            if _maybe(rng, 0.3):
                k = rng.randrange(1, 4)  # maybe not one per row: a 400
                body["sampling_params"] = [_sampling(rng, vocab) for _ in range(k)]
        else:
            p = _prompt(rng, vocab, context)
            body["text" if isinstance(p, str) else "input_ids"] = p
        body.setdefault("sampling_params", _sampling(rng, vocab))
        plen = len(body.get("input_ids") or [])
        body.update(_logprobs(rng, vocab, plen))
        if stream:
            body["stream"] = True
        return Case("fuzz", "/generate", body, abort=abort)
    prompt = _prompt(rng, vocab, context)
    if _maybe(rng, 0.2) and isinstance(prompt, list):
        prompt = [prompt, _ids(rng, vocab, rng.randrange(1, 30))]
    body = {"model": "default", "prompt": prompt, "max_tokens": rng.choice([1, 4, 8, 16, -1]),
            "stream": stream}
    extra = {"temperature": [0.0, 1.0, -1.0], "top_p": [1.0, 0.5, 0.0], "n": [1, 2, 0],
             "stop": ["t9", ["t1", "t2"]], "stop_token_ids": [[2], [vocab]],
             "logprobs": [0, 2, vocab, vocab + 1, -1], "echo": [True, False],
             "ignore_eos": [True, False], "logit_bias": [{"5": 1.0}, {str(vocab): 2.0}],
             "seed": [1, -5], "return_token_ids": [True],
             "stream_options": [{"include_usage": True}]}
    for key in rng.sample(sorted(extra), rng.randrange(0, 4)):
        body[key] = rng.choice(extra[key])
    return Case("fuzz", "/v1/completions", body, abort=abort)


def _valid(rng: random.Random, vocab: int, kind: str = "valid") -> Case:
    n = rng.choice([1, 8, 64, 200, 500]) if _maybe(rng, 0.9) else rng.randrange(1000, 3000)
    out = rng.choice([1, 4, 16, 32])
    stream = kind == "aborted" or _maybe(rng, 0.5)
    if _maybe(rng, 0.7):
        ids: Any = _ids(rng, vocab, n)
        if _maybe(rng, 0.15):
            ids = [ids, _ids(rng, vocab, rng.randrange(1, 100))]
        body = {"input_ids": ids, "stream": stream,
                "sampling_params": {"max_new_tokens": out, "ignore_eos": True,
                                    "temperature": rng.choice([0.0, 0.8])}}
        if _maybe(rng, 0.3):
            body.update(return_logprob=True, top_logprobs_num=rng.choice([0, 1, 5]))
        path = "/generate"
    else:
        body = {"model": "default", "prompt": _ids(rng, vocab, n), "max_tokens": out,
                "ignore_eos": True, "stream": stream}
        path = "/v1/completions"
    # half the aborted ones leave before their first event: mid-prefill for a long prompt
    leave = rng.uniform(0.01, 0.3) if kind == "aborted" and _maybe(rng, 0.5) else None
    return Case(kind, path, body, abort=kind == "aborted" and leave is None, leave_after=leave,
                expect="2xx")


def _invalid(rng: random.Random, vocab: int, context: int) -> Case:
    ok = _ids(rng, vocab, rng.randrange(1, 50))
    sp = {"max_new_tokens": 4}
    bad = [
        ("/generate", {"input_ids": ok + [vocab], "sampling_params": sp}),
        ("/generate", {"input_ids": [-1] + ok, "sampling_params": sp}),
        ("/generate", {"input_ids": [ok, ok + [vocab * 7]], "sampling_params": sp}),
        ("/generate", {"input_ids": [ok, []], "sampling_params": sp}),
        ("/generate", {"input_ids": ok, "sampling_params": sp, "return_logprob": True,
                       "top_logprobs_num": vocab + rng.randrange(1, 10**5)}),
        ("/generate", {"input_ids": ok, "sampling_params": {**sp, "stop_token_ids": [vocab]}}),
        ("/generate", {"input_ids": ok, "sampling_params": sp, "return_logprob": True,
                       "logprob_start_len": -rng.randrange(2, 100)}),
        ("/generate", {"input_ids": ok, "sampling_params": sp, "return_logprob": True,
                       "token_ids_logprob": [vocab]}),
        ("/generate", {"input_ids": _ids(rng, vocab, context + 3), "sampling_params": sp}),
        ("/generate", {"input_ids": ok, "sampling_params": {"max_new_tokens": -1}}),
        ("/v1/completions", {"model": "default", "prompt": ok + [vocab], "max_tokens": 4}),
        ("/v1/completions", {"model": "default", "prompt": ok, "max_tokens": 4,
                             "logprobs": vocab + 1}),
    ]
    path, body = rng.choice(bad)
    if _maybe(rng, 0.3):
        body = {**body, "stream": True}
    return Case("invalid", path, body, expect="4xx")


def soak_case(rng: random.Random, vocab: int, context: int, keyed: bool = False) -> Case:
    mix = {k: w for k, w in MIX.items() if keyed or k != "admin"}
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    if kind == "invalid":
        return _invalid(rng, vocab, context)
    if kind == "fuzz":
        return fuzz_case(rng, vocab, context, keyed)
    if kind == "admin":
        return admin_case(rng)
    return _valid(rng, vocab, kind)


# ---- sending ---------------------------------------------------------------------------
def _status_ok(status: int, expect: str) -> bool:
    """``expect``: ``|``-separated classes (``2xx``) or exact codes (``403``)."""
    return any(status // 100 == int(part[0]) if part.endswith("xx") else status == int(part)
               for part in expect.split("|"))


async def send(session: aiohttp.ClientSession, url: str, case: Case) -> Outcome:
    """Send ``case``; fill ``problem`` if the answer breaks the rules."""
    if case.leave_after is not None:  # the client walks away mid-request (prefill, often)
        try:
            return await asyncio.wait_for(_send(session, url, case), case.leave_after)
        except asyncio.TimeoutError:
            return Outcome(aborted=True)
    return await _send(session, url, case)


async def _send(session: aiohttp.ClientSession, url: str, case: Case) -> Outcome:
    out = Outcome()
    kwargs: dict[str, Any] = ({"data": case.raw, "headers": {"Content-Type": "application/json"}}
                              if case.raw is not None else {"json": case.body}
                              if case.body is not None else {})
    try:
        async with session.post(url + case.path, **kwargs) as r:
            out.status = r.status
            if r.status == 200 and r.content_type == "text/event-stream":
                async for line in r.content:
                    line = line.strip()
                    if not line.startswith(b"data:") or line == b"data: [DONE]":
                        continue
                    try:
                        ev = json.loads(line[5:])
                    except ValueError:
                        out.problem = f"a stream event is not JSON: {line[:200]!r}"
                        break
                    err = ev.get("error") if isinstance(ev, dict) else None
                    if err is not None:
                        code = err.get("code", 500) if isinstance(err, dict) else 500
                        out.error_events.append(int(code) if str(code).isdigit() else 500)
                    if case.abort:
                        out.aborted = True
                        r.close()  # the client walks away: the server must abort and free
                        break
            else:
                await r.read()
    except (aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError,
            asyncio.TimeoutError) as e:
        out.problem = f"no answer: {type(e).__name__}: {str(e)[:300]}"
    if out.problem is None:
        # SGLang refuses some bad streamed requests inside a 200 stream (an error event
        # with code 400, http_server.py:886-904): a refusal too.
        refused_in_stream = out.status == 200 and bool(out.error_events) and \
            all(400 <= c < 500 for c in out.error_events)
        if out.status is None or not (_status_ok(out.status, case.expect) or
                                      (case.expect == "4xx" and refused_in_stream)):
            out.problem = f"HTTP {out.status}, expected {case.expect}"
        elif any(c >= 500 for c in out.error_events):
            out.problem = f"error event with code {out.error_events} inside a {out.status} stream"
        elif case.expect == "2xx" and out.error_events:
            out.problem = f"error event {out.error_events} in a valid request's stream"
    return out


async def scheduler_alive(session: aiohttp.ClientSession, url: str) -> str | None:
    """None if the scheduler answers ``/v1/loads``, else why not."""
    try:
        async with session.get(url + "/v1/loads?include=core",
                               timeout=aiohttp.ClientTimeout(total=120)) as r:
            return None if r.status == 200 else f"/v1/loads answered {r.status}"
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return f"/v1/loads failed: {type(e).__name__}: {e}"


#: The pool gauges the soak reads at the end, summed over label sets (absent: None), and
#: the ``/server_info`` capacity that says the server has that pool.
POOL_METRICS = {"global_tokens_used": ("sglang:num_used_tokens", "sum"),
                "local_token_usage": ("sglang:swa_token_usage", "sum")}
POOL_CAPACITY = {"global_tokens_used": "token_capacity", "local_token_usage": "token_capacity_swa"}
#: Ada-KV's counters (``sglang_seams/mixkv/adakv.py``), absent on a server without a budget
ADAKV_METRICS = {name: (f"mixkv:adakv_{metric}_total", "sum") for name, metric in (
    ("compressed", "compressed_requests"), ("prompt_slots", "prompt_slots"),
    ("freed_slots", "freed_slots"), ("region_slots", "region_slots"))}


async def pool_state(session: aiohttp.ClientSession, url: str, admin_key: str | None,
                     timeout: float = 120) -> dict:
    """Wait until no request runs or waits, flush the prefix cache (with ``admin_key``),
    read each pool the server has (``/server_info``) from ``/metrics``. SGLang's gauges
    count neither free nor evictable (cached, unlocked) slots, so an idle server's pools
    read 0 with or without the flush; a pool the server has but ``/metrics`` lacks reads
    None (a failure, not a pass)."""
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(url + "/v1/loads?include=core") as r:
            loads = (await r.json())["loads"]
        busy = sum(x.get("num_running_reqs", 0) + x.get("num_waiting_reqs", 0) for x in loads)
        if busy == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    flushed = None
    if admin_key:
        async with session.post(url + "/flush_cache", headers=auth_headers(admin_key)) as r:
            flushed = r.status == 200 and "Cache flushed" in await r.text()
    async with session.get(url + "/server_info") as r:
        usage = (await r.json())["internal_states"][0]["memory_usage"] if r.status == 200 else {}
    async with session.get(url + "/metrics") as r:
        m = await r.text() if r.status == 200 else ""
    found = sampler.parse(m, POOL_METRICS)
    pools = {col: {"capacity": usage.get(cap), "used": found.get(col)}
             for col, cap in POOL_CAPACITY.items() if usage.get(cap) is not None}
    return {"requests_in_server": busy, "cache_flushed": flushed, "pools": pools,
            "adakv": sampler.parse(m, ADAKV_METRICS)}


@dataclass
class Summary:
    seed: int
    requests: int
    concurrency: int
    seconds: float = 0.0
    kinds: dict = field(default_factory=dict)  # kind -> Counter of status
    failures: list = field(default_factory=list)  # (index, case, problem); index -1: the run
    pool: dict = field(default_factory=dict)
    alive_checks: int = 0
    prompt_tokens: dict = field(default_factory=dict)  # length bucket -> prompts sent

    def pool_problems(self) -> list[str]:
        """Why the pools at the end break the rules (empty list: they do not)."""
        pools = self.pool.get("pools")
        if not pools:
            return ["no pool state read (the server was gone, or /server_info had no pools)"]
        out = [f"{name}: not in /metrics" for name, p in pools.items() if p["used"] is None]
        out += [f"{name}: {p['used']} in use at the end" for name, p in pools.items()
                if p["used"] not in (None, 0)]
        if self.pool.get("cache_flushed") is False:
            out.append("the admin key did not flush the cache")
        ada = self.pool.get("adakv") or {}
        if ada and ada.get("freed_slots", 0) + ada.get("region_slots", 0) != ada.get("prompt_slots"):
            out.append(f"Ada-KV counters do not add up: freed {ada.get('freed_slots')} + kept "
                       f"{ada.get('region_slots')} != compressed prompts' {ada.get('prompt_slots')}")
        return out

    def ok(self) -> bool:
        return not self.failures and not self.pool_problems()

    def failure_text(self, limit: int = 5) -> str:
        lines = [f"{len(self.failures)} of {self.requests} requests broke the rules "
                 f"(seed {self.seed}; rerun with this seed to reproduce):"]
        for i, case, problem in self.failures[:limit]:
            lines.append(f"  #{i} [{case.kind}] {problem}: {case.show()}")
        return "\n".join(lines)


def _prompt_lengths(case: Case) -> list[int]:
    """Token counts of the id prompts of ``case`` (one per batch row)."""
    body = case.body if isinstance(case.body, dict) else {}
    ids = body.get("input_ids", body.get("prompt"))
    if not isinstance(ids, list) or not ids:
        return []
    return [len(r) for r in ids if isinstance(r, list)] if isinstance(ids[0], list) else [len(ids)]


def _bucket(n: int) -> str:
    for lo, hi in ((0, 16), (17, 128), (129, 512), (513, 2048), (2049, 4096)):
        if n <= hi:
            return f"{lo}-{hi}"
    return "4097-"


async def run(url: str, cases: list[Case], concurrency: int, seed: int,
              headers: dict | None = None, admin_key: str | None = None) -> Summary:
    """Send ``cases`` with at most ``concurrency`` in flight (every one with ``headers``,
    the inference key's), check the scheduler answers after every one, then read the pool
    state (``admin_key``: flush the cache first). Stops early once the server is gone."""
    s = Summary(seed, len(cases), concurrency)
    lengths = Counter(_bucket(n) for c in cases for n in _prompt_lengths(c))
    s.prompt_tokens = dict(sorted(lengths.items(), key=lambda kv: int(kv[0].split("-")[0])))
    kinds: dict[str, Counter] = {k: Counter() for k in KINDS}
    sem = asyncio.Semaphore(concurrency)
    dead = asyncio.Event()
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=600),
                                     read_bufsize=READ_BUFSIZE) as session:
        async def one(i: int, case: Case) -> None:
            async with sem:
                if dead.is_set():
                    return
                out = await send(session, url, case)
                label = ("left before any event" if out.status is None and out.aborted else
                         str(out.status) + (" aborted" if out.aborted else "")) + \
                    (f" with error event {out.error_events[0]}" if out.error_events else "")
                kinds[case.kind][label] += 1
                why = await scheduler_alive(session, url)
                s.alive_checks += 1
                if why is not None:
                    out.problem = (out.problem + "; " if out.problem else "") + \
                        f"server not alive after it: {why}"
                    dead.set()
                if out.problem:
                    s.failures.append((i, case, out.problem))

        await asyncio.gather(*(one(i, c) for i, c in enumerate(cases)))
        s.seconds = round(time.perf_counter() - t0, 1)
        s.kinds = {k: dict(v) for k, v in kinds.items() if v}
        if not dead.is_set():
            s.pool = await pool_state(session, url, admin_key)
    s.failures.sort(key=lambda f: f[0])
    return s


def make_cases(n: int, seed: int, vocab: int, context: int, kind: str = "soak",
               keyed: bool = False) -> list[Case]:
    """``keyed``: the client holds an inference key, so admin routes are in the mix."""
    rng = random.Random(seed)
    maker = soak_case if kind == "soak" else fuzz_case
    return [maker(rng, vocab, context, keyed) for _ in range(n)]


# ---- CLI ---------------------------------------------------------------------------------
def write_results(out: Path, s: Summary, meta: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = {**meta, "summary": {k: v for k, v in asdict(s).items() if k != "failures"},
            "failures": [{"index": i, "kind": c.kind, "problem": p, "request": c.show()}
                         for i, c, p in s.failures]}
    (out / "soak.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    hw = meta["hardware"]
    lines = [
        f"# Soak: {s.requests} mixed requests against one server", "",
        f"- command: `{meta['command']}`",
        f"- commit: `{meta['git']['commit']}`" + (" (dirty)" if meta["git"]["dirty"] else ""),
        f"- versions: {json.dumps(meta['versions'])}",
        f"- hardware: {', '.join(hw.get('gpus') or []) or 'no GPU'}; CPU {hw.get('cpu')} "
        f"x{hw.get('cpu_count')}; {hw.get('memory_gib')} GiB RAM",
        f"- server: `{meta.get('server') or meta.get('url')}`", "",
        f"**{'PASS' if s.ok() else 'FAIL'}**: {s.requests} requests (seed {s.seed}, "
        f"concurrency {s.concurrency}) in {s.seconds} s; the scheduler answered after every "
        f"one ({s.alive_checks} checks); {len(s.failures)} broke the rules.", "",
        "| kind | HTTP status (count) |", "| --- | --- |",
        *[f"| {k} | {', '.join(f'{st}: {n}' for st, n in sorted(v.items()))} |"
          for k, v in s.kinds.items()], "",
        "`200 with error event 400`: a streamed request SGLang itself refuses once the stream "
        "has started (e.g. `max_new_tokens: -1`, a prompt longer than the context): its "
        "error event carries code 400 (SGLang's `http_server.py:886-904`). `aborted`: the "
        "client closed the stream after its first event; `left before any event`: it left "
        "after 10-300 ms, before one (mid-prefill for a long prompt).", "",
        "Prompt lengths (token-id prompts, one per batch row): "
        + ", ".join(f"{k}: {v}" for k, v in s.prompt_tokens.items()), "",
        "`admin`: an admin route (`/pause_generation`, `/flush_cache`, weight updates, ...) "
        "called with the inference key: each must be refused (401 or 403) and the server keep "
        "serving.", "",
        f"Pools at the end (idle{', prefix cache flushed with the admin key' if s.pool.get('cache_flushed') else ''};"
        " SGLang's gauges, which count neither free nor cached-but-unlocked slots):", "",
        "| pool | capacity (tokens) | in use at the end |", "| --- | --- | --- |",
        *[f"| {name.split('_')[0]} ({'`sglang:num_used_tokens`' if name.startswith('global') else '`sglang:swa_token_usage`'}) "
          f"| {p['capacity']} | {'missing from /metrics' if p['used'] is None else p['used']} |"
          for name, p in (s.pool.get("pools") or {}).items()], "",
        *([f"Pool problems: {'; '.join(s.pool_problems())}", ""] if s.pool_problems() else []),
    ]
    ada = s.pool.get("adakv") or {}
    if ada:
        lines += [
            f"Ada-KV: **{ada.get('compressed', 0):.0f} requests compressed** (prompts of at least "
            "the budget; the others were served uncompressed beside them). Their prompts held "
            f"{ada.get('prompt_slots', 0):.0f} global slots: {ada.get('freed_slots', 0):.0f} "
            "freed below the kept regions (after compression, or with the request when it "
            f"ended first) + {ada.get('region_slots', 0):.0f} kept in them "
            f"({'they add up' if not s.pool_problems() else 'see the pool problems'}).", ""]
    if s.failures:
        lines += ["```", s.failure_text(limit=20), "```", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sglang_mixkv.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (default: start the tiny ma server)")
    ap.add_argument("--requests", type=POSITIVE, default=1200)
    ap.add_argument("--concurrency", type=POSITIVE, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", choices=["soak", "fuzz"], default="soak",
                    help="soak: the mix above; fuzz: random bodies only")
    tiny = get_size("tiny")  # the server started without --url
    ap.add_argument("--vocab", type=POSITIVE, default=tiny.vocab,
                    help=f"the server's vocabulary (tiny: {tiny.vocab})")
    ap.add_argument("--context", type=POSITIVE, default=tiny.max_position,
                    help=f"the server's context length (tiny: {tiny.max_position})")
    ap.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                    help=f"--url: the server's inference key (default: ${API_KEY_ENV}); with "
                    "one, admin routes called with it are in the mix and must be refused")
    ap.add_argument("--admin-api-key", default=os.environ.get(ADMIN_API_KEY_ENV) or None,
                    help=f"--url: the server's admin key, used only for the final cache flush "
                    f"(default: ${ADMIN_API_KEY_ENV})")
    ap.add_argument("--adakv-budget", type=POSITIVE, help="start the server with Ada-KV at this "
                    "budget (prompts of at least it compress; the report counts them)")
    ap.add_argument("--adakv-window", type=POSITIVE, default=16,
                    help="with --adakv-budget: the observation window (16)")
    ap.add_argument("--out", type=Path, help="write report.md and soak.json here")
    a = ap.parse_args(argv)

    from harness.sysinfo import collect

    cmd_line = ["python", "-m", "sglang_mixkv.soak",
                *redact_argv(sys.argv[1:] if argv is None else argv)]
    meta = collect(cmd_line)
    meta["command"] = shlex.join(cmd_line)
    if not a.url:  # our server: keys of its own, passed in the environment only
        a.api_key, a.admin_api_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    cases = make_cases(a.requests, a.seed, a.vocab, a.context, a.kind, keyed=bool(a.api_key))

    def go(url: str) -> Summary:
        return asyncio.run(run(url, cases, a.concurrency, a.seed, auth_headers(a.api_key),
                               a.admin_api_key))

    from harness.server import healthy, launched_on_free_port

    if a.url:
        if not healthy(a.url.rstrip("/")):
            print(f"error: no healthy server at {a.url} (GET /health)", file=sys.stderr)
            return 2
        meta["url"] = a.url
        s = go(a.url.rstrip("/"))
    else:
        args = ["--plan", "ma", "--size", tiny.name, "--kv-budget", "16MiB",
                "--max-running-requests", "8", "--chunked-prefill-size", "128",
                "--enable-metrics"]
        if a.adakv_budget:
            args += ["--adakv-budget", str(a.adakv_budget), "--adakv-window", str(a.adakv_window)]
        meta["server"] = "python -m sglang_mixkv.serve " + shlex.join(args) + \
            f"  (SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY=1; {API_KEY_ENV} and " \
            f"{ADMIN_API_KEY_ENV} generated for the run)"
        log = Path(tempfile.mkdtemp(prefix="mixkv-soak-")) / "server.log"
        meta["server_log"] = str(log)
        with launched_on_free_port(lambda port: [sys.executable, "-m", "sglang_mixkv.serve",
                                                 *args, "--port", str(port)],
                                   log, timeout=600,
                                   env={**STRICT_MEM_CHECK, API_KEY_ENV: a.api_key,
                                        ADMIN_API_KEY_ENV: a.admin_api_key}) as url:
            s = go(url)
            if not healthy(url):
                s.failures.append((-1, Case("valid", "-"), "server not healthy after the run"))
            if "leak" in log.read_text(errors="replace").lower():
                s.failures.append((-1, Case("valid", "-"), "server log mentions a leak"))
    print(f"{s.requests} requests in {s.seconds} s; kinds {s.kinds}; pool {s.pool}")
    if s.failures:
        print(s.failure_text(limit=20), file=sys.stderr)
    if a.out:
        print(f"report: {write_results(a.out, s, meta)}")
    return 0 if s.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
