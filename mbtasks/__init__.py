"""mbtasks: one MobileNet backbone, three vision tasks."""

import os

# albumentations checks PyPI for a newer version at import; stay offline and quiet.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# OpenMP threads that spin while waiting make every torch op crawl when the cores are shared
# (other processes, loader workers): a training step measured 8-19 s instead of 0.3-1.4 s on
# 2 busy cores. Sleeping waiters cost nothing on an idle machine. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
