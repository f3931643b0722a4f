"""Our servers for a variant: their command, their lifetime, their ``/server_info``;
one server, or several behind SGLang's router (:func:`deployed`).

Each server runs in its own process group (:mod:`harness.server`); its log stays in the
variant's folder with every key redacted once the server has stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Iterator, NamedTuple

import requests

from harness.server import launched, launched_on_free_port, router_ready
from mixkv_bench import variants
from mixkv_bench.settings import DECODE_LOG_INTERVAL, SERVER_START_S, Settings
from sglang_mixkv.defaults import (ADMIN_API_KEY_ENV, API_KEY_ENV, auth_headers, redact_server_info,
                                   redact_text)
from sglang_mixkv.sglang_seams.launch import flag_given

def server_command(plan: str, st: Settings, extra: list[str] = ()) -> tuple[list[str], str]:  # type: ignore[assignment]
    """Our serve command for ``plan`` and the URL it will answer on."""
    variant = variants.parse(plan)
    args = ["--plan", variant.plan, *variant.serve_args(), "--size", st.size, "--port", str(st.port),
            "--enable-metrics"]
    if st.kv_budget:
        args += ["--kv-budget", st.kv_budget]
    if st.mem_fraction:
        args += ["--mem-fraction-static", str(st.mem_fraction)]
    if st.max_running:
        args += ["--max-running-requests", str(st.max_running)]
    if st.kv_heads:
        args += ["--kv-heads", str(st.kv_heads)]
    if not flag_given([*st.server_args, *extra], "--decode-log-interval"):
        # SGLang publishes its /metrics gauges (running, queued, pool usage) after each
        # prefill batch and every this many decode steps (default 40: less than once per
        # request of the CPU bench's 64 tokens); the timeline samples them.
        args += ["--decode-log-interval", str(DECODE_LOG_INTERVAL)]
    cmd = [sys.executable, "-m", "sglang_mixkv.serve", *args, *st.server_args, *extra]
    return cmd, f"http://127.0.0.1:{st.port}"


def save_server_info(url: str, out: Path) -> dict:
    info = requests.get(url + "/server_info", headers=auth_headers(os.environ.get(API_KEY_ENV)),
                        timeout=30).json()
    out.write_text(json.dumps(redact_server_info(info), indent=1, default=str) + "\n")
    return info


@contextlib.contextmanager
def served(plan: str, st: Settings, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Our server for ``plan`` (``env`` over ours) while the block runs; yields its URL.
    ``st.port`` 0: a free port, and a new one (and a new start) if another process takes
    it before the server binds it (SGLang would hang until the health timeout)."""
    try:
        if st.port:
            cmd, url = server_command(plan, st)
            with launched(cmd, url, log, timeout=SERVER_START_S, env=env):
                yield url
            return
        with launched_on_free_port(lambda port: server_command(plan, replace(st, port=port))[0],
                                   log, timeout=SERVER_START_S, env=env) as url:
            yield url
    finally:  # belt and braces: our plugin keeps keys out of SGLang's log already
        _redact_log(log)


def _redact_log(log: Path) -> None:
    keys = [os.environ.get(API_KEY_ENV), os.environ.get(ADMIN_API_KEY_ENV)]
    if any(keys) and log.exists():
        log.write_text(redact_text(log.read_text(errors="replace"), *keys))


class Deployment(NamedTuple):
    url: str  # where clients go: the server, or the router in front of the servers
    servers: list[str]  # the servers themselves (flushes, /server_info)


def router_command(port: int, servers: list[str]) -> list[str]:
    return [sys.executable, "-m", "sglang_mixkv.router", "--port", str(port),
            "--workers", *servers]


@contextlib.contextmanager
def deployed(plan: str, st: Settings, vdir: Path, tag: str = "") -> Iterator[Deployment]:
    """``st.dp`` servers of ``plan`` (logs ``server{tag}.log``, or ``server{i}{tag}.log``
    with more than one), and with more than one, SGLang's router in front of them
    (``router{tag}.log``), on free ports; the keys reach them through the environment."""
    if st.dp == 1:
        with served(plan, st, vdir / f"server{tag}.log") as url:
            yield Deployment(url, [url])
        return
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(served(plan, replace(st, port=0), vdir / f"server{i}{tag}.log"))
                for i in range(st.dp)]
        log = vdir / f"router{tag}.log"
        stack.callback(_redact_log, log)
        url = stack.enter_context(launched_on_free_port(
            lambda port: router_command(port, urls), log, timeout=SERVER_START_S,
            ready=router_ready(len(urls))))
        yield Deployment(url, urls)
