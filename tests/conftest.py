import torch

# Two cores: one intra-op thread keeps the reference from fighting the server's threads.
torch.set_num_threads(1)
