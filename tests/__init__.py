import os

# Before conftest imports torch: OpenMP waiters must sleep, not spin, on shared cores (see mbtasks/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
