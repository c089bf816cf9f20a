"""End-to-end smoke run of the core library on generated RGB-D frames.

    python -m experiments.demo [--steps 40] [--frames 8]

Renders depth and surface labels of a box room with furniture by analytic ray casting,
back-projects the frames to world points, samples fixed-shape pixel-point pairs, and trains a
small point network (farthest point sampling, ball query, grouping, max pooling, inverse-distance
interpolation) with the pmapped pixel-to-point InfoNCE against fixed "teacher" pixel features
derived from the surface labels. The loss must fall and the pair accuracy rise; the script
exits non-zero otherwise. Runs in well under a minute on a 2-core CPU.
"""

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from p2p_jax import geometry, losses, pointops

HEIGHT, WIDTH = 60, 80
ROOM = np.array([6.0, 5.0, 3.0])
# Furniture as axis-aligned boxes (min corner, max corner), z up.
BOXES = np.array([
    [[0.5, 0.5, 0.0], [1.7, 2.5, 0.5]],  # bed
    [[4.0, 3.5, 0.0], [5.2, 4.4, 0.8]],  # table
    [[2.5, 0.2, 0.0], [3.5, 0.6, 1.8]],  # bookshelf
    [[4.6, 0.8, 0.0], [5.1, 1.3, 0.9]],  # chair
])
NUM_LABELS = 6 + len(BOXES)  # 6 room faces, then one label per box


def look_at(eye, target):
  """Camera-to-world pose of a pinhole camera (x right, y down, z forward) at `eye`."""
  forward = (target - eye) / np.linalg.norm(target - eye)
  right = np.cross(forward, [0.0, 0.0, 1.0])
  right /= np.linalg.norm(right)
  down = np.cross(forward, right)
  pose = np.eye(4)
  pose[:3, :3] = np.stack([right, down, forward], axis=1)
  pose[:3, 3] = eye
  return pose


def render(pose, intrinsics):
  """Depth (uint16 mm) and surface label of every pixel: nearest ray hit, slab method."""
  v, u = np.mgrid[:HEIGHT, :WIDTH].astype(np.float64)
  rays = np.stack([(u - intrinsics[0, 2]) / intrinsics[0, 0],
                   (v - intrinsics[1, 2]) / intrinsics[1, 1], np.ones_like(u)], -1)
  dirs = rays @ pose[:3, :3].T  # z-depth along the camera axis is the ray parameter
  origin = pose[:3, 3]
  with np.errstate(divide="ignore", invalid="ignore"):
    inv = 1.0 / dirs
    # Inside the room: the exit face is the nearest positive hit of each slab.
    exits = np.where(inv > 0, (ROOM - origin) * inv, -origin * inv)
    depth = exits.min(-1)
    axis = exits.argmin(-1)
    label = axis * 2 + (np.take_along_axis(inv, axis[..., None], -1)[..., 0] > 0)
    for b, (lo, hi) in enumerate(BOXES):
      t0, t1 = (lo - origin) * inv, (hi - origin) * inv
      near = np.minimum(t0, t1).max(-1)
      far = np.maximum(t0, t1).min(-1)
      hit = (near <= far) & (near > 0) & (near < depth)
      depth = np.where(hit, near, depth)
      label = np.where(hit, 6 + b, label)
  return np.round(depth * 1000).astype(np.uint16), label.astype(np.int32)


def make_frames(num_frames, rng):
  intrinsics = np.array([[60.0, 0, (WIDTH - 1) / 2], [0, 60.0, (HEIGHT - 1) / 2], [0, 0, 1]])
  depth, labels, poses = [], [], []
  for _ in range(num_frames):
    eye = rng.uniform([1.0, 1.0, 1.0], ROOM - [1.0, 1.0, 1.2])
    target = rng.uniform([0.5, 0.5, 0.0], ROOM - 0.5)
    pose = look_at(eye, target)
    d, lab = render(pose, intrinsics)
    d[rng.uniform(size=d.shape) < 0.05] = 0  # sensor holes
    depth.append(d)
    labels.append(lab)
    poses.append(pose)
  k = np.broadcast_to(intrinsics, (num_frames, 3, 3))
  return (np.stack(depth), np.stack(labels), k.astype(np.float32),
          np.stack(poses).astype(np.float32))


def init_student(key, width=64, dim=32):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  dense = lambda k, i, o: {"w": jax.random.normal(k, (i, o)) / np.sqrt(i), "b": jnp.zeros(o)}
  return {"local1": dense(k1, 6, width), "local2": dense(k2, width, width),
          "point": dense(k3, width + 3, width), "head": dense(k4, width, dim)}


