"""Suite-wide settings: no progress bars, deterministic CPU threads."""

import os

os.environ.setdefault("WORSTFORGET_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# The suite's tensors are small: one intra-op thread is faster than two (no thread hand-offs) and keeps
# timings stable when the machine is shared.
torch.set_num_threads(1)
