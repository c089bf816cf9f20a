"""VoteNet (Qi et al., ICCV 2019, "Deep Hough Voting for 3D Object Detection in Point Clouds")
on any student backbone, with its targets, losses and box decoding.

The network (Sec. 3 and Appendix A.1 of the paper; facebookresearch/votenet):

    backbone      per-point features of the student (`p2p_jax.models.student` protocol)
    seeds         farthest point sampling of `num_seeds` valid points and their features
    voting        per-seed MLP D-D-(3+D): offset and feature residual; vote features are
                  L2-normalised (Sec. 3.1, "Hough voting with deep networks")
    aggregation   FPS of `num_proposals` votes, ball query (r = 0.3, 16 votes), relative xyz
                  divided by the radius, shared MLP 128-128-128, max-pool (Sec. 3.2)
    proposal      MLP 128-128-(2 + 3 + 2 NH + 4 NS + num_classes): objectness, centre
                  residual, heading bin scores and residuals, size cluster scores and
                  residuals, semantic scores (Sec. 3.2, "Proposal and classification")

Boxes are 7 floats (cx, cy, cz, dx, dy, dz, heading): centre, full sizes, and the rotation
about +z in radians. Ground truth is padded: `gt_boxes [B, M, 7]`, `gt_classes [B, M]`,
`gt_mask [B, M]`. Padding never influences a valid output: padded points are never seeds,
invalid seeds never vote into a proposal, BatchNorm statistics use valid rows only, and
padded boxes are never assigned, matched or counted by the losses.

Deviations from the reference code, each because its padding would otherwise leak in:
padded GT boxes (zeros there) are excluded from every nearest-centre search and from the
Chamfer distance; `pos_ratio` and `neg_ratio` divide by the valid proposals instead of all
of them. The total loss is not multiplied by 10 as in `loss_helper.get_loss` (a constant
factor that Adam cancels). Per-class NMS and mAP live elsewhere.
"""

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from p2p_jax import pointops
from p2p_jax.losses import l2_normalize
from p2p_jax.models.layers import PointwiseDense
from p2p_jax.models.pointnet2 import SharedMLP


@dataclasses.dataclass(frozen=True)
class DetectionSpec:
  """What the proposal head predicts (VoteNet's dataset config).

  One size cluster per class, as VoteNet on ScanNet and SUN RGB-D: a box's size cluster is
  its class, and `mean_sizes[c]` is the template size of class c.

  Attributes:
    num_classes: semantic classes, 0..num_classes-1.
    mean_sizes: [num_classes][3] mean full sizes (dx, dy, dz) per class, in metres.
    num_heading_bins: heading bins over 2 pi (12 on SUN RGB-D; 1 for axis-aligned ScanNet).
  """
  num_classes: int
  mean_sizes: tuple[tuple[float, float, float], ...]
  num_heading_bins: int = 12

  def __post_init__(self):
    if len(self.mean_sizes) != self.num_classes or any(len(s) != 3 for s in self.mean_sizes):
      raise ValueError(f"mean_sizes must be [{self.num_classes}][3] (one size cluster per "
                       f"class), got {self.mean_sizes}")
    if min(min(s) for s in self.mean_sizes) <= 0:
      raise ValueError(f"mean_sizes must be positive, got {self.mean_sizes}")
    if self.num_heading_bins < 1:
      raise ValueError(f"num_heading_bins must be >= 1, got {self.num_heading_bins}")

  @property
  def num_size_clusters(self) -> int:
    return self.num_classes

  @property
  def num_outputs(self) -> int:
    """Channels of the proposal head's last layer: 2 + 3 + 2 NH + 4 NS + num_classes."""
    return 5 + 2 * self.num_heading_bins + 4 * self.num_size_clusters + self.num_classes


def angle_to_class(angle: jax.Array, num_bins: int) -> tuple[jax.Array, jax.Array]:
  """Heading bin and residual (VoteNet's `angle2class`).

  Bins are centred at k 2pi / num_bins; the angle is shifted by half a bin so that each bin
  covers [centre - half, centre + half).

  Args:
    angle: [...] radians, any range.
    num_bins: NH.

  Returns:
    (bin [...] int32 in [0, NH), residual [...] in [-pi/NH, pi/NH)) with
    bin * 2pi/NH + residual = angle (mod 2 pi).
  """
  angle = jnp.asarray(angle, jnp.float32)
  per_bin = 2 * math.pi / num_bins
  shifted = jnp.mod(jnp.mod(angle, 2 * math.pi) + per_bin / 2, 2 * math.pi)
  cls = jnp.clip(jnp.floor(shifted / per_bin), 0, num_bins - 1)
  return cls.astype(jnp.int32), shifted - (cls * per_bin + per_bin / 2)


