"""VoteNet: heading bins, vote targets and losses against NumPy loops, padding, learning."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from p2p_jax.models import backbone
from p2p_jax.models import votenet as vn

SPEC = vn.DetectionSpec(num_classes=3, mean_sizes=((0.8, 0.6, 0.9), (1.6, 0.8, 0.5),
                                                   (0.5, 0.5, 1.2)), num_heading_bins=4)


# ---------------------------------------------------------------------------------------------
# Independent NumPy references, written from VoteNet's scalar code.

def np_angle2class(angle, num_class):
  """sunrgbd_utils.angle2class, verbatim in NumPy."""
  angle = angle % (2 * np.pi)
  per_class = 2 * np.pi / num_class
  shifted = (angle + per_class / 2) % (2 * np.pi)
  class_id = int(shifted / per_class)
  return class_id, shifted - (class_id * per_class + per_class / 2)


def np_in_box(p, box):
  """Whether point p lies in the box, by projections on the box's axes."""
  h = box[6]
  axes = [np.array([np.cos(h), np.sin(h), 0.0]), np.array([-np.sin(h), np.cos(h), 0.0]),
          np.array([0.0, 0.0, 1.0])]
  return all(abs(np.dot(p - box[:3], a)) <= box[3 + i] / 2 for i, a in enumerate(axes))


def np_sunrgbd_votes(points, point_mask, boxes, box_mask):
  """sunrgbd_data.extract_sunrgbd_data's vote loop: point_votes and point_vote_idx."""
  b_, n_ = point_mask.shape
  offsets = np.zeros((b_, n_, 3, 3))
  valid = np.zeros((b_, n_), bool)
  for b in range(b_):
    vote_idx = np.zeros(n_, int)
    for m in range(boxes.shape[1]):
      if not box_mask[b, m]:
        continue
      inds = [n for n in range(n_) if point_mask[b, n] and np_in_box(points[b, n], boxes[b, m])]
      for n in inds:
        vote = boxes[b, m, :3] - points[b, n]
        offsets[b, n, vote_idx[n]] = vote
        if vote_idx[n] == 0:
          offsets[b, n, 1] = offsets[b, n, 2] = vote
        valid[b, n] = True
      for n in inds:
        vote_idx[n] = min(2, vote_idx[n] + 1)
  return offsets, valid


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max() - np.log(np.sum(np.exp(x - x.max())))


def np_huber(x, delta=1.0):
  return np.where(np.abs(x) <= delta, 0.5 * x * x, 0.5 * delta ** 2 + delta * (np.abs(x) - delta))


