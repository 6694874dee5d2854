"""Test fixtures. Fakes 8 CPU devices before JAX is imported, so data-parallel code is tested."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
