"""Start the real SGLang server (our serve command) in a subprocess for tests.

SGLang SIGKILLs its parent when its scheduler dies, so the server always runs in its
own process group, never inside the test process; stop() kills the whole group
(``harness.server.kill_group``). Unlike ``harness.server.launched`` the server outlives
one ``with`` block, so module-scoped fixtures can share it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from harness.server import healthy, kill_group

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def post(self, path: str, json: dict, timeout: float = 300) -> requests.Response:
        return requests.post(self.url + path, json=json, timeout=timeout)

    def get(self, path: str, timeout: float = 30) -> requests.Response:
        return requests.get(self.url + path, timeout=timeout)

    def generate(self, ids: list[int], max_new_tokens: int, **extra) -> dict:
        body = {
            "input_ids": ids,
            "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0,
                                "ignore_eos": True},
            "return_logprob": True,
            "logprob_start_len": 0,
            **extra,
        }
        r = self.post("/generate", body)
        r.raise_for_status()
        return r.json()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        kill_group(self.proc)


def start_server(args: list[str], log: Path, env: dict | None = None,
                 timeout: float = 240, attempts: int = 3) -> Server:
    """``python -m sglang_mixkv.serve ARGS --port P``; waits for /health.

    A free port can be taken by someone else before the server binds it (uvicorn then
    logs EADDRINUSE and SGLang hangs instead of exiting): start again on a new port."""
    log.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        port = free_port()
        with open(log, "w") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sglang_mixkv.serve", *args, "--port", str(port)],
                cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        server = Server(f"http://127.0.0.1:{port}", proc, log)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_text()[-4000:]}")
            if healthy(server.url):
                return server
            if "address already in use" in server.log_text():
                break
            time.sleep(1)
        server.stop()
        if "address already in use" not in server.log_text():
            raise TimeoutError(f"server not healthy after {timeout}s:\n{server.log_text()[-4000:]}")
    raise RuntimeError(f"no free port after {attempts} attempts:\n{server.log_text()[-4000:]}")