def np_votenet_loss(out, tgt, spec, near=0.3, far=0.6):
  """loss_helper.py (ScanNet) with explicit loops; padded GT boxes never count."""
  out = {k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
         for k, v in out.items()}
  boxes, classes, gmask = (np.asarray(tgt["gt_boxes"], np.float64), tgt["gt_classes"],
                           tgt["gt_mask"])
  b_, k_ = out["proposal_mask"].shape
  nh = spec.num_heading_bins
  mean_sizes = np.array(spec.mean_sizes)
  # Votes.
  vote_sum = vote_count = 0.0
  for b in range(b_):
    for s, n in enumerate(out["seed_inds"][b]):
      if out["seed_mask"][b, s] and tgt["vote_valid"][b, n]:
        gt_votes = out["seed_xyz"][b, s] + tgt["vote_offsets"][b, n]
        vote_sum += min(np.abs(out["vote_xyz"][b, s] - v).sum() for v in gt_votes)
        vote_count += 1
  terms = {"vote": vote_sum / (vote_count + 1e-6)}
  # Objectness, assignment and every per-positive term.
  sums = dict.fromkeys(["obj", "obj_w", "acc", "c1", "hcls", "hreg", "scls", "sreg", "sem"], 0.0)
  npos = 0
  for b in range(b_):
    valid_gt = [m for m in range(boxes.shape[1]) if gmask[b, m]]
    for k in range(k_):
      if not out["proposal_mask"][b, k]:
        continue
      dists = [np.linalg.norm(out["aggregated_xyz"][b, k] - boxes[b, m, :3]) for m in valid_gt]
      d = min(dists) if dists else np.inf
      if near <= d <= far:
        continue
      positive = d < near
      weight = 0.8 if positive else 0.2
      sums["obj"] += -weight * np_log_softmax(out["objectness_logits"][b, k])[int(positive)]
      sums["obj_w"] += 1
      sums["acc"] += int(np.argmax(out["objectness_logits"][b, k]) == int(positive))
      if not positive:
        continue
      npos += 1
      m = valid_gt[int(np.argmin(dists))]
      sums["c1"] += min(np.sum((out["center"][b, k] - boxes[b, j, :3]) ** 2) for j in valid_gt)
      hbin, hres = np_angle2class(boxes[b, m, 6], nh)
      sums["hcls"] += -np_log_softmax(out["heading_scores"][b, k])[hbin]
      sums["hreg"] += np_huber(out["heading_residuals_normalized"][b, k, hbin]
                               - hres / (np.pi / nh))
      c = classes[b, m]
      sums["scls"] += -np_log_softmax(out["size_scores"][b, k])[c]
      target = (boxes[b, m, 3:6] - mean_sizes[c]) / mean_sizes[c]
      sums["sreg"] += np.mean(np_huber(out["size_residuals_normalized"][b, k, c] - target))
      sums["sem"] += -np_log_softmax(out["sem_logits"][b, k])[c]
  c2 = n_gt = 0.0
  for b in range(b_):
    for m in range(boxes.shape[1]):
      if gmask[b, m]:
        c2 += min(np.sum((out["center"][b, k] - boxes[b, m, :3]) ** 2)
                  for k in range(k_) if out["proposal_mask"][b, k])
        n_gt += 1
  pos = npos + 1e-6
  terms.update(objectness=sums["obj"] / (sums["obj_w"] + 1e-6),
               center=sums["c1"] / pos + c2 / (n_gt + 1e-6), heading_cls=sums["hcls"] / pos,
               heading_reg=sums["hreg"] / pos, size_cls=sums["scls"] / pos,
               size_reg=sums["sreg"] / pos, sem_cls=sums["sem"] / pos)
  terms["box"] = (terms["center"] + 0.1 * terms["heading_cls"] + terms["heading_reg"]
                  + 0.1 * terms["size_cls"] + terms["size_reg"])
  terms["total"] = terms["vote"] + 0.5 * terms["objectness"] + terms["box"] + 0.1 * terms["sem_cls"]
  terms["pos_ratio"] = npos / out["proposal_mask"].sum()
  terms["neg_ratio"] = (sums["obj_w"] - npos) / out["proposal_mask"].sum()
  terms["objectness_acc"] = sums["acc"] / (sums["obj_w"] + 1e-6)
  return terms


# ---------------------------------------------------------------------------------------------
# Heading bins and box decoding.

def test_angle_to_class_hand_values_and_round_trip():
  per = math.pi / 6  # 12 bins
  cases = [(0.0, 0, 0.0), (per, 1, 0.0), (math.pi, 6, 0.0), (-0.1, 0, -0.1),
           (per / 2 + 0.01, 1, 0.01 - per / 2), (per / 2 - 0.01, 0, per / 2 - 0.01),
           (-math.pi / 2, 9, 0.0), (2 * math.pi + 0.2, 0, 0.2)]
  cls, res = vn.angle_to_class(np.array([c[0] for c in cases]), 12)
  np.testing.assert_array_equal(cls, [c[1] for c in cases])
  np.testing.assert_allclose(res, [c[2] for c in cases], atol=1e-6)
  np.testing.assert_allclose(vn.class_to_angle(np.array([6, 11, 3]), np.array([0.0, 0.1, -0.2]),
                                               12),
                             [math.pi, -per + 0.1, math.pi / 2 - 0.2], atol=1e-6)

  angles = np.random.default_rng(0).uniform(-math.pi, math.pi, 200).astype(np.float32)
  for bins in (1, 4, 12):
    cls, res = vn.angle_to_class(angles, bins)
    ref = np.array([np_angle2class(float(a), bins) for a in angles])
    np.testing.assert_array_equal(cls, ref[:, 0])
    np.testing.assert_allclose(res, ref[:, 1], atol=1e-5)
    back = np.asarray(vn.class_to_angle(cls, res, bins))
    np.testing.assert_allclose(np.angle(np.exp(1j * (back - angles))), 0.0, atol=1e-5)
    assert np.all((back > -math.pi - 1e-5) & (back <= math.pi + 1e-5))