def class_to_angle(cls: jax.Array, residual: jax.Array, num_bins: int) -> jax.Array:
  """Inverse of `angle_to_class` (VoteNet's `class2angle`, label format): angle in (-pi, pi]
  up to rounding, i.e. bin * 2pi/NH + residual, minus 2pi above pi."""
  angle = jnp.asarray(cls, jnp.float32) * (2 * math.pi / num_bins) + residual
  return jnp.where(angle > math.pi, angle - 2 * math.pi, angle)


def size_to_class(size: jax.Array, cls: jax.Array,
                  spec: DetectionSpec) -> tuple[jax.Array, jax.Array]:
  """Size cluster and residual (VoteNet's ScanNet `size2class`): the cluster is the class.

  Args:
    size: [..., 3] full sizes.
    cls: [...] int classes.
    spec: the detection spec.

  Returns:
    (cluster [...] int32, residual [..., 3] = size - mean_sizes[cluster]).
  """
  cls = jnp.asarray(cls, jnp.int32)
  return cls, size - jnp.asarray(spec.mean_sizes, jnp.float32)[cls]


def points_in_boxes(points: jax.Array, boxes: jax.Array) -> jax.Array:
  """Whether each point lies in each oriented box (boundary included).

  Args:
    points: [B, N, 3].
    boxes: [B, M, 7] (centre, full sizes, heading about +z).

  Returns:
    [B, N, M] bool.
  """
  rel = points[:, :, None, :] - boxes[:, None, :, :3]  # [B, N, M, 3]
  cos, sin = jnp.cos(boxes[..., 6])[:, None], jnp.sin(boxes[..., 6])[:, None]
  # Rotate by -heading into the box frame.
  local_x = cos * rel[..., 0] + sin * rel[..., 1]
  local_y = -sin * rel[..., 0] + cos * rel[..., 1]
  local = jnp.stack([local_x, local_y, rel[..., 2]], axis=-1)
  return jnp.all(jnp.abs(local) <= boxes[:, None, :, 3:6] / 2, axis=-1)


def vote_targets(points: jax.Array, point_mask: jax.Array, gt_boxes: jax.Array,
                 gt_mask: jax.Array, point_instance_box: jax.Array | None = None,
                 max_votes: int = 3) -> tuple[jax.Array, jax.Array]:
  """Ground-truth votes: offsets from points to the centres of the objects they belong to.

  ScanNet protocol (`point_instance_box` given): a point votes for the box of its instance;
  the single offset (centre - point) fills all `max_votes` slots. SUN RGB-D protocol
  (`sunrgbd_data.extract_sunrgbd_data`): a point votes for every valid oriented box that
  contains it, in box order, as the reference preparation fills its slots: the first box
  fills every slot, the i-th box slot i-1, and every box after the last slot overwrites it
  (with 3 slots and k >= 3 boxes: boxes 1, 2 and k).

  Args:
    points: [B, N, 3].
    point_mask: [B, N] bool.
    gt_boxes: [B, M, 7].
    gt_mask: [B, M] bool.
    point_instance_box: optional [B, N] int, index into the M boxes or -1.
    max_votes: vote slots per point (VoteNet's GT_VOTE_FACTOR, 3).

  Returns:
    vote_offsets: [B, N, max_votes, 3], zero where invalid.
    vote_valid: [B, N] bool, True for real points on a valid box.
  """
  points = jnp.asarray(points, jnp.float32)
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  point_mask = jnp.asarray(point_mask, bool)
  gt_mask = jnp.asarray(gt_mask, bool)
  if points.ndim != 3 or points.shape[-1] != 3 or point_mask.shape != points.shape[:2]:
    raise ValueError(f"points [B, N, 3] and point_mask [B, N] expected, got {points.shape} "
                     f"and {point_mask.shape}")
  if (gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 7 or gt_mask.shape != gt_boxes.shape[:2]
      or gt_boxes.shape[0] != points.shape[0]):
    raise ValueError(f"gt_boxes [B, M, 7] and gt_mask [B, M] expected, got {gt_boxes.shape} "
                     f"and {gt_mask.shape}")
  # Zero the padding so that garbage (even NaN) cannot reach values or gradients.
  points = jnp.where(point_mask[..., None], points, 0.0)
  gt_boxes = jnp.where(gt_mask[..., None], gt_boxes, 0.0)
  num_boxes = gt_boxes.shape[1]
  centres = gt_boxes[..., :3]
  if point_instance_box is not None:
    box = jnp.asarray(point_instance_box, jnp.int32)
    if box.shape != point_mask.shape:
      raise ValueError(f"point_instance_box must be [B, N], got {box.shape}")
    inside = (box >= 0) & (box < num_boxes)
    box = jnp.where(inside, box, 0)
    valid = point_mask & inside & jnp.take_along_axis(gt_mask, box, axis=1)
    offset = pointops.gather_points(centres, box) - points
    offsets = jnp.repeat(offset[:, :, None], max_votes, axis=2)
  else:
    inside = points_in_boxes(points, gt_boxes) & gt_mask[:, None, :]  # [B, N, M]
    count = jnp.cumsum(inside, axis=-1)
    total = count[..., -1]
    valid = point_mask & (total > 0)
    first = jnp.argmax(inside, axis=-1)
    slots = []
    for slot in range(max_votes):
      if slot == 0:
        chosen = first
      else:
        # The slot's box: the (slot+1)-th containing box, or for the last slot the last one.
        nth = count == (slot + 1 if slot < max_votes - 1 else total[..., None])
        chosen = jnp.where(total > slot, jnp.argmax(nth & inside, axis=-1), first)
      slots.append(pointops.gather_points(centres, chosen) - points)
    offsets = jnp.stack(slots, axis=2)
  return jnp.where(valid[..., None, None], offsets, 0.0), valid


