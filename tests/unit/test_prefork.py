"""The prefork (``harness.prefork``): which environments a forked child may run in, and
the protocol with a prefork that imports nothing heavy. The suite's servers are forked
from real ones (``tests/conftest.py``); ``make test`` prints how many."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from harness import prefork
from harness.server import kill_group, spawn


def test_run_time_names_may_differ_import_time_names_may_not():
    base = {"OMP_NUM_THREADS": "1", "PATH": "/bin", "PYTEST_CURRENT_TEST": "a"}
    same = {**base, "MIXKV_API_KEY": "k", "PYTEST_CURRENT_TEST": "b",
            "SGLANG_SWA_EVICTION_INTERVAL": "2"}
    assert prefork.import_differences(same, base) == []
    interpret = {**base, "TRITON_INTERPRET": "1"}
    assert prefork.import_differences(interpret, base) == ["TRITON_INTERPRET"]
    assert prefork.import_differences({"PATH": "/bin"}, base) == ["OMP_NUM_THREADS"]
    assert prefork.socket_name({"TRITON_INTERPRET": "1"}) != prefork.socket_name({})
    assert prefork.socket_name({"OMP_NUM_THREADS": "4"}) == prefork.socket_name({})


def test_nothing_named_or_nothing_listening_means_a_fresh_process(tmp_path):
    cmd = [sys.executable, "-m", "platform"]
    assert prefork.fork(cmd, tmp_path / "log", {}, None) is None
    assert prefork.fork(cmd, tmp_path / "log", {prefork.PREFORK_ENV: ""}, None) is None
    assert prefork.fork(cmd, tmp_path / "log", {prefork.PREFORK_ENV: str(tmp_path)}, None) is None
    assert prefork.fork(["bash", "-c", "true"], tmp_path / "log",
                        {prefork.PREFORK_ENV: str(tmp_path)}, None) is None


@pytest.fixture
def folder(tmp_path):
    """A prefork that imports only ``json``, as the suite's import SGLang."""
    sock = tmp_path / prefork.socket_name(dict(os.environ))
    sock.with_name(sock.name + ".starting").touch()
    proc = subprocess.Popen([sys.executable, "-m", "harness.prefork", str(sock), "json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    yield tmp_path
    proc.kill()
    proc.wait()


def test_a_forked_child_is_the_command_with_its_log_session_and_status(folder, tmp_path):
    env = {prefork.PREFORK_ENV: str(folder)}
    done = spawn([sys.executable, "-m", "platform"], tmp_path / "platform.log", env=env)
    assert isinstance(done, prefork.Forked)
    assert done.wait(timeout=60) == 0
    assert (tmp_path / "platform.log").read_text().strip()  # platform's one line
    failed = spawn([sys.executable, "-m", "no_such_module_here"], tmp_path / "bad.log", env=env)
    assert failed.wait(timeout=60) == 1 and "No module named" in (tmp_path / "bad.log").read_text()
    running = spawn([sys.executable, "-m", "timeit", "-n", "1", "import time; time.sleep(60)"],
                    tmp_path / "sleep.log", env=env)
    assert running.poll() is None and os.getpgid(running.pid) == running.pid  # own group
    started = time.monotonic()
    kill_group(running)
    assert running.returncode is not None and time.monotonic() - started < 30


def test_an_import_time_difference_runs_a_fresh_interpreter(folder, tmp_path):
    env = {prefork.PREFORK_ENV: str(folder), "OMP_NUM_THREADS": "7"}
    proc = spawn([sys.executable, "-m", "platform"], tmp_path / "log", env=env)
    assert isinstance(proc, prefork.Forked) and proc.wait(timeout=60) == 0
    text = (tmp_path / "log").read_text()
    assert "a fresh interpreter (OMP_NUM_THREADS differ)" in text and len(text.splitlines()) == 2
