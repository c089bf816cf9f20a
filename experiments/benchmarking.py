"""Timing helpers shared by the benchmark scripts: medians, the matmul peak, a Markdown table."""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def median_ms(fn, args, repeats: int) -> float:
  """Median wall time in ms of `fn(*args)` after one warm-up call (compilation)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def matmul_peak_gflops(repeats: int) -> float:
  """Measured float32 matmul throughput (2048^3 under jit), the reference for GFLOP/s."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(2048, 2048)), jnp.float32)
  return 2 * 2048**3 / median_ms(jax.jit(lambda x: x @ x), (a,), repeats) / 1e6


def nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def print_table(rows, how: str) -> None:
  """Prints rows of (operation, ms, throughput, target, verdict) as a Markdown table.

  Args:
    rows: the table's rows.
    how: how the times were taken, printed above the table.
  """
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPU threads visible; {how}")
  header = ("operation", "ms", "throughput", "target", "")
  widths = [max(len(str(r[i])) for r in list(rows) + [header]) for i in range(5)]
  fmt = "| " + " | ".join(f"{{:{w}}}" for w in widths) + " |"
  print(fmt.format(*header))
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for r in rows:
    print(fmt.format(*r))
