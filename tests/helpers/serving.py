"""Start the real SGLang server (our serve command, or plain ``sglang.launch_server``) in a
subprocess for tests.

SGLang SIGKILLs its parent when its scheduler dies, so the server always runs in its
own process group, never inside the test process (``harness.server.start``, the one
server launcher); ``stop()`` kills the whole group. Unlike ``harness.server.launched``
the server outlives one ``with`` block, so module-scoped fixtures can share it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from harness.server import Started, free_port, start_on_free_port  # noqa: F401 - re-exported

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    url: str
    started: Started

    @property
    def log(self) -> Path:
        return self.started.log

    @property
    def proc(self):
        return self.started.proc

    def post(self, path: str, json: dict, timeout: float = 300, **kw) -> requests.Response:
        return requests.post(self.url + path, json=json, timeout=timeout, **kw)

    def get(self, path: str, timeout: float = 30, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=timeout, **kw)

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
        return self.started.alive()

    def stop(self) -> None:
        self.started.stop()


def start_server(args: list[str], log: Path, env: dict | None = None, timeout: float = 240,
                 module: str = "sglang_mixkv.serve", ready=None) -> Server:
    """``python -m MODULE ARGS --port P`` on a free port; waits for /health (or
    ``ready(url)``, e.g. :func:`harness.server.router_ready`)."""
    started = start_on_free_port(
        lambda port: [sys.executable, "-m", module, *args, "--port", str(port)], log,
        timeout=timeout, env=env, cwd=REPO, **({"ready": ready} if ready else {}))
    return Server(started.url, started)
