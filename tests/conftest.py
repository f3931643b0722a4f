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