def test_decode_boxes_inverts_the_encoding_of_boxes():
  rng = np.random.default_rng(1)
  classes = rng.integers(0, 3, size=(2, 5))
  sizes = np.array(SPEC.mean_sizes)[classes] * rng.uniform(0.7, 1.3, size=(2, 5, 3))
  boxes = np.concatenate([rng.normal(size=(2, 5, 3)), sizes,
                          rng.uniform(-3.1, 3.1, size=(2, 5, 1))], -1).astype(np.float32)
  hbin, hres = vn.angle_to_class(boxes[..., 6], SPEC.num_heading_bins)
  scls, sres = vn.size_to_class(boxes[..., 3:6], classes, SPEC)
  outputs = {
      "center": boxes[..., :3],
      "heading_scores": 5.0 * jax.nn.one_hot(hbin, 4),
      "heading_residuals": jnp.broadcast_to(hres[..., None], (2, 5, 4)),
      "size_scores": 5.0 * jax.nn.one_hot(scls, 3),
      "size_residuals": jnp.broadcast_to(sres[..., None, :], (2, 5, 3, 3)),
      "objectness_logits": np.stack([np.zeros((2, 5)), np.log(3.0) * np.ones((2, 5))], -1),
      "sem_logits": jax.nn.one_hot(classes, 3),
      "proposal_mask": np.array([[True] * 5, [True] * 4 + [False]]),
  }
  decoded, scores, decoded_classes = vn.decode_boxes(outputs, SPEC)
  np.testing.assert_allclose(decoded, boxes, atol=1e-5)
  np.testing.assert_allclose(scores, [[0.75] * 5, [0.75] * 4 + [0.0]], atol=1e-6)
  np.testing.assert_array_equal(decoded_classes, classes)


# ---------------------------------------------------------------------------------------------
# Vote targets.

