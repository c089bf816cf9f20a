"""Speed and memory of the networks on this machine: a table of median times.

    python -m experiments.benchmark_models [--repeats 10]

- PointNet++ (the classic S3DIS segmentation network, 13 classes): forward + backward + SGD
  update on 4 clouds of 4096 points with 9 input channels; compile time separately.
- ResNet-50 teacher forward at 240x320, batch 1 and 8: GFLOP/s from XLA's cost analysis
  against the measured float32 matmul peak.
- The upsampling projection layer at 480x640, batch 8, K = 4096 pairs, from the ResNet-50
  layer4 map: path (a) materialises the upsampled map, path (b) samples the K pixels; peak
  memory is XLA's compiled footprint (arguments + outputs + temporaries).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.benchmarking import matmul_peak_gflops, median_ms, print_table
from p2p_jax.models import pointnet2, projector, resnet, student


def random_variables(init, seed=0):
  """Variables shaped as `init(key)` returns them, drawn with NumPy (no compiled init)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(init, jax.random.key(0))
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.05 + (s.ndim == 1),
                                            s.dtype), shapes)


def compiled_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def pointnet_step(repeats, rows):
  rng = np.random.default_rng(0)
  points = (rng.uniform(size=(4, 4096, 3)) * [6.0, 5.0, 3.0]).astype(np.float32)
  feats = rng.uniform(size=(4, 4096, 9)).astype(np.float32)
  labels = rng.integers(0, 13, size=(4, 4096))
  model = student.PointModel(pointnet2.PointNet2Seg(), student.SegmentationHead(13))
  variables = jax.jit(model.init)(jax.random.key(0), points, feats)
  tx = optax.sgd(0.1, momentum=0.9)

  def step(params, batch_stats, opt_state, key):
    def loss_fn(params):
      (logits, _), updates = model.apply(
          {"params": params, "batch_stats": batch_stats}, points, feats, train=True,
          rngs={"dropout": key}, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates["batch_stats"]
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*state, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - start
  times = []
  for i in range(repeats + 2):
    start = time.perf_counter()
    *state, loss = compiled(*state, jax.random.key(i))
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  ms = 1e3 * float(np.median(times[2:]))
  rows.append(("PointNet++ seg step 4x4096x9 (fwd+bwd+SGD)", f"{ms:9.1f}",
               f"compile {compile_s:.1f} s", "400 ms", "ok" if ms <= 400 else "SLOWER"))


def resnet_forward(repeats, rows, peak):
  model = resnet.ResNet50()
  for batch in (1, 8):
    images = jnp.zeros((batch, 240, 320, 3), jnp.float32)
    variables = random_variables(lambda key: model.init(key, images))  # noqa: B023
    fn = jax.jit(lambda v, x: model.apply(v, x)[0])
    compiled = fn.lower(variables, images).compile()
    ms = median_ms(compiled, (variables, images), repeats)
    gf = flops(compiled) / ms / 1e6
    rows.append((f"ResNet-50 forward 240x320 batch {batch}", f"{ms:9.1f}",
                 f"{gf:6.1f} GFLOP/s ({gf / peak:4.0%} of peak)", "", ""))


def projector_paths(repeats, rows):
  rng = np.random.default_rng(1)
  image_hw, batch, num_pairs = (480, 640), 8, 4096
  fmap = jnp.asarray(rng.normal(size=(batch, 15, 20, 2048)), jnp.float32)
  pixels = jnp.asarray(np.stack([rng.integers(0, 480, (batch, num_pairs)),
                                 rng.integers(0, 640, (batch, num_pairs))], -1), jnp.int32)
  model = projector.UpsamplingProjector(features=128)
  variables = random_variables(lambda key: model.init(key, fmap, image_hw))

  def dense_then_gather(v, f, p):
    dense, _ = model.apply(v, f, image_hw, method=model.dense)
    return projector.gather_dense(dense, p)

  for name, fn in [("(a) upsample 480x640 then gather", dense_then_gather),
                   ("(b) sample the K pixels", lambda v, f, p: model.apply(v, f, image_hw, p)[0])]:
    compiled = jax.jit(fn).lower(variables, fmap, pixels).compile()
    ms = median_ms(compiled, (variables, fmap, pixels), repeats)
    rows.append((f"UPL {name}, B=8 K=4096", f"{ms:9.1f}",
                 f"peak memory {compiled_bytes(compiled) / 2**20:7.1f} MiB", "", ""))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args(argv)
  peak = matmul_peak_gflops(args.repeats)
  rows = [("matmul 2048^3 float32 (peak)", "", f"{peak:6.1f} GFLOP/s", "", "")]
  pointnet_step(args.repeats, rows)
  resnet_forward(args.repeats, rows, peak)
  projector_paths(args.repeats, rows)
  print_table(rows, f"median of {args.repeats} runs")


if __name__ == "__main__":
  main()