class VotingModule(nn.Module):
  """Seeds vote for object centres (Sec. 3.1): a shared MLP D-D-(3+D) with BatchNorm.

  Attributes:
    bn_axis_name: pmap/shard_map axis for cross-device BatchNorm statistics, or None.
  """
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, seed_xyz, seed_features, seed_mask, *, train: bool):
    """Args: seed_xyz [B, S, 3], seed_features [B, S, D], seed_mask [B, S].

    Returns:
      (vote_xyz [B, S, 3] = seed_xyz + offset, vote_features [B, S, D] =
       L2-normalised seed_features + residual).
    """
    width = seed_features.shape[-1]
    x = SharedMLP((width, width), self.bn_axis_name)(seed_features, seed_mask, train=train)
    x = PointwiseDense(3 + width)(x)
    vote_xyz = seed_xyz + x[..., :3]
    return vote_xyz, l2_normalize(seed_features + x[..., 3:])


class ProposalModule(nn.Module):
  """Vote aggregation and proposal (Sec. 3.2): FPS on the votes, a ball of votes around each
  sample pooled by a PointNet (VoteNet's PointnetSAModuleVotes with use_xyz and
  normalize_xyz), then a shared MLP to the box parameters.

  Attributes:
    spec: what the head predicts.
    num_proposals: vote clusters (K).
    radius: ball radius around each cluster centre, metres.
    nsample: votes per ball.
    hidden: width of the aggregation and proposal MLPs.
    bn_axis_name: see `VotingModule`.
  """
  spec: DetectionSpec
  num_proposals: int
  radius: float
  nsample: int
  hidden: int
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, vote_xyz, vote_features, vote_mask, *, train: bool):
    """Args: vote_xyz [B, S, 3], vote_features [B, S, D], vote_mask [B, S].

    Returns:
      (aggregated_xyz [B, K, 3], proposal_mask [B, K], raw head output [B, K, num_outputs],
       aggregated features [B, K, hidden]).
    """
    idx, sample_mask = pointops.farthest_point_sample(vote_xyz, self.num_proposals,
                                                      mask=vote_mask)
    centres = pointops.gather_points(vote_xyz, idx)
    nbr, nbr_mask = pointops.ball_query(lax.stop_gradient(vote_xyz), lax.stop_gradient(centres),
                                        self.radius, self.nsample, mask=vote_mask)
    proposal_mask = sample_mask & nbr_mask[..., 0]  # an empty ball (never for a valid vote)
    grouped = pointops.group(vote_xyz, centres, nbr)
    grouped = jnp.concatenate([grouped / self.radius, pointops.gather_points(vote_features, nbr)],
                              axis=-1)
    valid = nbr_mask & proposal_mask[..., None]
    x = SharedMLP((self.hidden,) * 3, self.bn_axis_name, name="aggregation")(
        grouped, valid, train=train)
    pooled = pointops.masked_max(x, valid[..., None], axis=2)
    x = SharedMLP((self.hidden,) * 2, self.bn_axis_name, name="head_mlp")(
        pooled, proposal_mask, train=train)
    return centres, proposal_mask, PointwiseDense(self.spec.num_outputs, name="head")(x), pooled


