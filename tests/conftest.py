"""Suite-wide settings: no progress bars, deterministic CPU threads."""

import os

os.environ.setdefault("WORSTFORGET_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
