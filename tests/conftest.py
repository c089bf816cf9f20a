"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""

import atexit
import os
import shutil
import sys
import tempfile

if "jax" in sys.modules:
  raise RuntimeError("jax was imported before tests/conftest.py could set XLA_FLAGS")
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session, in a new temporary folder: the scripts
# that tests run as subprocesses (and their restarts) compile the same programs again
# otherwise. Each session starts empty and removes it; set JAX_COMPILATION_CACHE_DIR to keep one.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="p2p_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, f"expected 8 simulated devices, got {jax.devices()}"
