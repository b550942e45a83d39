import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")   # tests never touch the network

import torch
# The suite runs tiny models: on a shared 2-core machine extra intra-op threads only add contention
# (measured 65x slower on 2 busy cores for the tiny VAE). Benchmarks are scripts and set their own threads.
torch.set_num_threads(1)