class VoteNet(nn.Module):
  """VoteNet on a student backbone; params are {"backbone", "voting", "proposal"}, so a
  pretrained student's backbone params load into params["backbone"].

  Attributes:
    backbone: a student backbone (`p2p_jax.models.student` protocol).
    spec: what the head predicts.
    num_seeds: seeds sampled by FPS from the valid points (1024 in VoteNet).
    num_proposals: vote clusters (256 in VoteNet).
    vote_radius: ball radius of the vote aggregation, metres.
    vote_nsample: votes per ball.
    hidden: width of the aggregation and proposal MLPs (128 in VoteNet).
    bn_axis_name: BatchNorm axis of the heads (the backbone carries its own).
  """
  backbone: nn.Module
  spec: DetectionSpec
  num_seeds: int = 1024
  num_proposals: int = 256
  vote_radius: float = 0.3
  vote_nsample: int = 16
  hidden: int = 128
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, points: jax.Array, features: jax.Array | None = None,
               point_mask: jax.Array | None = None, *, train: bool = False):
    """Detects boxes in point clouds.

    Args:
      points: [B, N, 3] coordinates (metres).
      features: optional [B, N, C] per-point inputs (colours).
      point_mask: optional [B, N] bool, True for real points.
      train: BatchNorm in training mode (batch statistics of the valid rows).

    Returns:
      (outputs, aux). outputs, with S = num_seeds, K = num_proposals, NH heading bins, NS
      size clusters:
        "seed_xyz" [B, S, 3], "seed_inds" [B, S] int32, "seed_mask" [B, S] bool,
        "vote_xyz" [B, S, 3], "aggregated_xyz" [B, K, 3], "proposal_mask" [B, K] bool,
        "objectness_logits" [B, K, 2] (index 1 = object), "center" [B, K, 3],
        "heading_scores" [B, K, NH], "heading_residuals_normalized" [B, K, NH],
        "heading_residuals" [B, K, NH] (x pi/NH), "size_scores" [B, K, NS],
        "size_residuals_normalized" [B, K, NS, 3], "size_residuals" [B, K, NS, 3]
        (x mean size), "sem_logits" [B, K, num_classes].
      aux: the backbone's aux, "features" [B, N, D], "seed_features" [B, S, D],
        "vote_features" [B, S, D] and "proposal_features" [B, K, hidden].
    """
    points = jnp.asarray(points, jnp.float32)
    if points.ndim != 3 or points.shape[-1] != 3:
      raise ValueError(f"points must be [B, N, 3], got {points.shape}")
    if point_mask is None:
      point_mask = jnp.ones(points.shape[:2], bool)
    point_mask = jnp.asarray(point_mask, bool)
    points = jnp.where(point_mask[..., None], points, 0.0)
    feats, aux = self.backbone(points, features, point_mask, train=train)

    seed_inds, seed_mask = pointops.farthest_point_sample(points, self.num_seeds, mask=point_mask)
    seed_xyz = pointops.gather_points(points, seed_inds)
    seed_features = pointops.gather_points(feats, seed_inds)
    vote_xyz, vote_features = VotingModule(self.bn_axis_name, name="voting")(
        seed_xyz, seed_features, seed_mask, train=train)
    aggregated_xyz, proposal_mask, net, pooled = ProposalModule(
        self.spec, self.num_proposals, self.vote_radius, self.vote_nsample, self.hidden,
        self.bn_axis_name, name="proposal")(vote_xyz, vote_features, seed_mask, train=train)

    # VoteNet's decode_scores: the channels in this order.
    nh, ns = self.spec.num_heading_bins, self.spec.num_size_clusters
    splits = [2, 5, 5 + nh, 5 + 2 * nh, 5 + 2 * nh + ns, 5 + 2 * nh + 4 * ns]
    objectness, centre, heading_scores, heading_res, size_scores, size_res, sem = jnp.split(
        net, splits, axis=-1)
    size_res = size_res.reshape(size_res.shape[:-1] + (ns, 3))
    outputs = {
        "seed_xyz": seed_xyz, "seed_inds": seed_inds, "seed_mask": seed_mask,
        "vote_xyz": vote_xyz, "aggregated_xyz": aggregated_xyz, "proposal_mask": proposal_mask,
        "objectness_logits": objectness, "center": aggregated_xyz + centre,
        "heading_scores": heading_scores, "heading_residuals_normalized": heading_res,
        "heading_residuals": heading_res * (math.pi / nh),
        "size_scores": size_scores, "size_residuals_normalized": size_res,
        "size_residuals": size_res * jnp.asarray(self.spec.mean_sizes, jnp.float32),
        "sem_logits": sem,
    }
    aux = {**aux, "features": feats, "seed_features": seed_features,
           "vote_features": vote_features, "proposal_features": pooled}
    return outputs, aux


