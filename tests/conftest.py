import os

# Two CPU cores on CI: keep torch from oversubscribing when tests run next to Ray.
os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(2)
