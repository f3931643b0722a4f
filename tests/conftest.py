import os

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