def decode_boxes(outputs: dict, spec: DetectionSpec) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Boxes of every proposal (VoteNet's `parse_predictions` before NMS).

  The heading bin and size cluster with the highest score, each with its residual; the
  class with the highest semantic score.

  Args:
    outputs: `VoteNet` outputs.
    spec: the detection spec.

  Returns:
    boxes: [B, K, 7] (centre, full sizes, heading in (-pi, pi]).
    scores: [B, K] objectness probability, 0 for invalid proposals.
    classes: [B, K] int32.
  """
  heading_bin = jnp.argmax(outputs["heading_scores"], axis=-1)
  heading_res = jnp.take_along_axis(outputs["heading_residuals"], heading_bin[..., None],
                                    axis=-1)[..., 0]
  heading = class_to_angle(heading_bin, heading_res, spec.num_heading_bins)
  size_cls = jnp.argmax(outputs["size_scores"], axis=-1)
  size_res = jnp.take_along_axis(outputs["size_residuals"], size_cls[..., None, None],
                                 axis=-2)[..., 0, :]
  size = jnp.asarray(spec.mean_sizes, jnp.float32)[size_cls] + size_res
  boxes = jnp.concatenate([outputs["center"], size, heading[..., None]], axis=-1)
  scores = jax.nn.softmax(outputs["objectness_logits"], axis=-1)[..., 1]
  scores = jnp.where(outputs["proposal_mask"], scores, 0.0)
  return boxes, scores, jnp.argmax(outputs["sem_logits"], axis=-1).astype(jnp.int32)


class LossWeights(NamedTuple):
  """Weights of VoteNet's loss terms (`loss_helper.get_loss`).

  total = vote * L_vote + objectness * L_obj + box * L_box + sem_cls * L_sem, and
  L_box = center * L_center + heading_cls * L_hcls + heading_reg * L_hreg
          + size_cls * L_scls + size_reg * L_sreg.
  """
  vote: float = 1.0
  objectness: float = 0.5
  box: float = 1.0
  sem_cls: float = 0.1
  center: float = 1.0
  heading_cls: float = 0.1
  heading_reg: float = 1.0
  size_cls: float = 0.1
  size_reg: float = 1.0


def assign_proposals(aggregated_xyz: jax.Array, proposal_mask: jax.Array, gt_centres: jax.Array,
                     gt_mask: jax.Array, *, near_threshold: float = 0.3,
                     far_threshold: float = 0.6) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Objectness labels and object assignment (VoteNet's `compute_objectness_loss`).

  A proposal is positive if its vote cluster centre lies within `near_threshold` of a valid
  GT centre, negative beyond `far_threshold` (or without any valid GT), ignored in between.

  Args:
    aggregated_xyz: [B, K, 3] vote cluster centres.
    proposal_mask: [B, K] bool.
    gt_centres: [B, M, 3].
    gt_mask: [B, M] bool.
    near_threshold: metres.
    far_threshold: metres.

  Returns:
    label: [B, K] bool, positive proposals.
    mask: [B, K] bool, positives and negatives (the objectness loss's rows).
    assignment: [B, K] int32, the nearest valid GT box.
  """
  diff = lax.stop_gradient(aggregated_xyz)[:, :, None, :] - gt_centres[:, None, :, :]
  sq = jnp.where(gt_mask[:, None, :], jnp.sum(diff * diff, axis=-1), jnp.inf)
  dist = jnp.sqrt(jnp.min(sq, axis=-1) + 1e-6)
  label = (dist < near_threshold) & proposal_mask
  mask = ((dist < near_threshold) | (dist > far_threshold)) & proposal_mask
  return label, mask, jnp.argmin(sq, axis=-1).astype(jnp.int32)


def _huber(x: jax.Array, delta: float = 1.0) -> jax.Array:
  """VoteNet's huber_loss: 0.5 x^2 for |x| <= delta, else 0.5 delta^2 + delta (|x| - delta)."""
  quadratic = jnp.minimum(jnp.abs(x), delta)
  return 0.5 * quadratic * quadratic + delta * (jnp.abs(x) - quadratic)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]


