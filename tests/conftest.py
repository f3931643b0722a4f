import os

# The tests check the CPU path and the GPU paths that run on a CPU (Triton's
# interpreter): on a GPU host they run exactly as in CI, with the GPU hidden from every
# process they start (serve, servers, the reference), so nothing depends on the host.
os.environ["MIXKV_DEVICE"] = "cpu"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402

# Two cores: one intra-op thread keeps the reference from fighting the server's threads.
torch.set_num_threads(1)
