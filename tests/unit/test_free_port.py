"""make bench's servers start on a free port, and on another when the port is taken between
the check and the server's bind (uvicorn logs EADDRINUSE; SGLang then hangs)."""

import sys

from harness import server

from tests.helpers.harness_fixtures import STUB


def test_a_taken_port_means_a_new_port_and_a_new_start(tmp_path):
    ports = []

    def make_cmd(port: int) -> list[str]:
        ports.append(port)
        if len(ports) == 1:  # what uvicorn logs, then hang like SGLang does
            msg = (f"ERROR: [Errno 98] error while attempting to bind on address "
                   f"('127.0.0.1', {port}): address already in use")
            return [sys.executable, "-c", f"import time; print({msg!r}, flush=True); time.sleep(600)"]
        return [sys.executable, str(STUB), "--port", str(port)]

    with server.launched_on_free_port(make_cmd, tmp_path / "server.log", timeout=60) as url:
        assert server.healthy(url) and url.endswith(f":{ports[-1]}")
    assert len(ports) == 2 and not server.healthy(url)


def test_bench_defaults_to_a_free_port():
    from mixkv_bench.settings import defaults

    assert defaults(gpu=False).port == defaults(gpu=True).port == 0
