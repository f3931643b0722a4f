"""Start any server command in its own process group, wait until it answers, kill it all.

SGLang kills its parent when its scheduler dies, so the server always runs as a child
process in a new session (never inside the caller's process), and teardown kills the
whole process group (the server's scheduler and detokenizer processes included).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from harness import prefork

#: what the log says when a port the server chose is taken by the time it binds it:
#: uvicorn's HTTP port (SGLang then hangs instead of exiting), or the torch.distributed
#: port SGLang picks free at launch (its scheduler dies; two servers starting at once can
#: pick the same one)
ADDRESS_IN_USE = ("address already in use", "Address already in use", "EADDRINUSE")


#: environment variable naming a file where every server that becomes ready appends one
#: JSON line (its command's module and plan, seconds from spawn to ready, whether it was
#: forked from a prefork and ran in place): how ``make test`` counts the server starts it
#: made and what they cost
STARTS_ENV = "MIXKV_SERVER_STARTS"


def _record_start(proc: subprocess.Popen | prefork.Forked, seconds: float, log: Path) -> None:
    path = os.environ.get(STARTS_ENV)
    if not path:
        return
    args = [str(a) for a in proc.args] if isinstance(proc.args, (list, tuple)) else [str(proc.args)]
    what = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-m", "--plan", "--model-path")]
    what = what or args[1:2] or args[:1]  # a script: its name
    forked = (isinstance(proc, prefork.Forked)
              and prefork.FRESH not in log.read_text(errors="replace")[:4096])
    with open(path, "a") as f:  # one short line per append: whole lines from any process
        f.write(json.dumps({"what": " ".join(Path(w).name for w in what),
                            "seconds": round(seconds, 2), "forked": forked}) + "\n")


class AddressInUse(RuntimeError):
    """The server could not bind its port: another process took it."""


def free_port() -> int:
    """A port nobody listens on right now (someone may take it before the server binds)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def router_ready(workers: int) -> Callable[[str], bool]:
    """Readiness of sglang-router in front of ``workers`` servers: its ``/health`` answers
    before it has registered them (it adds them in the background, and until then
    answers 503 "no available workers"), so wait until ``/readiness`` counts them all
    healthy."""
    def ready(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + "/readiness", timeout=5) as r:
                return json.load(r).get("healthy_workers", 0) >= workers
        except (OSError, ValueError):  # 503 until one is healthy; not up yet; not JSON
            return False

    return ready


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def kill_group(proc: subprocess.Popen | prefork.Forked, grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after ``grace`` seconds, and
    wait (up to 10 s more) until no process of the group is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)  # reap the leader
        deadline = time.monotonic() + wait
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _group_alive(proc.pid):
            return


@dataclass
class Started:
    """A server started by :func:`start`: its URL, its process (the group leader) and its
    log. ``stop()`` kills the whole process group."""

    url: str
    proc: subprocess.Popen | prefork.Forked
    log: Path

    def stop(self) -> None:
        kill_group(self.proc)

    def alive(self) -> bool:
        return self.proc.poll() is None


def spawn(cmd: list[str], log: Path, env: dict | None = None,
          cwd: str | Path | None = None) -> subprocess.Popen | prefork.Forked:
    """Run ``cmd`` in its own process group, output to ``log``; returns at once (see
    :func:`wait_ready`). Where a prefork is named (:mod:`harness.prefork`, the test
    suite's) a ``python -m`` command is forked from it instead of started afresh."""
    log.parent.mkdir(parents=True, exist_ok=True)
    spawned = time.monotonic()
    full_env = {**os.environ, **(env or {})}
    proc = prefork.fork(cmd, log, full_env, cwd)
    if proc is None:
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=full_env, cwd=cwd)
    proc.mixkv_spawned = spawned
    return proc


def start(cmd: list[str], url: str, log: Path, timeout: float = 600.0, env: dict | None = None,
          cwd: str | Path | None = None, ready: Callable[[str], bool] = healthy) -> Started:
    """Run ``cmd`` (output to ``log``, own process group) until ``ready(url)`` (default:
    ``GET url/health`` answers 200). On failure the group is killed and RuntimeError
    raised (with the log's tail), :class:`AddressInUse` as soon as the log says the port
    is taken."""
    return wait_ready(spawn(cmd, log, env, cwd), url, log, timeout, ready)


def wait_ready(proc: subprocess.Popen | prefork.Forked, url: str, log: Path,
               timeout: float = 600.0,
               ready: Callable[[str], bool] = healthy) -> Started:
    """Wait until the server ``proc`` (started by :func:`spawn`, output in ``log``)
    answers ``ready(url)``; on failure kill its group and raise as :func:`start`."""
    try:
        deadline = time.monotonic() + timeout
        while not ready(url):
            tail = log.read_text(errors="replace")
            if any(s in tail for s in ADDRESS_IN_USE):
                raise AddressInUse(f"{url}: a port was taken before the server bound it; see {log}")
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log}:\n{tail[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {timeout:g} s; see {log}:\n{tail[-4000:]}")
            time.sleep(0.25)
    except BaseException:
        kill_group(proc)
        raise
    _record_start(proc, time.monotonic() - getattr(proc, "mixkv_spawned", deadline - timeout), log)
    return Started(url, proc, log)


def start_on_free_port(make_cmd: Callable[[int], list[str]], log: Path, timeout: float = 600.0,
                       env: dict | None = None, attempts: int = 3, host: str = "127.0.0.1",
                       cwd: str | Path | None = None,
                       ready: Callable[[str], bool] = healthy) -> Started:
    """:func:`start` on a free port (``make_cmd(port)`` builds the command). A port taken
    between the check and the server's bind means a new port and a new start, up to
    ``attempts`` times."""
    for attempt in range(attempts):
        port = free_port()
        try:
            return start(make_cmd(port), f"http://{host}:{port}", log, timeout, env, cwd, ready)
        except AddressInUse:
            if attempt == attempts - 1:
                raise
            print(f"port {port} was taken before the server bound it; starting again on another",
                  flush=True)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def launched(cmd: list[str], url: str, log: Path, timeout: float = 600.0,
             env: dict | None = None) -> Iterator[subprocess.Popen]:
    """:func:`start` for the duration of a ``with`` block; yields the process."""
    server = start(cmd, url, log, timeout, env)
    try:
        yield server.proc
    finally:
        server.stop()


@contextlib.contextmanager
def launched_on_free_port(make_cmd: Callable[[int], list[str]], log: Path, timeout: float = 600.0,
                          env: dict | None = None, attempts: int = 3,
                          host: str = "127.0.0.1",
                          ready: Callable[[str], bool] = healthy) -> Iterator[str]:
    """:func:`start_on_free_port` for the duration of a ``with`` block; yields the URL."""
    server = start_on_free_port(make_cmd, log, timeout, env, attempts, host, ready=ready)
    try:
        yield server.url
    finally:
        server.stop()
