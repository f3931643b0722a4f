import json
import os
import tempfile

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

import torch  # noqa: E402

# Two cores: one intra-op thread keeps the reference from fighting the server's threads.
torch.set_num_threads(1)

#: The longest modules (each runs whole on one worker: ``--dist loadscope``), longest first,
#: so that two workers finish together instead of one starting them last (measured
#: 2026-12-04: 7 min each for the first two, 2-3 min the next two).
FIRST = ("server/test_triton.py", "server/test_serving.py", "server/test_gemma.py",
         "server/test_adakv.py", "server/test_serving_limits.py", "inproc/test_radix_release.py",
         "server/test_tp.py", "server/test_readme.py", "server/test_bench.py",
         "server/test_router.py")


def pytest_collection_modifyitems(session, config, items):
    """Run :data:`FIRST`'s modules first, in that order; the rest as collected."""
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, m in enumerate(FIRST) if path.endswith(m)), len(FIRST))

    items.sort(key=rank)  # stable: the order inside a module and among the rest is kept


def pytest_configure(config):
    """The controller (not an xdist worker) names a file where every server the tests
    start appends its start-up time (``harness.server.STARTS_ENV``; workers and the
    processes they start inherit it)."""
    from harness.server import STARTS_ENV

    if hasattr(config, "workerinput") or os.environ.get(STARTS_ENV):
        return
    fd, path = tempfile.mkstemp(prefix="mixkv-server-starts-", suffix=".jsonl")
    os.close(fd)
    os.environ[STARTS_ENV] = config._mixkv_starts = path


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After the slowest tests: how many servers the run started and what it cost."""
    path = getattr(config, "_mixkv_starts", None)
    if not path or not os.path.exists(path):
        return
    import pandas as pd

    with open(path) as f:
        starts = pd.DataFrame([json.loads(line) for line in f if line.strip()],
                              columns=["what", "seconds"])
    os.unlink(path)
    tr = terminalreporter
    tr.write_sep("=", f"server starts: {len(starts)}, {starts['seconds'].sum():.0f} s "
                      "from spawn to ready in all (both workers)")
    if len(starts):
        by = (starts.groupby("what")["seconds"].agg(["count", "sum", "mean"])
              .sort_values("sum", ascending=False).head(10))
        tr.write_line(by.to_string(float_format=lambda x: f"{x:.1f}"))
