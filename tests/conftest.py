import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The tests check the CPU path and the GPU paths that run on a CPU (Triton's
# interpreter): on a GPU host they run exactly as in CI, with the GPU hidden from every
# process they start (serve, servers, the reference), so nothing depends on the host.
os.environ["MIXKV_DEVICE"] = "cpu"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
# A stopped server's launcher sees its scheduler die and, by default, sleeps 5 s before
# crash diagnostics (py-spy, CUDA coredumps: managers/tokenizer_manager.py:2979-3065) that
# a CPU test server has no use for; the tests stop some fifty servers.
os.environ["SGLANG_PYSPY_DUMP_BEFORE_CRASH"] = "0"
os.environ["SGLANG_CUDA_COREDUMP_BEFORE_CRASH"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Two cores: one intra-op thread keeps the reference from fighting the server's threads.
torch.set_num_threads(1)

#: The longest modules (each runs whole on one worker: ``--dist loadscope``), longest first,
#: so that two workers finish together instead of one starting them last (measured
#: 2026-12-04: 7 min each for the first two, 2-3 min the next two).
FIRST = ("server/test_triton.py", "server/test_serving.py", "server/test_gemma.py",
         "server/test_adakv.py", "server/test_serving_limits.py", "inproc/test_radix_release.py",
         "server/test_tp.py", "server/test_readme.py", "server/test_bench.py",
         "server/test_router.py")


def _keep_environment():
    saved = dict(os.environ)
    yield
    for name in set(os.environ) - set(saved):  # by name: threads may be reading it
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


#: What a test or module writes into ``os.environ`` is undone after it: SGLang run in-process
#: sets switches of its own (``ServerArgs`` writes ``SGLANG_ENABLE_TORCH_COMPILE``,
#: ``SGLANG_DISABLE_OUTLINES_DISK_CACHE``, ...: ``server_args.py:7671-7715``), and a server a
#: later module starts would inherit them (and, some being read at import, start afresh
#: instead of from the prefork: ``harness.prefork.import_differences``).
environment_per_test = pytest.fixture(autouse=True)(_keep_environment)
environment_per_module = pytest.fixture(autouse=True, scope="module")(_keep_environment)


def pytest_collection_modifyitems(session, config, items):
    """Run :data:`FIRST`'s modules first, in that order; the rest as collected."""
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, m in enumerate(FIRST) if path.endswith(m)), len(FIRST))

    items.sort(key=rank)  # stable: the order inside a module and among the rest is kept


#: the import environments of the suite's servers (``harness.prefork``): plain, and
#: Triton's interpreter (``server/test_triton.py``)
PREFORKS = ({}, {"TRITON_INTERPRET": "1"})


def pytest_configure(config):
    """The controller (not an xdist worker) names a file where every server the tests
    start appends its start-up time (``harness.server.STARTS_ENV``), and starts one
    prefork per import environment of :data:`PREFORKS` (SGLang imported once; the
    servers are forked from it: ``harness.prefork``) in a folder it names in
    ``harness.prefork.PREFORK_ENV``; workers and the processes they start inherit both.
    ``MIXKV_PREFORK=`` (empty) before ``make test`` starts every server afresh."""
    from harness import prefork
    from harness.server import STARTS_ENV

    if hasattr(config, "workerinput"):
        return
    if not os.environ.get(STARTS_ENV):
        fd, path = tempfile.mkstemp(prefix="mixkv-server-starts-", suffix=".jsonl")
        os.close(fd)
        os.environ[STARTS_ENV] = config._mixkv_starts = path
    if (os.environ.get(prefork.PREFORK_ENV) is not None  # named by the caller (empty: none)
            or "not server" in (config.option.markexpr or "")):  # no servers to start
        return
    folder = tempfile.mkdtemp(prefix="mixkv-prefork-")
    # serve's environment on CPU (serve.build_command: one OpenMP thread)
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    config._mixkv_preforks = []
    for extra in PREFORKS:
        sock = os.path.join(folder, prefork.socket_name({**env, **extra}))
        open(sock + ".starting", "w").close()
        with open(sock + ".log", "w") as log:
            config._mixkv_preforks.append(subprocess.Popen(
                [sys.executable, "-m", "harness.prefork", sock], env={**env, **extra},
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
    os.environ[prefork.PREFORK_ENV] = config._mixkv_prefork_dir = folder


def pytest_unconfigure(config):
    """Stop the preforks (the servers forked from them are the tests' to stop)."""
    for proc in getattr(config, "_mixkv_preforks", []):
        proc.kill()
        proc.wait()
    if getattr(config, "_mixkv_prefork_dir", None):
        shutil.rmtree(config._mixkv_prefork_dir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After the slowest tests: how many servers the run started and what it cost."""
    path = getattr(config, "_mixkv_starts", None)
    if not path or not os.path.exists(path):
        return
    import pandas as pd

    with open(path) as f:
        starts = pd.DataFrame([json.loads(line) for line in f if line.strip()],
                              columns=["what", "seconds", "forked"])
    os.unlink(path)
    starts["forked"] = starts["forked"].fillna(False).astype(bool)
    tr = terminalreporter
    tr.write_sep("=", f"server starts: {len(starts)} ({starts['forked'].sum()} forked from a "
                      f"prefork), {starts['seconds'].sum():.0f} s from spawn to ready in all "
                      "(both workers)")
    if len(starts):
        by = (starts.groupby("what").agg(count=("seconds", "count"), forked=("forked", "sum"),
                                         sum=("seconds", "sum"), mean=("seconds", "mean"))
              .sort_values("sum", ascending=False).head(10))
        tr.write_line(by.to_string(float_format=lambda x: f"{x:.1f}"))