def test_vote_targets_match_the_sunrgbd_and_scannet_preparations():
  rng = np.random.default_rng(2)
  boxes = np.zeros((2, 6, 7), np.float32)
  boxes[0, :4] = [[0.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.3], [0.2, 0.1, 0.0, 1.5, 1.5, 1.2, -0.7],
                  [-0.1, 0.0, 0.1, 1.0, 2.0, 1.0, 1.2], [0.0, 0.0, 0.0, 0.8, 0.8, 0.8, 2.5]]
  boxes[1, :3] = [[0.5, 0.5, 0.0, 1.0, 0.5, 0.6, 0.9], [-0.5, 0.0, 0.2, 1.2, 1.2, 1.0, 0.0],
                  [-0.3, 0.2, 0.0, 0.6, 1.4, 0.8, -2.0]]
  boxes[:, 4] = [0.0, 0.0, 0.0, 50.0, 50.0, 50.0, 0.0]  # padding that contains everything
  boxes[:, 5] = np.nan
  box_mask = np.array([[True] * 4 + [False] * 2, [True] * 3 + [False] * 3])
  points = rng.uniform(-1.2, 1.2, size=(2, 400, 3)).astype(np.float32)
  point_mask = np.ones((2, 400), bool)
  point_mask[1, 350:] = False
  points[1, 350:] = np.nan

  offsets, valid = vn.vote_targets(points, point_mask, boxes, box_mask)
  ref_offsets, ref_valid = np_sunrgbd_votes(points, point_mask, boxes, box_mask)
  counts = [sum(np_in_box(p, bx) for bx in boxes[0, :4]) for p in points[0]]
  assert set(counts) == {0, 1, 2, 3, 4}  # points in 0, 1, 2, 3 and 4 boxes
  np.testing.assert_array_equal(valid, ref_valid)
  np.testing.assert_allclose(offsets, ref_offsets, atol=1e-5)

  instance = rng.integers(-1, 6, size=(2, 400)).astype(np.int32)
  offsets, valid = vn.vote_targets(points, point_mask, boxes, box_mask, instance)
  for b in range(2):
    for n in range(400):
      m = instance[b, n]
      expect = bool(point_mask[b, n] and m >= 0 and box_mask[b, m])
      assert valid[b, n] == expect
      want = boxes[b, m, :3] - points[b, n] if expect else np.zeros(3)
      np.testing.assert_allclose(offsets[b, n], np.tile(want, (3, 1)), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Loss terms against the NumPy loops.

def random_outputs(rng, spec, batch=3, proposals=12, seeds=10, num_points=25):
  centres = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 2.0, 1.0]])
  boxes = np.concatenate([centres[None].repeat(batch, 0) + rng.normal(0, 0.1, (batch, 4, 3)),
                          rng.uniform(0.3, 1.5, (batch, 4, 3)),
                          rng.uniform(-math.pi, math.pi, (batch, 4, 1))], -1)
  gt_mask = np.array([[True, True, True, False], [True] * 4, [False] * 4])
  boxes[~gt_mask] = np.nan
  gt_classes = np.where(gt_mask, rng.integers(0, spec.num_classes, (batch, 4)), 99)
  # Cluster centres at chosen distances from a GT centre: positive, ignored and negative.
  which = rng.integers(0, 3, (batch, proposals))
  direction = rng.normal(size=(batch, proposals, 3))
  direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
  radius = rng.choice([0.05, 0.15, 0.45, 1.2], size=(batch, proposals, 1))
  aggregated = centres[which] + direction * radius
  proposal_mask = rng.uniform(size=(batch, proposals)) > 0.15
  nh, ns, c = spec.num_heading_bins, spec.num_size_clusters, spec.num_classes
  seed_xyz = rng.normal(size=(batch, seeds, 3))
  f32 = lambda x: np.asarray(x, np.float32)
  outputs = {
      "seed_xyz": f32(seed_xyz), "seed_inds": rng.integers(0, num_points, (batch, seeds)),
      "seed_mask": rng.uniform(size=(batch, seeds)) > 0.2,
      "vote_xyz": f32(seed_xyz + rng.normal(size=seed_xyz.shape)),
      "aggregated_xyz": f32(aggregated), "proposal_mask": proposal_mask,
      "objectness_logits": f32(rng.normal(size=(batch, proposals, 2))),
      "center": f32(aggregated + rng.normal(0, 0.3, aggregated.shape)),
      "heading_scores": f32(rng.normal(size=(batch, proposals, nh))),
      "heading_residuals_normalized": f32(rng.normal(0, 1.5, (batch, proposals, nh))),
      "size_scores": f32(rng.normal(size=(batch, proposals, ns))),
      "size_residuals_normalized": f32(rng.normal(0, 1.5, (batch, proposals, ns, 3))),
      "sem_logits": f32(rng.normal(size=(batch, proposals, c))),
  }
  targets = {"gt_boxes": f32(boxes), "gt_classes": gt_classes.astype(np.int32),
             "gt_mask": gt_mask,
             "vote_offsets": f32(rng.normal(size=(batch, num_points, 3, 3))),
             "vote_valid": rng.uniform(size=(batch, num_points)) > 0.4}
  return outputs, targets


jit_loss = jax.jit(lambda outputs, targets: vn.loss(outputs, targets, SPEC))


def test_loss_terms_match_a_numpy_implementation():
  rng = np.random.default_rng(3)
  outputs, targets = random_outputs(rng, SPEC)
  total, terms = jit_loss(outputs, targets)
  ref = np_votenet_loss(outputs, targets, SPEC)
  label, mask, _ = vn.assign_proposals(outputs["aggregated_xyz"], outputs["proposal_mask"],
                                       targets["gt_boxes"][..., :3], targets["gt_mask"])
  label, mask = np.asarray(label), np.asarray(mask)
  assert label.sum() >= 5 and (mask & ~label).sum() >= 5 and (~mask).sum() >= 5
  assert not label[2].any() and mask[2].sum() == outputs["proposal_mask"][2].sum()  # no GT
  for name, value in ref.items():
    np.testing.assert_allclose(terms[name], value, rtol=2e-5, atol=1e-6, err_msg=name)
  assert float(total) == pytest.approx(ref["total"], rel=2e-5)

  floats = {k: v for k, v in outputs.items() if v.dtype == np.float32}
  grads = jax.jit(jax.grad(lambda f: vn.loss({**outputs, **f}, targets, SPEC)[0]))(floats)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))  # NaN in padded boxes


