"""Servers forked from a process that has already imported SGLang (CPU only).

A CPU server's start-up is mostly imports: the launcher imports SGLang, torch,
transformers and every model module (some 12 s of one core) before it reads its first
flag. A test suite that starts fifty servers pays that fifty times. A *prefork* process
imports all of it once, then forks one child per server; the child becomes exactly what
``python -m MODULE ARGS`` would have been (its own session, its log on stdout and
stderr, the caller's environment, working directory and argv) and runs ``MODULE`` as
``__main__``. ``sglang_mixkv.serve`` ends by exec'ing ``python -m sglang.launch_server``;
in a forked child that exec runs ``sglang.launch_server`` in place instead. (And it runs
in a frame that leaves the server's frames room: :data:`_roomy_call`.)

What an import reads from the environment is fixed at import: Triton decorates its
kernels for the interpreter or not (``TRITON_INTERPRET``), libgomp reads
``OMP_NUM_THREADS`` when torch loads it, and SGLang has module-level switches. So a child
runs in place only when its environment equals the prefork's own except for
:data:`RUN_TIME` names (read when the server runs, checked in their readers); otherwise
it execs a fresh interpreter, as without a prefork, and says so in its log. Nothing is
shared that a fresh process would not build the same way: the prefork starts no thread
(it checks) and opens no socket but its listening one (closed in each child), and each
child reseeds Python's and NumPy's global generators. What children do share is the
string hash seed (set iteration order; the suite compares nothing that depends on it).

Used by the test suite (``tests/conftest.py`` starts one per import environment and
names their sockets' folder in :data:`PREFORK_ENV`); :func:`harness.server.spawn` asks one
when that variable is set and falls back to ``subprocess.Popen`` when none answers.
``MIXKV_PREFORK=`` (empty) in a command's environment opts it out.

Protocol: one JSON line per connection on a Unix socket, one JSON line back.
``{"argv", "env", "cwd", "log"}`` -> ``{"pid"}``; ``{"poll": pid}`` -> ``{"returncode"}``
(null while the child runs; the prefork reaps its children).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

#: folder of prefork sockets, one per import environment (unset or empty: none)
PREFORK_ENV = "MIXKV_PREFORK"

#: environment names read only while a server runs (never at import), so a child whose
#: value differs from the prefork's still runs in place: ours (``MIXKV_``: read in
#: functions), pytest's per-test bookkeeping, and SGLang's that are read through
#: ``envs.X.get()`` or ``os.environ`` inside functions
#: (``SGLANG_SWA_EVICTION_INTERVAL``: ``model_executor/pool_configurator.py:514``,
#: ``managers/schedule_batch.py:3217``; ``SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY``:
#: ``managers/scheduler.py:1712``; ``SGLANG_CPU_OMP_THREADS_BIND``: ``utils/common.py:725``),
#: and the shell's (working directories, the terminal's size)
RUN_TIME_PREFIXES = ("MIXKV_", "PYTEST_")
RUN_TIME = frozenset({"SGLANG_SWA_EVICTION_INTERVAL", "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY",
                      "SGLANG_CPU_OMP_THREADS_BIND", "PORT", "PWD", "OLDPWD", "SHLVL", "_",
                      "COLUMNS", "LINES"})

#: what the prefork imports before it forks: the launcher's modules (every model class
#: comes with the registry), the scheduler's and the detokenizer's, and our plugin
WARM = ("sglang.srt.entrypoints.http_server",
        "sglang.srt.managers.scheduler", "sglang.srt.managers.detokenizer_manager",
        "sglang.srt.model_executor.model_runner", "sglang.srt.models.registry",
        "sglang.srt.layers.attention.torch_native_backend",
        "sglang.srt.layers.attention.triton_backend",
        "sglang_mixkv.model", "sglang_mixkv.sglang_seams")

LAUNCHER = ("-m", "sglang.launch_server")
_EXECVE = os.execve  # the real one (a child replaces ``os.execve``)

#: what a child's log starts with when it execs a fresh interpreter after all
FRESH = "prefork: a fresh interpreter"

#: modules that read nothing from the environment at import and end by exec'ing the
#: launcher: they run in place whatever their environment (the exec is checked)
EXECS_LAUNCHER = frozenset({"sglang_mixkv.serve"})


def import_differences(env: dict[str, str], base: dict[str, str]) -> list[str]:
    """Names whose value in ``env`` differs from ``base`` and that an import may read."""
    return sorted(k for k in set(env) | set(base)
                  if env.get(k) != base.get(k) and k not in RUN_TIME
                  and not k.startswith(RUN_TIME_PREFIXES))


def socket_name(env: dict[str, str]) -> str:
    """The socket of the prefork for ``env``'s import environment: keyed by what differs
    between prefork environments (``TRITON_INTERPRET``), the rest is checked in the child."""
    return f"interpret-{env.get('TRITON_INTERPRET') or 'unset'}.sock"


# --- client ---------------------------------------------------------------------------


def _ask(path: str, message: dict, timeout: float = 30.0) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(message).encode() + b"\n")
        with s.makefile("rb") as f:
            line = f.readline()
    if not line:
        raise ConnectionError(f"prefork {path} closed the connection")
    return json.loads(line)


class Forked:
    """A child of a prefork, as much of ``subprocess.Popen`` as the harness uses: ``pid``
    (also its process group), ``args``, ``poll()``, ``wait()``, ``returncode``."""

    def __init__(self, path: str, pid: int, args: list[str]):
        self.path, self.pid, self.args, self.returncode = path, pid, args, None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = _ask(self.path, {"poll": self.pid})["returncode"]
            except OSError:  # the prefork is gone: the child was reparented, look at it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, 0)
                    return None
                self.returncode = -signal.SIGKILL
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.1)
        return self.returncode


def fork(cmd: list[str], log: Path, env: dict[str, str], cwd: str | Path | None) -> Forked | None:
    """Ask the prefork for ``env`` to run ``cmd`` (``python -m MODULE ...`` with this
    interpreter only) with output to ``log``; None when there is none to ask."""
    folder, cmd = env.get(PREFORK_ENV, ""), [str(a) for a in cmd]
    if not folder or len(cmd) < 3 or cmd[0] != sys.executable or cmd[1] != "-m":
        return None
    path = os.path.join(folder, socket_name(env))
    deadline = time.monotonic() + 120  # the suite's first servers wait for its imports
    while not os.path.exists(path + ".ready"):  # (``.starting`` until warm or failed)
        if not os.path.exists(path + ".starting") or time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    try:
        pid = _ask(path, {"argv": cmd, "env": env, "cwd": str(cwd or os.getcwd()),
                          "log": str(log)})["pid"]
    except (OSError, ValueError, KeyError):
        return None
    return Forked(path, pid, cmd)


# --- the prefork process ----------------------------------------------------------------


def _run_in_place(argv: list[str], env: dict[str, str], base: dict[str, str],
                  imported: dict[str, str]) -> None:
    """``python -m MODULE ARGS`` in this process (a forked child): runs MODULE as
    ``__main__`` with ``env`` plus what the prefork's imports set (``imported``: a fresh
    process would have set them on import, unless ``env`` has them); an exec of
    ``python -m sglang.launch_server`` from it runs in place too when the environment
    allows (:func:`import_differences`)."""
    def execve(path, args, new_env):
        args = [str(a) for a in args]
        differs = import_differences({**imported, **new_env}, base)
        if path == sys.executable and tuple(args[1:3]) == LAUNCHER and not differs:
            _run_in_place(args, dict(new_env), base, imported)
            raise SystemExit(0)
        print(f"{FRESH} ({', '.join(differs) or 'not the launcher'})", flush=True)
        _EXECVE(path, args, new_env)

    os.environ.clear()
    os.environ.update({**imported, **env})
    os.execve = execve
    module, args = argv[2], argv[3:]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _call(run):
    return run()


#: :func:`_call` with a frame of about 1 MiB (131,200 unused local slots). CPython 3.11
#: keeps frames on a per-thread stack of 16 KiB chunks, mapped when a call needs the next
#: one and unmapped when it returns (``_PyThreadState_BumpFramePointerSlow``,
#: ``_PyThreadState_PopFrame``): a hot loop whose call depth crosses a chunk's end maps
#: and unmaps 16 KiB per call. Where that end falls depends on every frame below, so a
#: forked child (the prefork's frames under the server's) can land on one where a fresh
#: process does not: measured, an interpreted Triton server made 514,192 mmap/munmap
#: pairs in one request (50 s, 20 s of it in the kernel; fresh: 6 s, none). The frame
#: needs a chunk of its own, rounded up to 2 MiB, and the server's frames (the
#: scheduler's and detokenizer's too, forked with it) fill the ~1 MiB left in it.
_roomy_call = types.FunctionType(
    _call.__code__.replace(co_varnames=("run", *(f"_{i}" for i in range(131_200))),
                           co_nlocals=131_201), globals())


def _become(request: dict, inherited: tuple[socket.socket, int], base: dict[str, str],
            imported: dict[str, str]) -> None:
    """In the forked child: a new session and the log on stdout and stderr (then a byte
    on ``inherited``'s pipe: the prefork answers with the pid only once the child leads
    its process group and its log exists), then the command in :data:`_roomy_call`'s
    frame. Never returns: exits as the interpreter would (exit functions, the status)."""
    code = 1
    listener, tell = inherited
    try:
        listener.close()
        os.setsid()
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
        os.write(tell, b".")
        os.close(tell)
        os.chdir(request["cwd"])
        import random

        import numpy as np

        random.seed()
        np.random.seed()
        argv = request["argv"]
        differs = ([] if argv[2] in EXECS_LAUNCHER
                   else import_differences({**imported, **request["env"]}, base))
        if differs:
            print(f"{FRESH} ({', '.join(differs)} differ)", flush=True)
            _EXECVE(argv[0], argv, request["env"])
        _roomy_call(lambda: _run_in_place(argv, request["env"], base, imported))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(path: str, warm: tuple[str, ...] = WARM) -> None:
    """Import ``warm``, then answer requests on the Unix socket ``path`` until the
    parent process is gone. Writes ``path.ready`` once warm."""
    parent, base = os.getppid(), dict(os.environ)
    try:
        for name in warm:
            importlib.import_module(name)
    finally:  # clients stop waiting for this prefork once it is warm or gone
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + ".starting")
    if threading.active_count() != 1:  # a fork keeps only the forking thread
        raise RuntimeError(f"prefork: {threading.active_count()} threads after imports")
    imported = {k: v for k, v in os.environ.items() if k not in base}
    base = dict(os.environ)  # what the children are compared with: after the imports
    exited: dict[int, int] = {}
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(64)
    Path(path + ".ready").touch()
    print(f"prefork: warm, listening on {path}", flush=True)

    def reap() -> None:
        with contextlib.suppress(ChildProcessError):
            while (reaped := os.waitpid(-1, os.WNOHANG))[0]:
                exited[reaped[0]] = os.waitstatus_to_exitcode(reaped[1])

    while os.getppid() == parent:
        reap()
        if not select.select([listener], [], [], 0.2)[0]:
            continue
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as f:
            request = json.loads(f.readline())
            if "poll" in request:
                reap()
                answer = {"returncode": exited.get(request["poll"])}
            else:
                sys.stdout.flush()  # nothing of ours may reach a child's log
                sys.stderr.flush()
                settled, tell = os.pipe()
                pid = os.fork()
                if pid == 0:
                    conn.close()
                    os.close(settled)
                    _become(request, (listener, tell), base, imported)
                os.close(tell)
                os.read(settled, 1)  # the child leads its own session (or has exited)
                os.close(settled)
                answer = {"pid": pid}
            conn.sendall(json.dumps(answer).encode() + b"\n")


if __name__ == "__main__":  # python -m harness.prefork SOCKET [MODULE,... to import]
    serve(sys.argv[1], *([tuple(sys.argv[2].split(","))] if len(sys.argv) > 2 else []))
