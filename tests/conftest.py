"""Test fixtures. Fakes 8 CPU devices before JAX is imported, so data-parallel code is tested."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests (and the training subprocesses they start) compile the same programs: XLA's
# persistent cache, shared by the pytest-xdist workers and the subprocesses, compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"cyclestar_jax_tests_xla_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
