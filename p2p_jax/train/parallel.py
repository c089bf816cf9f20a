"""Data parallelism over devices: the pmap axis, and state replicated onto every device."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The device axis of every pmapped step, and of its collectives (BatchNorm statistics,
# gradient means, global negatives).
AXIS = "batch"


def replicate(tree: Any, devices) -> Any:
  """One copy of a pytree per device along a new leading axis, placed as `jax.pmap` places
  its outputs: a pmapped step then sees the same input sharding at every call and compiles
  once (a host-stacked copy would differ from the step's own output and force a second
  compilation). Works for arrays on any devices, e.g. fresh from a checkpoint.

  Args:
    tree: the pytree, the same in every process.
    devices: the devices of the pmapped step; with several processes, all of them
      (`jax.devices()`). Each process gets copies on its own devices among them.
  """
  local = sum(d.process_index == jax.process_index() for d in devices)
  stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (local,) + np.shape(x)), tree)
  # `+ 0` makes every output a computed value: pmap forwards bare inputs unchanged.
  return jax.pmap(lambda t: jax.tree.map(lambda x: x + jnp.zeros_like(x), t), axis_name=AXIS,
                  devices=devices)(stacked)


def unreplicate(tree: Any) -> Any:
  """The first device's copy of a replicated pytree."""
  return jax.tree.map(lambda x: x[0], tree)
