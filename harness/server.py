"""Start any server command in its own process group, wait until it answers, kill it all.

SGLang kills its parent when its scheduler dies, so the server always runs as a child
process in a new session (never inside the caller's process), and teardown kills the
whole process group (the server's scheduler and detokenizer processes included).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
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


@contextlib.contextmanager
def launched(cmd: list[str], url: str, log: Path, timeout: float = 600.0,
             env: dict | None = None) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` (output to ``log``) until ``GET url/health`` answers 200; yield the
    process; kill its process group on exit. Raises RuntimeError if it dies or times out."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {timeout:g} s; see {log}")
            time.sleep(1.0)
        yield proc
    finally:
        kill_group(proc)
