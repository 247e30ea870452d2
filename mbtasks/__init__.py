"""mbtasks: one MobileNet backbone, three vision tasks."""

import os

# albumentations checks PyPI for a newer version at import; stay offline and quiet.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
