"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""

import os
import sys

if "jax" in sys.modules:
  raise RuntimeError("jax was imported before tests/conftest.py could set XLA_FLAGS")
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, f"expected 8 simulated devices, got {jax.devices()}"