def test_loss_of_scenes_without_boxes_is_finite_and_box_terms_are_zero():
  rng = np.random.default_rng(4)
  outputs, targets = random_outputs(rng, SPEC)
  targets = {**targets, "gt_mask": np.zeros_like(targets["gt_mask"]),
             "vote_valid": np.zeros_like(targets["vote_valid"])}
  _, terms = jit_loss(outputs, targets)
  for name in ("vote", "center", "heading_cls", "heading_reg", "size_cls", "size_reg",
               "sem_cls", "pos_ratio"):
    assert float(terms[name]) == 0.0, name
  assert float(terms["objectness"]) > 0 and float(terms["neg_ratio"]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# The network.

# One tiny network, initialised once and compiled for two shapes, serves the padding and the
# learning tests: compiling PointNet++ dominates their time on a 2-core CPU.
MODEL = vn.VoteNet(backbone("pointnet2_tiny"), SPEC, num_seeds=16, num_proposals=8, hidden=16,
                   vote_radius=0.5)
THRESHOLDS = {"near_threshold": 0.4, "far_threshold": 0.7}


def box_points(rng, box, num):
  """`num` points uniformly inside an oriented box."""
  local = rng.uniform(-0.5, 0.5, size=(num, 3)) * box[3:6]
  c, s = np.cos(box[6]), np.sin(box[6])
  return box[:3] + np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1],
                             local[:, 2]], -1)


def two_scenes():
  """Scene 0: 16 points in each of 3 boxes and 16 on the floor. Scene 1: 10 valid points
  (fewer than the 16 seeds), one of its 3 boxes padding."""
  rng = np.random.default_rng(5)
  boxes = np.array([[[0.5, 0.5, 0.4, 0.8, 0.6, 0.8, 0.2], [1.5, 1.4, 0.3, 1.0, 0.6, 0.6, -0.4],
                     [0.6, 1.6, 0.6, 0.5, 0.5, 1.2, 1.0]]] * 2, np.float32)
  floor = np.concatenate([rng.uniform(0, 2, size=(16, 2)), np.zeros((16, 1))], -1)
  points = np.stack([np.concatenate([box_points(rng, b, 16) for b in boxes[0]] + [floor]),
                     rng.uniform(0, 1, size=(64, 3)) * [2.0, 2.0, 1.0]]).astype(np.float32)
  mask = np.ones((2, 64), bool)
  mask[1, 10:] = False
  inside = np.array([[[np_in_box(p, bx) for bx in boxes[b]] for p in points[b]]
                     for b in range(2)])
  return {"points": points, "colours": rng.uniform(size=(2, 64, 3)).astype(np.float32),
          "mask": mask, "boxes": boxes, "gt_mask": np.array([[True] * 3, [True, True, False]]),
          "classes": np.array([[0, 1, 2], [2, 1, 0]], np.int32),
          "instance": np.where(inside.any(-1), np.argmax(inside, -1), -1).astype(np.int32)}


@pytest.fixture(scope="module")
def variables():
  scene = two_scenes()
  return jax.jit(MODEL.init)(jax.random.key(0), scene["points"], scene["colours"], scene["mask"])