def student(params, points, point_mask):
  """A one-level PointNet++: local max-pooled features around FPS centres, propagated back."""
  apply = lambda p, x: x @ p["w"] + p["b"]
  centers_idx, center_mask = pointops.farthest_point_sample(points, 128, mask=point_mask)
  centers = pointops.gather_points(points, centers_idx)
  idx, neighbour_mask = pointops.ball_query(points, centers, 0.4, 16, mask=point_mask)
  grouped = pointops.group(points, centers, idx, features=points)
  grouped = grouped.at[..., 3:].set(grouped[..., 3:] / ROOM)  # absolute position, scaled
  local = jax.nn.relu(apply(params["local2"], jax.nn.relu(apply(params["local1"], grouped))))
  pooled = pointops.masked_max(local, neighbour_mask[..., None], axis=2)
  per_point = pointops.interpolate(points, centers, pooled, source_mask=center_mask)
  per_point = jax.nn.relu(apply(params["point"],
                                jnp.concatenate([per_point, points / ROOM], axis=-1)))
  feats = apply(params["head"], per_point)
  return losses.l2_normalize(feats)


def make_step(optimizer, teacher, num_points, num_pairs):
  def prepare(key, depth, labels, intrinsics, cam_to_world):
    points, valid = geometry.back_project(depth, intrinsics, cam_to_world)
    sample = jax.vmap(lambda k, v: geometry.sample_pairs(k, v, num_points, num_pairs))(
        jax.random.split(key, depth.shape[0]), valid)
    pts = jax.vmap(geometry.gather_pixels)(points, sample.point_pixels)
    pair_labels = jax.vmap(geometry.gather_pixels)(labels, sample.pair_pixels)
    return pts, sample, teacher[pair_labels]

  def step(params, opt_state, key, depth, labels, intrinsics, cam_to_world):
    pts, sample, pixel_feats = prepare(key, depth, labels, intrinsics, cam_to_world)

    def loss_fn(params):
      feats = student(params, pts, sample.point_mask)
      point_feats = pointops.gather_points(feats, sample.pair_points)
      flat = lambda x: x.reshape((-1,) + x.shape[2:])
      where = flat(sample.pair_mask)
      per_pair = losses.pixel_to_point_info_nce(flat(point_feats), flat(pixel_feats),
                                                temperature=0.1, where=where, axis_name="batch")
      metrics = losses.contrastive_metrics(flat(point_feats), flat(pixel_feats), where=where,
                                           axis_name="batch")
      total = jnp.maximum(jax.lax.psum(jnp.sum(where), "batch"), 1)
      # This device's share of the global mean; the shares sum to the loss over all pairs.
      return jnp.sum(per_pair) / total, jnp.sum(metrics["correct"]) / total

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    # The gradient of the global loss is the sum of the shares' gradients (the all_gather of
    # negatives already routes each pair's gradient back to the device that owns it).
    grads, loss, accuracy = jax.lax.psum((grads, loss, accuracy), "batch")
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, accuracy

  return jax.pmap(step, axis_name="batch")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--frames", type=int, default=8, help="frames per device and step")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  devices = jax.local_device_count()
  rng = np.random.default_rng(args.seed)
  start = time.perf_counter()
  depth, labels, intrinsics, poses = make_frames(4 * devices * args.frames, rng)
  print(f"rendered {len(depth)} frames of {HEIGHT}x{WIDTH} in {time.perf_counter() - start:.1f}s;"
        f" {np.mean(depth > 0):.1%} of pixels have depth")

  teacher = jax.random.normal(jax.random.key(args.seed), (NUM_LABELS, 32))
  teacher = losses.l2_normalize(teacher)
  optimizer = optax.adam(3e-3)
  params = init_student(jax.random.key(args.seed + 1))
  opt_state = optimizer.init(params)
  replicate = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * devices), tree)
  params, opt_state = replicate(params), replicate(opt_state)
  step = make_step(optimizer, teacher, num_points=1024, num_pairs=256)

  history = []
  start = time.perf_counter()
  for i in range(args.steps):
    pick = rng.choice(len(depth), devices * args.frames, replace=False)
    shard = lambda x: x[pick].reshape((devices, args.frames) + x.shape[1:])
    keys = jax.random.split(jax.random.key(1000 + i), devices)
    params, opt_state, loss, accuracy = step(params, opt_state, keys, shard(depth),
                                             shard(labels), shard(intrinsics), shard(poses))
    history.append((float(loss[0]), float(accuracy[0])))
    if i % 10 == 0 or i == args.steps - 1:
      print(f"step {i:3d}  loss {history[-1][0]:.3f}  pair top-1 {history[-1][1]:.1%}")
  elapsed = time.perf_counter() - start
  print(f"{args.steps} steps on {devices} device(s) in {elapsed:.1f}s")
  drift = max(float(jnp.max(jnp.abs(x - x[:1]))) for x in jax.tree.leaves(params))
  if drift > 1e-5:
    print(f"FAILED: parameter replicas differ across devices by {drift:.2e}")
    return 1
  first = np.mean([h[0] for h in history[:5]])
  last = np.mean([h[0] for h in history[-5:]])
  if not last < first:
    print(f"FAILED: loss did not fall ({first:.3f} -> {last:.3f})")
    return 1
  print(f"OK: loss fell from {first:.3f} to {last:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
