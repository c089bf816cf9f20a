"""Speed and memory of the SR-UNet student (Res16UNet34C) on one room: pair lists against dense
gathers, in one run, and against PointNet++ (and spconv's CPU forward, when installed).

    python -m experiments.benchmark_sparse [--points 50000] [--voxel-size 0.025] [--repeats 3]
        [--spconv]

The scene is synthetic room 1 (a living room) of `datasets.synthetic_rooms.generate` with seed
0: its surfaces (floor, walls, ceiling, furniture) sampled uniformly at the density that gives
`--points` points (`synthetic.sample_surface`), with albedo colours as input features. Level
capacities are the room's voxel counts plus 10 %, pair capacities its pair counts plus 10 %.
Timed, each as the median of `--repeats` runs after compilation, the two convolutions
(`conv_impl` "dense": all 27 offsets of every voxel; "pairs": the occupied pairs only)
interleaved:

- building the voxel pyramid and all kernel maps (and pair lists), alone;
- Res16UNet34C forward, and forward + backward (gradients of all parameters), training-mode
  BatchNorm, maps included;
- PointNet++ (the classic 4-level S3DIS network, `pointnet2.PointNet2Seg`) forward + backward
  on the same points.

Useful work is counted from the occupied pairs: 2 C_in C_out multiply-adds per pair and per
occupied voxel (the centre), per stride-2 child, per 1x1 shortcut row; a backward is twice its
forward. Next to it, the work executed (dense: XLA's count of the compiled program; pairs: the
same count over every slot of the capacities, padding included) and the share of the measured
float32 matmul peak that the useful work reached. Peak memory is XLA's compiled footprint
(arguments + outputs + temporaries).

With `--spconv` the same network with the same weights runs in spconv 2.x (SubMConv3d,
SparseConv3d, SparseInverseConv3d; inference-mode BatchNorm in both), on the same voxels, with
one torch thread (more threads make its CPU scatter-add return wrong rows). Its block8 output
is compared with ours, and both forwards are timed in inference mode.
"""

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarking import matmul_peak_gflops, median_ms, print_table
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