@jax.jit
def loss_and_grad(params, batch_stats, scene):
  """(total, (outputs, terms, new batch_stats)), gradient wrt params; BatchNorm in train mode."""
  offsets, valid = vn.vote_targets(scene["points"], scene["mask"], scene["boxes"],
                                   scene["gt_mask"], scene["instance"])
  targets = {"gt_boxes": scene["boxes"], "gt_classes": scene["classes"],
             "gt_mask": scene["gt_mask"], "vote_offsets": offsets, "vote_valid": valid}

  def loss_fn(params):
    (outputs, _), updates = MODEL.apply(
        {"params": params, "batch_stats": batch_stats}, scene["points"], scene["colours"],
        scene["mask"], train=True, mutable=["batch_stats"])
    total, terms = vn.loss(outputs, targets, SPEC, **THRESHOLDS)
    return total, (outputs, terms, updates["batch_stats"])

  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def test_parameter_layout_takes_a_student_backbone():
  model = vn.VoteNet(backbone("pointnet2_tiny"), SPEC)
  points = jax.ShapeDtypeStruct((1, 2048, 3), jnp.float32)
  variables = jax.eval_shape(lambda p: model.init(jax.random.key(0), p), points)
  params = variables["params"]
  assert set(params) == {"backbone", "voting", "proposal"}
  student = jax.eval_shape(lambda p: backbone("pointnet2_tiny").init(jax.random.key(0), p), points)
  assert jax.tree.structure(params["backbone"]) == jax.tree.structure(student["params"])
  kernels = lambda tree: [tree[f"PointwiseDense_{i}"]["kernel"].shape
                          for i in range(len([k for k in tree if k.startswith("Pointwise")]))]
  assert kernels(params["voting"]["SharedMLP_0"]) == [(16, 16), (16, 16)]
  assert params["voting"]["PointwiseDense_0"]["kernel"].shape == (16, 19)
  assert kernels(params["proposal"]["aggregation"]) == [(19, 128), (128, 128), (128, 128)]
  assert kernels(params["proposal"]["head_mlp"]) == [(128, 128), (128, 128)]
  assert params["proposal"]["head"]["kernel"].shape == (128, 2 + 3 + 2 * 4 + 4 * 3 + 3)
  outputs, _ = jax.eval_shape(lambda v, p: model.apply(v, p), variables, points)
  assert outputs["seed_xyz"].shape == (1, 1024, 3) and outputs["center"].shape == (1, 256, 3)
  assert outputs["size_residuals"].shape == (1, 256, 3, 3)


def test_padding_changes_no_valid_output_loss_or_gradient(variables):
  scene = two_scenes()
  pad_points = np.concatenate([scene["points"], np.full((2, 20, 3), np.nan, np.float32)], 1)
  pad_points[:, 64:74] = 1.0  # finite garbage inside the room too
  padded = {
      "points": pad_points,
      "colours": np.concatenate([scene["colours"], np.full((2, 20, 3), 1e6, np.float32)], 1),
      "mask": np.concatenate([scene["mask"], np.zeros((2, 20), bool)], 1),
      "instance": np.concatenate([scene["instance"], np.zeros((2, 20), np.int32)], 1),
      "boxes": np.concatenate([scene["boxes"], np.full((2, 2, 7), np.nan, np.float32)], 1),
      "gt_mask": np.concatenate([scene["gt_mask"], np.zeros((2, 2), bool)], 1),
      "classes": np.concatenate([scene["classes"], np.full((2, 2), 77, np.int32)], 1),
  }
  (total, (out, terms, stats)), grads = loss_and_grad(variables["params"],
                                                      variables["batch_stats"], scene)
  (_, (pout, pterms, pstats)), pgrads = loss_and_grad(variables["params"],
                                                      variables["batch_stats"], padded)
  assert np.isfinite(float(total)) and float(terms["pos_ratio"]) > 0, terms
  seeds, proposals = np.asarray(out["seed_mask"]), np.asarray(out["proposal_mask"])
  assert seeds[0].all() and not seeds[1].all() and proposals.all()
  np.testing.assert_array_equal(out["seed_inds"], pout["seed_inds"])
  np.testing.assert_array_equal(out["proposal_mask"], pout["proposal_mask"])
  for name, value in out.items():
    valid = seeds if value.shape[1] == 16 else proposals
    np.testing.assert_allclose(np.asarray(pout[name])[valid], np.asarray(value)[valid],
                               rtol=1e-4, atol=1e-5, err_msg=name)
  for name in terms:
    np.testing.assert_allclose(pterms[name], terms[name], rtol=1e-4, atol=1e-6, err_msg=name)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(pstats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # BN statistics ignore padding
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(pgrads)):
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * np.abs(a).max() + 1e-8)


def test_adam_steps_on_one_scene_reduce_the_loss(variables):
  scene = two_scenes()
  tx = optax.adam(1e-2)
  update = jax.jit(lambda grads, opt_state, params: tx.update(grads, opt_state, params))
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  history = []
  for _ in range(40):
    (value, (_, _, batch_stats)), grads = loss_and_grad(params, batch_stats, scene)
    updates, opt_state = update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    history.append(float(value))
  # Beyond the first step's drop (the votes' scale), the loss keeps falling.
  last = np.mean(history[-5:])
  assert np.isfinite(history).all() and last < 0.75 * np.mean(history[1:6]), history
