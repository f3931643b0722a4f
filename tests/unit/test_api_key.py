"""API keys where users meet them: ``serve``, the Docker image, the harness, ``make bench``
(no server here; a real server refusing a request without its key, and the harness
serving with it: the README's API-key block in tests/server/test_readme.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness import client, runner
from sglang_mixkv.defaults import redact_argv
from tests.helpers.serving import REPO

KEY = "k-" + "7" * 30


def serve_dry_run(args: list[str], env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sglang_mixkv.serve", *args, "--dry-run"],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"MIXKV_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": "", **env,
                               "MIXKV_MODELS": str(tmp_path), "PATH": "/usr/bin:/bin"})


ADMIN = "a-" + "5" * 30


@pytest.mark.parametrize("how", ["env", "flag"])
def test_serve_passes_keys_in_the_environment_never_argv(how, tmp_path):
    """SGLang would take ``--api-key`` from its command line, which every process listing
    shows: serve hands both keys over in the environment (our plugin reads them there)."""
    args, env = ((["--api-key", KEY, "--admin-api-key", ADMIN], {}) if how == "flag" else
                 ([], {"MIXKV_API_KEY": KEY, "MIXKV_ADMIN_API_KEY": ADMIN}))
    r = serve_dry_run(["--plan", "ma", *args], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "MIXKV_API_KEY=*** MIXKV_ADMIN_API_KEY=***" in r.stderr
    assert "--api-key" not in r.stderr and "--admin-api-key" not in r.stderr
    assert KEY not in r.stderr + r.stdout and ADMIN not in r.stderr + r.stdout
    r = serve_dry_run(["--plan", "ma"], {}, tmp_path)
    assert r.returncode == 0 and "MIXKV_API_KEY" not in r.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "myhost"])
def test_serve_refuses_to_listen_unauthenticated_beyond_loopback(host, tmp_path):
    r = serve_dry_run(["--plan", "ma", "--host", host], {}, tmp_path)
    assert r.returncode == 2 and "refusing to listen" in r.stderr and "MIXKV_API_KEY" in r.stderr
    r = serve_dry_run(["--plan", "ma", "--host", host, "--allow-unauthenticated"], {}, tmp_path)
    assert r.returncode == 0, r.stderr
    for loopback in ("127.0.0.1", "localhost", "::1"):
        assert serve_dry_run(["--plan", "ma", "--host", loopback], {}, tmp_path).returncode == 0


def test_docker_run_needs_a_key_or_an_explicit_choice(tmp_path):
    """``docker run -e MIXKV_API_KEY IMAGE --plan ma-offset``: the image's entrypoint and
    env plus the key resolve to a keyed server on 0.0.0.0; without a key the image refuses
    to start unless ``--allow-unauthenticated`` is given."""
    import dockerfile

    by = {c.cmd.upper(): c for c in dockerfile.parse_file(str(REPO / "Dockerfile"))}
    env = dict(zip(by["ENV"].value[0::2], by["ENV"].value[1::2]))
    args = list(by["ENTRYPOINT"].value[3:]) + list(by["CMD"].value)
    r = serve_dry_run(args, {**env, "MIXKV_API_KEY": KEY}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--host 0.0.0.0" in r.stderr and "MIXKV_API_KEY=***" in r.stderr
    r = serve_dry_run(args, env, tmp_path)
    assert r.returncode == 2 and "refusing to listen on 0.0.0.0" in r.stderr
    assert serve_dry_run(args + ["--allow-unauthenticated"], env, tmp_path).returncode == 0


def test_harness_sends_the_key_and_keeps_it_out_of_results():
    assert client.auth_headers(KEY) == {"Authorization": f"Bearer {KEY}"}
    assert client.auth_headers(None) == {}
    argv = ["harness", "run", "--api-key", KEY, "--url", "u", f"--api-key={KEY}"]
    assert KEY not in json.dumps(redact_argv(argv))
    cfg = runner.RunConfig(url="u", out=Path("o"), api_key=KEY, admin_api_key=ADMIN)
    for secret in (KEY, ADMIN):
        assert secret not in json.dumps(cfg.to_json(), default=str) and secret not in repr(cfg)


class _Keyed(BaseHTTPRequestHandler):
    """/health open, everything else wants the key (SGLang's rule, utils/auth.py)."""

    def do_GET(self):  # noqa: N802
        ok = self.path.startswith("/health") or \
            self.headers.get("Authorization") == f"Bearer {KEY}"
        # as SGLang's /server_info: its ServerArgs, the key among them
        body = json.dumps({"max_total_num_tokens": 1, "api_key": KEY} if ok
                          else {"error": "unauthorized"})
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture()
def keyed_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Keyed)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_harness_refuses_to_start_without_the_key(keyed_server):
    async def check(key):
        async with client.make_session(1, key) as session:
            await runner.check_auth(session, keyed_server)

    with pytest.raises(runner.StartupError, match="API key"):
        asyncio.run(check(None))
    asyncio.run(check(KEY))


def test_bench_sends_the_key_from_the_environment(keyed_server, tmp_path, monkeypatch):
    from mixkv_bench import bench

    monkeypatch.setenv("MIXKV_API_KEY", KEY)
    info = bench.save_server_info(keyed_server, tmp_path / "info.json")
    assert {k: v for k, v in info.items() if k != "api_key"} == {"max_total_num_tokens": 1}
    assert KEY not in (tmp_path / "info.json").read_text()  # the results file


def test_make_passes_the_key_in_the_environment_not_the_command_line():
    r = subprocess.run(["make", "-n", "-p", "bench", f"API_KEY={KEY}"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    echoed = [ln for ln in r.stdout.splitlines() if "sglang_mixkv.bench" in ln]
    assert echoed and all(KEY not in ln for ln in echoed)
    assert f"MIXKV_API_KEY := {KEY}" in r.stdout


def test_results_files_never_carry_the_key():
    """SGLang's /server_info returns its whole ServerArgs, the key among them, and its
    log prints them: both are redacted before they reach a run folder."""
    from sglang_mixkv.defaults import redact_server_info, redact_text

    info = {"api_key": "s3cret", "admin_api_key": None, "port": 1,
            "internal_states": [{"api_key": "s3cret"}]}
    assert "s3cret" not in json.dumps(redact_server_info(info))
    assert redact_server_info(info)["admin_api_key"] is None and redact_server_info(info)["port"] == 1
    assert redact_text("server_args=ServerArgs(api_key='s3cret')", "s3cret") == \
        "server_args=ServerArgs(api_key='***')"
    assert redact_argv(["--api-key", "s3cret", "--api-key=s3cret"]) == \
        ["--api-key", "***", "--api-key=***"]