def compile_fn(fn, args):
  """(compiled, compile seconds, XLA's GFLOP count)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, seconds, float(cost.get("flops", 0.0)) / 1e9


def forward_backward(model, variables):
  """(params, points, colors, mask) -> (loss, gradients), training-mode BatchNorm."""
  def loss(params, points, colors, mask):
    (out, _), _ = model.apply({**variables, "params": params}, points, colors, mask, train=True,
                              mutable=["batch_stats"])
    return jnp.mean(out**2)

  return jax.value_and_grad(loss)


def level_of(name: str) -> int:
  """The level whose voxels a Res16UNet layer writes (the finer one for stride-2 layers)."""
  if name.startswith("block"):
    stage = int(name[5])
    return stage if stage <= 4 else 8 - stage
  if name.startswith(("conv0", "bn0")):
    return 0
  if name.startswith("convtr"):
    return int(math.log2(int(name.split("p")[1].split("s")[0]))) - 1
  return int(name[4]) - 1  # conv{l}p..s2: from level l - 1


def useful_gflop(params, voxels, pairs) -> float:
  """Forward GFLOP of the occupied work (see the module docstring)."""
  total = 0.0
  voxels, pairs = np.asarray(voxels, np.float64), np.asarray(pairs, np.float64)
  for name, layer in params.items():
    for path, leaf in jax.tree_util.tree_leaves_with_path(layer):
      keys = [p.key for p in path]
      if keys[-1] != "kernel" or name == "final":
        continue
      level = level_of(name)
      if leaf.ndim == 2:  # 1x1 shortcut
        total += 2 * voxels[level] * leaf.shape[0] * leaf.shape[1]
      elif leaf.shape[0] == 8:  # stride 2: one pair per fine voxel
        total += 2 * voxels[level] * leaf.shape[1] * leaf.shape[2]
      else:
        total += 2 * (voxels[level] + pairs[level]) * leaf.shape[1] * leaf.shape[2]
  return total / 1e9


def spconv_rows(model, variables, points, colors, mask, repeats):
  """spconv's forward of the same network (one torch thread), checked against ours."""
  import torch  # optional: only this comparison needs them
  from spconv import pytorch as spc

  torch.set_num_threads(1)
  levels = jax.jit(lambda p, c, m: sparse_unet.build_levels(
      p, c, m, model.voxel_size, model.capacities(points.shape[1])))(points, colors, mask)
  valid = np.asarray(levels.tensor.mask)
  coords = np.asarray(levels.tensor.coords)[valid]
  coords[:, 1:] -= coords[:, 1:].min(0) // 16 * 16  # non-negative, parity kept for 4 levels
  feats = np.asarray(levels.tensor.features)[valid]
  params, stats = variables["params"], variables["batch_stats"]
  t = lambda a: torch.tensor(np.asarray(a))

  def conv_weight(conv, kernel):
    k = 3 if kernel.shape[0] == 27 else 2
    w = np.asarray(kernel).reshape(k, k, k, kernel.shape[1], kernel.shape[2])
    if list(conv.weight.shape) == [kernel.shape[2], k, k, k, kernel.shape[1]]:
      w = w.transpose(4, 0, 1, 2, 3)  # KRSC
    else:
      w = w.transpose(0, 1, 2, 4, 3)  # RSKC
    conv.weight.data = t(np.ascontiguousarray(w))
    return conv

  def bn(name, x, relu):
    p, s = params[name], stats[name]
    scale = t(p["scale"]) / torch.sqrt(t(s["var"]) + 1e-5)
    y = (x - t(s["mean"])) * scale + t(p["bias"])
    return torch.relu(y) if relu else y

  def subm(name, x, level, c_out):
    kernel = params_at(name)["kernel"]
    conv = spc.SubMConv3d(kernel.shape[1], c_out, 3, bias=False, indice_key=f"subm{level}")
    return conv_weight(conv, kernel)(x)

  scope = []

  def params_at(name):
    node = params
    for key in scope + [name]:
      node = node[key]
    return node

  def block(name, x, level, planes):
    scope.append(name)
    out = subm("conv1", x, level, planes)
    out = out.replace_feature(bn_scoped(name, "norm1", out.features, True))
    out = subm("conv2", out, level, planes)
    y = bn_scoped(name, "norm2", out.features, False)
    short = x.features
    if "downsample_conv" in params[name]:
      short = short @ t(params[name]["downsample_conv"]["kernel"])
      short = bn_scoped(name, "downsample_norm", short, False)
    scope.pop()
    return out.replace_feature(torch.relu(y + short))

  def bn_scoped(block_name, name, x, relu):
    p, s = params[block_name][name], stats[block_name][name]
    scale = t(p["scale"]) / torch.sqrt(t(s["var"]) + 1e-5)
    y = (x - t(s["mean"])) * scale + t(p["bias"])
    return torch.relu(y) if relu else y

  def forward():
    x = spc.SparseConvTensor(t(feats), torch.tensor(coords), coords[:, 1:].max(0) + 16, 1)
    x = subm("conv0p1s1", x, 0, 32)
    x = x.replace_feature(bn("bn0", x.features, True))
    skips = [x]
    for level in range(1, 5):
      name = f"conv{level}p{2 ** (level - 1)}s2"
      kernel = params[name]["kernel"]
      conv = spc.SparseConv3d(kernel.shape[1], kernel.shape[2], 2, 2, bias=False,
                              indice_key=f"down{level}")
      x = conv_weight(conv, kernel)(x)
      x = x.replace_feature(bn(f"bn{level}", x.features, True))
      for i in range(model.layers[level - 1]):
        x = block(f"block{level}_{i}", x, level, model.planes[level - 1])
      skips.append(x)
    for level in range(3, -1, -1):
      stage, up = 7 - level, 4 + (3 - level)
      name = f"convtr{up}p{2 ** (level + 1)}s2"
      kernel = params[name]["kernel"]
      conv = spc.SparseInverseConv3d(kernel.shape[1], kernel.shape[2], 2, bias=False,
                                     indice_key=f"down{level + 1}")
      x = conv_weight(conv, kernel)(x)
      x = x.replace_feature(torch.cat([bn(f"bntr{up}", x.features, True),
                                       skips[level].features], 1))
      for i in range(model.layers[stage]):
        x = block(f"block{stage + 1}_{i}", x, level, model.planes[stage])
    return x.features

  with torch.no_grad():
    out = forward().numpy()
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      forward()
      times.append(time.perf_counter() - start)
  return out, 1e3 * float(np.median(times))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--points", type=int, default=50_000)
  parser.add_argument("--voxel-size", type=float, default=0.025)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--spconv", action="store_true",
                      help="also run spconv's CPU forward of the same network (needs spconv)")
  args = parser.parse_args(argv)
  points, colors = room(args.points)
  mask = np.ones(points.shape[:2], bool)
  num = points.shape[1]
  data = (points, colors, mask)

  def occupancy(p, c, m):
    levels = sparse_unet.build_levels(p, c, m, args.voxel_size, (num,) * 5)
    pairs = [jnp.sum((k.neighbours < len(k.neighbours)) & mk[:, None]) - jnp.sum(mk)
             for k, mk in zip(levels.kmaps, levels.masks)]
    return levels.num_voxels[0], jnp.stack(pairs)

  voxels, pairs = (np.asarray(x) for x in jax.jit(occupancy)(*data))
  caps = [int(8 * math.ceil(1.1 * int(c) / 8)) for c in voxels]
  common = dict(voxel_size=args.voxel_size, capacity=caps[0],
                coarse_capacity_ratios=[c / caps[0] for c in caps[1:]],
                pairs_per_voxel=[1.1 * p / c for p, c in zip(pairs, caps)])
  models = {impl: sparse_unet.SparseUNet34C(conv_impl=impl, **common)
            for impl in ("dense", "pairs")}
  variables = random_variables(lambda key: models["pairs"].init(key, *data))
  params = variables["params"]
  num_params = sum(x.size for x in jax.tree.leaves(params))
  useful = useful_gflop(params, voxels, pairs)
  peak = matmul_peak_gflops(args.repeats)
  rows = []

  for impl, model in models.items():
    def maps(p, c, m, model=model):
      levels = sparse_unet.build_levels(p, c, m, args.voxel_size, model.capacities(num), 3,
                                        model.pair_capacities(1, num))
      return levels.kmaps, levels.smaps, levels.overflow

    compiled, compile_s, _ = compile_fn(maps, data)
    ms = median_ms(compiled, data, args.repeats)
    overflow = int(np.sum(compiled(*data)[2]))
    rows.append((f"maps, {impl}: voxelise + 5 levels", f"{ms:9.1f}",
                 f"{compiled_mib(compiled):7.1f} MiB", f"compile {compile_s:5.1f} s",
                 f"overflow {overflow}"))

  for what, factor in (("forward", 1), ("forward + backward", 3)):
    for impl, model in models.items():
      if factor == 1:
        fn = lambda params, p, c, m, model=model: model.apply(
            {**variables, "params": params}, p, c, m, train=True, mutable=["batch_stats"])[0][0]
      else:
        fn = forward_backward(model, variables)
      compiled, compile_s, xla_gflop = compile_fn(fn, (params, *data))
      ms = median_ms(compiled, (params, *data), args.repeats)
      gflop = factor * useful
      if impl == "pairs":  # XLA counts a loop body once: count the slots instead
        slots = np.asarray(model.pair_capacities(1, num)) + np.asarray(caps)
        xla_gflop = factor * useful_gflop(params, caps, slots - np.asarray(caps))
      rows.append((f"Res16UNet34C {what}, {impl}", f"{ms:9.1f}",
                   f"{compiled_mib(compiled):7.1f} MiB",
                   f"useful {gflop:5.1f} GFLOP = {gflop / ms * 1e3 / peak:4.0%} of peak",
                   f"executed {xla_gflop:6.1f} GFLOP, compile {compile_s:4.1f} s"))

  pn = pointnet2.PointNet2Seg()
  pn_variables = random_variables(lambda key: pn.init(key, *data))
  pn_params = sum(x.size for x in jax.tree.leaves(pn_variables["params"]))
  compiled, compile_s, _ = compile_fn(forward_backward(pn, pn_variables),
                                      (pn_variables["params"], *data))
  ms = median_ms(compiled, (pn_variables["params"], *data), args.repeats)
  rows.append((f"PointNet++ S3DIS forward + backward ({pn_params / 1e6:.1f}M params)",
               f"{ms:9.1f}", f"{compiled_mib(compiled):7.1f} MiB",
               f"compile {compile_s:5.1f} s", ""))

  if args.spconv:
    model = models["pairs"]
    ours_fn = jax.jit(lambda v, p, c, m: model.apply(v, p, c, m, train=False)[1]["b8p1"])
    ours = ours_fn(variables, *data)
    ms = median_ms(ours_fn, (variables, *data), args.repeats)
    ref, ref_ms = spconv_rows(model, variables, points, colors, mask, args.repeats)
    ours = np.asarray(ours)[np.asarray(jax.jit(lambda p, c, m: sparse_unet.build_levels(
        p, c, m, args.voxel_size, model.capacities(num)).tensor.mask)(*data))]
    diff = float(np.abs(ours - ref).max())
    rows.append(("Res16UNet34C forward (inference BN), pairs", f"{ms:9.1f}", "", "",
                 f"max |ours - spconv| {diff:.1e} (|out| <= {np.abs(ref).max():.1f})"))
    rows.append(("spconv 2.x forward (inference BN), 1 torch thread", f"{ref_ms:9.1f}", "", "",
                 ""))

  print(f"synthetic room 1 (seed 0): {num} points, voxel {args.voxel_size} m, "
        f"{num_params / 1e6:.1f}M params; occupied voxels per level {voxels.tolist()}, "
        f"capacities {caps}; "
        f"non-centre pairs per voxel {[round(float(p / v), 2) for p, v in zip(pairs, voxels)]} "
        f"(of 26); float32 matmul peak {peak:.0f} GFLOP/s")
  print_table(rows, f"batch 1, median of {args.repeats} runs; columns: ms, peak memory, "
              "useful work, note")


if __name__ == "__main__":
  main()