def _mean(x: jax.Array, weight: jax.Array) -> jax.Array:
  """sum(x w) / (sum(w) + 1e-6), as every average of the reference loss."""
  weight = weight.astype(jnp.float32)
  return jnp.sum(jnp.where(weight > 0, x, 0.0) * weight) / (jnp.sum(weight) + 1e-6)


def loss(outputs: dict, targets: dict, spec: DetectionSpec, *, near_threshold: float = 0.3,
         far_threshold: float = 0.6, objectness_weights: tuple[float, float] = (0.2, 0.8),
         weights: LossWeights = LossWeights()) -> tuple[jax.Array, dict]:
  """VoteNet's training loss (Sec. 3.2, Appendix A.1; `loss_helper.get_loss`, ScanNet).

  - vote: per valid seed, the L1 distance (summed over xyz) from its vote to the nearest of
    its GT votes, averaged over seeds on objects (Eq. 1).
  - objectness: cross-entropy with class weights `objectness_weights` (negative, positive),
    averaged over positive and negative proposals (see `assign_proposals`).
  - center: Chamfer distance in squared Euclidean distance between predicted centres and
    valid GT centres: each positive proposal's nearest GT + each GT's nearest valid proposal.
  - heading_cls / size_cls / sem_cls: cross-entropy against the assigned GT box's heading
    bin, size cluster and class, averaged over positives.
  - heading_reg: Huber (delta 1) on the heading residual divided by pi/NH, at the GT bin.
  - size_reg: Huber (delta 1) on the size residual divided by the mean size, at the GT
    cluster, averaged over xyz.
  Every average is sum / (count + 1e-6) over the whole batch, so empty scenes give zeros.

  Args:
    outputs: `VoteNet` outputs.
    targets: "gt_boxes" [B, M, 7], "gt_classes" [B, M] int, "gt_mask" [B, M] bool,
      "vote_offsets" [B, N, V, 3] and "vote_valid" [B, N] bool (see `vote_targets`).
    spec: the detection spec.
    near_threshold: positive below this distance to a GT centre (metres).
    far_threshold: negative above it.
    objectness_weights: cross-entropy weights of the negative and positive class.
    weights: the terms' weights.

  Returns:
    (total loss, terms): terms holds every term above, "box", "total", "pos_ratio" and
    "neg_ratio" (fractions of the valid proposals) and "objectness_acc" (over labelled ones).
  """
  gt_mask = jnp.asarray(targets["gt_mask"], bool)
  gt_boxes = jnp.asarray(targets["gt_boxes"], jnp.float32)
  if gt_boxes.shape != gt_mask.shape + (7,):
    raise ValueError(f"gt_boxes {gt_boxes.shape} must be [B, M, 7] with gt_mask [B, M] "
                     f"{gt_mask.shape}")
  # Garbage in the padding (even NaN) must reach neither values nor gradients.
  gt_boxes = jnp.where(gt_mask[..., None], gt_boxes, 0.0)
  gt_classes = jnp.where(gt_mask, jnp.asarray(targets["gt_classes"], jnp.int32), 0)
  gt_centres = gt_boxes[..., :3]
  proposal_mask = outputs["proposal_mask"]

  # Vote loss: min over the GT votes of the L1 distance.
  seed_inds, seed_mask = outputs["seed_inds"], outputs["seed_mask"]
  seed_valid = pointops.gather_points(jnp.asarray(targets["vote_valid"], bool), seed_inds)
  seed_valid = seed_valid & seed_mask
  gt_offsets = pointops.gather_points(jnp.asarray(targets["vote_offsets"], jnp.float32),
                                      seed_inds)
  gt_votes = outputs["seed_xyz"][:, :, None] + jnp.where(seed_valid[..., None, None],
                                                         gt_offsets, 0.0)
  vote_dist = jnp.min(jnp.sum(jnp.abs(outputs["vote_xyz"][:, :, None] - gt_votes), -1), -1)
  vote_loss = _mean(vote_dist, seed_valid)

  # Objectness.
  label, obj_mask, assignment = assign_proposals(
      outputs["aggregated_xyz"], proposal_mask, gt_centres, gt_mask,
      near_threshold=near_threshold, far_threshold=far_threshold)
  class_weight = jnp.where(label, objectness_weights[1], objectness_weights[0])
  objectness_loss = _mean(
      class_weight * _cross_entropy(outputs["objectness_logits"], label.astype(jnp.int32)),
      obj_mask)

  # Centre: Chamfer distance (squared Euclidean, nn_distance's default).
  diff = outputs["center"][:, :, None, :] - gt_centres[:, None, :, :]
  sq = jnp.sum(diff * diff, axis=-1)  # [B, K, M]
  pair = proposal_mask[:, :, None] & gt_mask[:, None, :]
  big = jnp.finfo(jnp.float32).max
  dist1 = jnp.min(jnp.where(pair, sq, big), axis=2)
  dist2 = jnp.min(jnp.where(pair, sq, big), axis=1)
  center_loss = _mean(dist1, label) + _mean(dist2, gt_mask & jnp.any(pair, axis=1))

  # Heading, size and semantic class of the assigned GT box.
  assigned = lambda x: jnp.take_along_axis(x, assignment, axis=1)
  nh = spec.num_heading_bins
  heading_bin, heading_res = angle_to_class(gt_boxes[..., 6], nh)
  heading_bin, heading_res = assigned(heading_bin), assigned(heading_res)
  heading_cls_loss = _mean(_cross_entropy(outputs["heading_scores"], heading_bin), label)
  pred_heading = jnp.take_along_axis(outputs["heading_residuals_normalized"],
                                     heading_bin[..., None], axis=-1)[..., 0]
  heading_reg_loss = _mean(_huber(pred_heading - heading_res / (math.pi / nh)), label)

  size_cls, size_res = size_to_class(gt_boxes[..., 3:6], gt_classes, spec)
  size_cls = assigned(size_cls)
  size_res = jnp.take_along_axis(size_res, assignment[..., None], axis=1)
  size_cls_loss = _mean(_cross_entropy(outputs["size_scores"], size_cls), label)
  pred_size = jnp.take_along_axis(outputs["size_residuals_normalized"],
                                  size_cls[..., None, None], axis=2)[..., 0, :]
  mean_size = jnp.asarray(spec.mean_sizes, jnp.float32)[size_cls]
  size_reg_loss = _mean(jnp.mean(_huber(pred_size - size_res / mean_size), -1), label)

  sem_cls_loss = _mean(_cross_entropy(outputs["sem_logits"], assigned(gt_classes)), label)

  box_loss = (weights.center * center_loss + weights.heading_cls * heading_cls_loss
              + weights.heading_reg * heading_reg_loss + weights.size_cls * size_cls_loss
              + weights.size_reg * size_reg_loss)
  total = (weights.vote * vote_loss + weights.objectness * objectness_loss
           + weights.box * box_loss + weights.sem_cls * sem_cls_loss)
  num_proposals = jnp.maximum(jnp.sum(proposal_mask), 1).astype(jnp.float32)
  pos_ratio = jnp.sum(label) / num_proposals
  correct = jnp.argmax(outputs["objectness_logits"], axis=-1) == label.astype(jnp.int32)
  terms = {
      "vote": vote_loss, "objectness": objectness_loss, "center": center_loss,
      "heading_cls": heading_cls_loss, "heading_reg": heading_reg_loss,
      "size_cls": size_cls_loss, "size_reg": size_reg_loss, "sem_cls": sem_cls_loss,
      "box": box_loss, "total": total, "pos_ratio": pos_ratio,
      "neg_ratio": jnp.sum(obj_mask) / num_proposals - pos_ratio,
      "objectness_acc": _mean(correct.astype(jnp.float32), obj_mask),
  }
  return total, terms
