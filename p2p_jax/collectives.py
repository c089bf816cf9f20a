"""Helpers for code that runs inside `jax.shard_map` with its default checks (check_vma=True).

There every value has a type that records the mesh axes it varies over; an array made from
constants (`jnp.zeros`) or passed in replicated (`P()`) is invariant. JAX inserts the casts
from invariant to varying where an operation mixes the two, but a few places must agree
exactly and do not: the carry of `lax.scan` / `lax.fori_loop` (its initial value against the
body's output), and a custom VJP (each cotangent against its primal input). `match_vma` makes
them agree. Under `jax.pmap` and outside shard_map nothing varies and it returns its input.
"""

import jax
from jax import lax


def varying_axes(x) -> frozenset:
  """The mesh axes that any leaf of the pytree `x` varies over (empty outside shard_map)."""
  axes = frozenset()
  for leaf in jax.tree.leaves(x):
    aval = jax.typeof(leaf)
    mat = getattr(aval, "mat", None)  # jax >= 0.9 ManualAxisType; older jax had `aval.vma`
    axes |= mat.varying if mat is not None else frozenset(getattr(aval, "vma", ()))
  return axes


def match_vma(x, *like):
  """`x` with each leaf cast to vary over every axis that a leaf of `like` varies over.

  `lax.pcast(..., to="varying")` is free at run time; its transpose is a `psum`, so a
  gradient flowing back to an invariant leaf of `x` is summed over the devices, as JAX does
  for its own implicit casts. Use it on a scan's initial carry, or on the differentiable
  inputs of a custom VJP so that its backward pass sees one type throughout.

  Args:
    x: a pytree of arrays.
    *like: pytrees whose varying axes `x` should share.

  Returns:
    `x`, its leaves varying over their own axes and those of `like`.
  """
  axes = varying_axes(like)
  if not axes:
    return x

  def cast(leaf):
    missing = axes - varying_axes(leaf)
    return lax.pcast(leaf, tuple(sorted(missing, key=str)), to="varying") if missing else leaf

  return jax.tree.map(cast, x)
