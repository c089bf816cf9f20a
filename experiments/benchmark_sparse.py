"""Speed and memory of the SR-UNet student (Res16UNet34C) against PointNet++ on one room.

    python -m experiments.benchmark_sparse [--points 50000] [--voxel-size 0.025] [--repeats 3]

The scene is synthetic room 1 (a living room) of `datasets.synthetic_rooms.generate` with seed
0: its surfaces (floor, walls, ceiling, furniture) sampled uniformly at the density that gives
`--points` points (`synthetic.sample_surface`), with albedo colours as input features. Timed,
each as the median of `--repeats` runs after compilation:

- building the voxel pyramid and all kernel maps (voxelisation, five 3x3x3 maps, four
  stride-2 maps), alone;
- Res16UNet34C forward, and forward + backward (gradients of all parameters), training-mode
  BatchNorm, maps included; level capacities are the room's voxel counts plus 10 %. The
  convolutions compute all 27 offsets of every voxel; the header line gives how many are
  occupied on average per level (the useful share);
- PointNet++ (the classic 4-level S3DIS network, `pointnet2.PointNet2Seg`) forward + backward
  on the same points.

Peak memory is XLA's compiled footprint (arguments + outputs + temporaries).
"""

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarking import median_ms, print_table
from p2p_jax.data import synthetic
from p2p_jax.models import pointnet2, sparse_unet


def room(num_points: int) -> tuple[np.ndarray, np.ndarray]:
  """Points [1, N, 3] and colours [1, N, 3] in [0, 1] of synthetic room 1."""
  scene = synthetic.scene_room(0, 1)
  density = num_points / scene.mesh.area
  sample = synthetic.sample_surface(scene, np.random.default_rng(0), density)
  points, colors = sample["points"][:num_points], sample["colors"][:num_points] / 255.0
  return points[None].astype(np.float32), colors[None].astype(np.float32)


def random_variables(init, seed=0):
  """Variables shaped as `init(key)` returns them, drawn with NumPy (no compiled init)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(init, jax.random.key(0))
  draw = lambda s: (rng.uniform(0.5, 1.5, s.shape) if s.ndim == 1 else
                    rng.normal(size=s.shape) / math.sqrt(np.prod(s.shape[:-1])))
  return jax.tree.map(lambda s: jnp.asarray(draw(s), s.dtype), shapes)


def compiled_mib(compiled) -> float:
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) / 2**20


def timed(fn, args, repeats):
  """(compile seconds, median ms, peak MiB) of a jitted fn."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  return compile_s, median_ms(compiled, args, repeats), compiled_mib(compiled)


def forward_backward(model, variables):
  """(params, points, colors, mask) -> (loss, gradients), training-mode BatchNorm."""
  def loss(params, points, colors, mask):
    (out, _), _ = model.apply({**variables, "params": params}, points, colors, mask, train=True,
                              mutable=["batch_stats"])
    return jnp.mean(out**2)

  return jax.value_and_grad(loss)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--points", type=int, default=50_000)
  parser.add_argument("--voxel-size", type=float, default=0.025)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  points, colors = room(args.points)
  mask = np.ones(points.shape[:2], bool)
  num = points.shape[1]

  # Capacities from the room's own voxel counts, with 10 % to spare.
  def occupancy(p, c, m):
    levels = sparse_unet.build_levels(p, c, m, args.voxel_size, (num,) * 5)
    # Occupied 3x3x3 offsets per voxel: the convolutions' useful share of the 27 they compute.
    neighbours = [jnp.sum((k.neighbours < len(k.neighbours)) & mk[:, None]) / jnp.sum(mk)
                  for k, mk in zip(levels.kmaps, levels.masks)]
    return levels.num_voxels[0], jnp.stack(neighbours)

  counts, neighbours = jax.jit(occupancy)(points, colors, mask)
  caps = [int(8 * math.ceil(1.1 * int(c) / 8)) for c in counts]
  model = sparse_unet.SparseUNet34C(voxel_size=args.voxel_size, capacity=caps[0],
                                    coarse_capacity_ratios=[c / caps[0] for c in caps[1:]])
  rows = []

  def maps(p, c, m):
    levels = sparse_unet.build_levels(p, c, m, args.voxel_size, model.capacities(num))
    return levels.kmaps, levels.smaps, levels.overflow

  compile_s, ms, mib = timed(maps, (points, colors, mask), args.repeats)
  overflow = int(jax.jit(maps)(points, colors, mask)[2].sum())
  rows.append(("kernel maps: voxelise + 5 levels (3^3 + stride 2)", f"{ms:9.1f}",
               f"{mib:7.1f} MiB", f"compile {compile_s:5.1f} s", f"overflow {overflow}"))

  variables = random_variables(lambda key: model.init(key, points, colors, mask))
  params = variables["params"]
  num_params = sum(x.size for x in jax.tree.leaves(params))
  fwd = lambda params, p, c, m: model.apply({**variables, "params": params}, p, c, m,
                                            train=True, mutable=["batch_stats"])[0][0]
  data = (points, colors, mask)
  compile_s, ms, mib = timed(fwd, (params, *data), args.repeats)
  rows.append((f"Res16UNet34C forward ({num_params / 1e6:.1f}M params)", f"{ms:9.1f}",
               f"{mib:7.1f} MiB", f"compile {compile_s:5.1f} s", ""))
  compile_s, ms, mib = timed(forward_backward(model, variables), (params, *data), args.repeats)
  rows.append(("Res16UNet34C forward + backward", f"{ms:9.1f}", f"{mib:7.1f} MiB",
               f"compile {compile_s:5.1f} s", ""))

  pn = pointnet2.PointNet2Seg()
  pn_variables = random_variables(lambda key: pn.init(key, points, colors, mask))
  num_params = sum(x.size for x in jax.tree.leaves(pn_variables["params"]))
  compile_s, ms, mib = timed(forward_backward(pn, pn_variables),
                             (pn_variables["params"], *data), args.repeats)
  rows.append((f"PointNet++ S3DIS forward + backward ({num_params / 1e6:.1f}M params)",
               f"{ms:9.1f}", f"{mib:7.1f} MiB", f"compile {compile_s:5.1f} s", ""))

  print(f"synthetic room 1 (seed 0): {num} points, voxel {args.voxel_size} m, occupied voxels "
        f"per level {[int(c) for c in counts]}, capacities {caps}, occupied 3x3x3 offsets per "
        f"voxel {[round(float(n), 1) for n in neighbours]} of 27")
  print_table(rows, f"batch 1, median of {args.repeats} runs; columns: ms, peak memory, "
              "compile time, note")


if __name__ == "__main__":
  main()
