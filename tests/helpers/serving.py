"""Start the real SGLang server (our serve command, or plain ``sglang.launch_server``) in a
subprocess for tests.

SGLang SIGKILLs its parent when its scheduler dies, so the server always runs in its
own process group, never inside the test process (``harness.server.start``, the one
server launcher); ``stop()`` kills the whole group. Unlike ``harness.server.launched``
the server outlives one ``with`` block, so module-scoped fixtures can share it."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import requests

from harness.runner import flush_cache
from harness.server import (AddressInUse, Started, free_port, spawn,  # noqa: F401 - re-exported
                            start_on_free_port, wait_ready)

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

    def flush(self, admin_key: str | None = None) -> None:
        """Empty the prefix cache, retrying while SGLang still counts the last finished
        request as running (its scheduler drops it a loop after the answer is sent:
        ``Scheduler.is_fully_idle`` reads ``last_batch``). Raises ``FlushError`` if it
        never flushes; uses the harness's flush, the one the benchmark runs."""
        async def go() -> str:
            async with aiohttp.ClientSession() as session:
                return await flush_cache(session, self.url, admin_key)

        assert asyncio.run(go()) == "ok"

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


class Prestarted:
    """A server started now and waited for later (:meth:`server`): a module that serves
    one model after another starts the next while its tests run on the current one, so a
    server's start-up (mostly imports, one core) overlaps the tests' work."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None,
                 timeout: float = 240, module: str = "sglang_mixkv.serve"):
        self.args, self.log, self.env, self.timeout, self.module = args, log, env, timeout, module
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = spawn([sys.executable, "-m", module, *args, "--port", str(port)], log,
                          env=env, cwd=REPO)

    def server(self) -> Server:
        """The server, once healthy (started again on a free port if another process took
        this one before the server bound it)."""
        try:
            return Server(self.url, wait_ready(self.proc, self.url, self.log, self.timeout))
        except AddressInUse:
            return start_server(self.args, self.log, self.env, self.timeout, self.module)

    def stop(self) -> None:
        from harness.server import kill_group

        kill_group(self.proc)


class Pipeline:
    """Servers for a sequence of keys (a module's parameters, in pytest's order), each
    started one key ahead: :meth:`take` returns key k's server and starts key k+1's."""

    def __init__(self, keys: list, make: "callable"):
        self.keys, self.make = list(keys), make  # make(key) -> Prestarted
        self.pending: dict = {}

    def take(self, key) -> Server:
        started = self.pending.pop(key, None) or self.make(key)
        i = self.keys.index(key)
        if i + 1 < len(self.keys) and self.keys[i + 1] not in self.pending:
            self.pending[self.keys[i + 1]] = self.make(self.keys[i + 1])
        return started.server()

    def close(self) -> None:
        for started in self.pending.values():
            started.stop()
        self.pending.clear()
