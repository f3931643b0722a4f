"""Inference keys cannot control the server, and keys stay out of argv, logs,
``/server_info`` and results files: one real server with an API key and an admin key,
both given in its environment (``sglang_seams/patches/admin_auth.py``).
"""

from __future__ import annotations

import inspect
import json
import secrets
import subprocess
import threading

import pytest
import requests

from harness.prefork import PREFORK_ENV
from mixkv_bench import soak
from tests.helpers.harness_fixtures import cli
from tests.helpers.serving import start_server

pytestmark = pytest.mark.server
KEY, ADMIN = "user-" + secrets.token_hex(12), "admin-" + secrets.token_hex(12)
USER, ADMIN_H = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {ADMIN}"}


def admin_routes() -> list[tuple[str, str, bool]]:
    """(method, path, takes a body) of every route SGLang 0.5.17 marks ADMIN_OPTIONAL,
    read from its FastAPI app, and the two unmarked ones that change the server
    (``admin_auth.UNMARKED_ADMIN_ROUTES``). 39 handlers carry the mark
    (``entrypoints/http_server.py``); ``/dumper/{method}`` is registered only with
    ``DUMPER_SERVER_PORT=reuse``: 38, and 2 unmarked."""
    from sglang.srt.entrypoints.http_server import app
    from sglang.srt.utils.auth import AuthLevel

    from sglang_mixkv.sglang_seams.patches.admin_auth import UNMARKED_ADMIN_ROUTES

    out = []
    for r in app.routes:
        ep = getattr(r, "endpoint", None)
        if (getattr(ep, "_auth_level", None) == AuthLevel.ADMIN_OPTIONAL
                or getattr(r, "path", None) in UNMARKED_ADMIN_ROUTES):
            params = inspect.signature(ep).parameters
            method = "POST" if "POST" in r.methods else sorted(r.methods)[0]
            out.append((method, r.path, "obj" in params or "request" in params))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("admin")
    s = start_server(["--plan", "ma", "--size", "tiny", "--model-path", str(tmp / "ma"),
                      "--kv-budget", "16MiB", "--max-running-requests", "8",
                      "--chunked-prefill-size", "128", "--enable-metrics"],
                     log=tmp / "server.log",
                     env={"MIXKV_API_KEY": KEY, "MIXKV_ADMIN_API_KEY": ADMIN,
                          **soak.STRICT_MEM_CHECK,
                          PREFORK_ENV: ""})  # a fresh process: its argv is checked below
    yield s
    s.stop()


def serves(s) -> bool:
    r = s.post("/generate", {"input_ids": [5, 6, 7], "sampling_params": {
        "max_new_tokens": 2, "ignore_eos": True}}, headers=USER, timeout=60)
    return r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 2


def test_every_admin_route_answers_the_admin_key_only(server):
    routes = admin_routes()
    assert len(routes) == 40
    matrix = {}
    for method, path, body in routes:
        row = []
        for who, headers in (("none", {}), ("user", USER)):
            r = requests.request(method, server.url + path, headers=headers, timeout=60)
            assert r.status_code in (401, 403), f"{method} {path} with {who} key: {r.status_code}"
            assert serves(server), f"{method} {path} ({who} key): serving stopped"
            row.append(r.status_code)
        # past authentication, harmlessly: a body that fails validation (422/400 before the
        # handler acts), or for routes without one the call itself (flush, status reads...)
        kw = {"data": b"{", "headers": {**ADMIN_H, "Content-Type": "application/json"}} \
            if body else {"headers": ADMIN_H}
        r = requests.request(method, server.url + path, timeout=60, **kw)
        assert r.status_code not in (401, 403), f"{method} {path} with the admin key: {r.text}"
        assert server.alive() and serves(server), f"{method} {path} (admin key) stopped serving"
        matrix[f"{method} {path}"] = row + [r.status_code]
    print(json.dumps(matrix))  # the closing note's route x key table (pytest -s)


def test_the_admin_key_pauses_continues_and_flushes(server):
    r = server.post("/pause_generation", {"mode": "in_place"}, headers=ADMIN_H)
    assert r.status_code == 200, r.text
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(serves(server)))
    t.start()
    t.join(timeout=3)
    assert t.is_alive() and not done, "a request was served while generation was paused"
    r = server.post("/continue_generation", {}, headers=ADMIN_H)
    assert r.status_code == 200, r.text
    t.join(timeout=120)
    assert done == [True]
    server.flush(admin_key=ADMIN)  # retried while SGLang still counts the request running
    assert server.post("/flush_cache", {}, headers=USER).status_code == 401


def test_keys_stay_out_of_argv_log_server_info_and_results(server, tmp_path):
    group = subprocess.run(["ps", "-o", "args=", "-g", str(server.proc.pid)],
                           capture_output=True, text=True).stdout
    assert "sglang" in group  # the listing is the server's (launcher, scheduler, ...)
    assert "subprocesses are forked" in server.log_text()  # CPU: patches/fork_cpu
    info = server.get("/server_info", headers=USER).text
    assert json.loads(info)["api_key"] == "***" and json.loads(info)["admin_api_key"] == "***"
    r = cli("run", "--url", server.url, "--profile", "cpu-smoke", "--num-prompts", "2",
            "--input-len", "16", "--output-len", "2", "--concurrency", "1", "--warmup", "0",
            "--out", str(tmp_path / "run"), "--no-progress",
            env={**__import__("os").environ, "MIXKV_API_KEY": KEY, "MIXKV_ADMIN_API_KEY": ADMIN})
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert set(meta["flush"].values()) == {"ok"}  # flushed with the admin key
    results = "".join(p.read_text(errors="replace") for p in (tmp_path / "run").rglob("*")
                      if p.is_file() and p.suffix in (".json", ".jsonl", ".md", ".csv"))
    for secret in (KEY, ADMIN):
        for where, text in (("ps", group), ("log", server.log_text()), ("/server_info", info),
                            ("results", results), ("harness output", r.stdout + r.stderr)):
            assert secret not in text, f"a key in the {where}"
