"""Test-session settings: the kernel choices pinned to their defaults (no calibration, nothing
written to the user's cache), unless the environment asks otherwise."""

import os

os.environ.setdefault("DIGITLAB_KERNELS", "default")
