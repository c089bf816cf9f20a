"""Pretrained students from Orbax checkpoints: `load_student` and `load_student_backbone`."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from p2p_jax import checkpoints
from p2p_jax.models import pointnet2, sparse_unet, student
from p2p_jax.tasks import segmentation
from p2p_jax.train import parallel


def save_student(workdir, variables, step=7):
  """Writes a "student" item as the pretraining trainer does (plus its other items)."""
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    manager.save(step, args=ocp.args.Composite(
        student=ocp.args.StandardSave(variables), data=ocp.args.JsonSave({"next_batch": step})))
    manager.wait_until_finished()


def pretrained_student(seed=5):
  """Variables of the pretraining student: a tiny PointNet++ with a projection head."""
  model = student.PointModel(pointnet2.PointNet2Tiny(bn_axis_name=parallel.AXIS),
                             student.ProjectionHead(16))
  variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 64, 3)),
                                  jnp.zeros((1, 64, 3)), jnp.ones((1, 64), bool))
  # Non-trivial statistics, so a forgotten batch_stats copy would show.
  return jax.tree.map(lambda x: x + jax.random.uniform(jax.random.key(seed), x.shape),
                      dict(variables))


def test_loading_a_pretraining_checkpoint_fills_the_backbone_and_keeps_a_fresh_head(tmp_path):
  saved = pretrained_student()
  save_student(str(tmp_path), saved)
  model = segmentation.make_model("pointnet2_tiny", "finetune", head_hidden=8)
  fresh = segmentation.init_variables(model, jax.random.key(0), 128)
  for path in (str(tmp_path), str(tmp_path / "checkpoints"), str(tmp_path / "checkpoints" / "7")):
    loaded, step = checkpoints.load_student_backbone(path, model, fresh)
    assert step == 7
    for collection in ("params", "batch_stats"):
      for a, b in zip(jax.tree.leaves(loaded[collection]["backbone"]),
                      jax.tree.leaves(saved[collection]["backbone"]), strict=True):
        np.testing.assert_array_equal(a, b)
      for a, b in zip(jax.tree.leaves(loaded[collection]["head"]),
                      jax.tree.leaves(fresh[collection]["head"]), strict=True):
        np.testing.assert_array_equal(a, b)
  with pytest.raises(FileNotFoundError, match="no pretraining checkpoint"):
    checkpoints.load_student_backbone(str(tmp_path / "nowhere"), model, fresh)


def test_a_mismatched_checkpoint_names_every_problem(tmp_path):
  flat = traverse_util.flatten_dict(pretrained_student())
  del flat["params", "backbone", "sa2", "SharedMLP_0", "PointwiseDense_0", "kernel"]
  flat["params", "backbone", "fp1", "SharedMLP_0", "PointwiseDense_0", "kernel"] = jnp.zeros(
      (3, 5))
  flat["batch_stats", "backbone", "sa9", "mean"] = jnp.zeros(4)
  save_student(str(tmp_path), traverse_util.unflatten_dict(flat))
  model = segmentation.make_model("pointnet2_tiny", "linear_probe")
  fresh = segmentation.init_variables(model, jax.random.key(0), 128)
  with pytest.raises(ValueError) as error:
    checkpoints.load_student_backbone(str(tmp_path), model, fresh)
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "missing: params/backbone/sa2/SharedMLP_0/PointwiseDense_0/kernel (expected shape " \
         "(35, 32))" in message
  assert ("shape mismatch: params/backbone/fp1/SharedMLP_0/PointwiseDense_0/kernel expected "
          "(64, 32), found (3, 5)") in message
  assert "unexpected: batch_stats/backbone/sa9/mean (found shape (4,))" in message



def test_an_sr_unet_checkpoint_loads_like_a_pointnet_one(tmp_path):
  """SR-UNet: the pretrained backbone (params and statistics) in, the head fresh; a PointNet++
  checkpoint for an SR-UNet model names what is missing."""
  pretrain = student.PointModel(sparse_unet.SparseUNetTiny(bn_axis_name=parallel.AXIS),
                                student.ProjectionHead(16))
  saved = jax.jit(pretrain.init)(jax.random.key(3), jnp.zeros((1, 64, 3)),
                                 jnp.zeros((1, 64, 3)), jnp.ones((1, 64), bool))
  saved = jax.tree.map(lambda x: x + 0.5, dict(saved))
  save_student(str(tmp_path / "sr"), saved)
  model = segmentation.make_model("sr_unet_tiny", "finetune", num_classes=13, head_hidden=8)
  fresh = segmentation.init_variables(model, jax.random.key(0), 128)
  loaded, step = checkpoints.load_student_backbone(str(tmp_path / "sr"), model, fresh)
  assert step == 7
  for collection in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(loaded[collection]["backbone"]),
                    jax.tree.leaves(saved[collection]["backbone"]), strict=True):
      np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(loaded["params"]["head"]),
                  jax.tree.leaves(fresh["params"]["head"]), strict=True):
    np.testing.assert_array_equal(a, b)
  save_student(str(tmp_path / "pn"), pretrained_student())
  with pytest.raises(ValueError, match=r"(?s)does not fit the backbone SparseUNet.*"
                     r"missing: params/backbone/conv0p1s1/kernel"):
    checkpoints.load_student_backbone(str(tmp_path / "pn"), model, fresh)


def save_pretraining_step(workdir, variables, step=7, config=None):
  """A step as pretraining writes it: state (here a stand-in), student, its config, data."""
  items = {"state": ocp.args.StandardSave({"step": np.int32(step)}),
           "student": ocp.args.StandardSave(variables),
           "data": ocp.args.JsonSave({"next_batch": step})}
  if config is not None:
    items["student_config"] = ocp.args.JsonSave(config)
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    manager.save(step, args=ocp.args.Composite(**items))
    manager.wait_until_finished()


def test_load_student_returns_the_pretrained_module_and_variables(tmp_path, caplog):
  saved = pretrained_student()
  save_pretraining_step(str(tmp_path), saved,
                        config={"student": "pointnet2_tiny", "projection_dim": 16, "colors": True})
  points = jax.random.uniform(jax.random.key(1), (2, 64, 3))
  colors = jax.random.uniform(jax.random.key(2), (2, 64, 3))
  mask = jnp.arange(64)[None].repeat(2, 0) < jnp.array([[64], [40]])
  reference = student.PointModel(pointnet2.PointNet2Tiny(), student.ProjectionHead(16))
  want, aux = reference.apply(saved, points, colors, mask, train=False)
  with caplog.at_level(logging.WARNING):
    for path in (tmp_path, tmp_path / "checkpoints" / "7" / "student"):
      model, variables = checkpoints.load_student(str(path), head=True)
      got, _ = model.apply(variables, points, colors, mask, train=False)
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
      backbone, backbone_variables = checkpoints.load_student(str(path))
      assert set(backbone_variables) == {"params", "batch_stats"}
      features, _ = backbone.apply(backbone_variables, points, colors, mask, train=False)
      np.testing.assert_array_equal(np.asarray(features), np.asarray(aux["features"]))
  # Restoring a healthy checkpoint says nothing alarming.
  assert not [r for r in caplog.records if "does not exist" in r.getMessage()]


def test_load_student_rebuilds_an_sr_unet_with_its_pretraining_settings(tmp_path):
  """The voxel size and convolutions an SR-UNet was pretrained with come back with it."""
  pretrain = student.PointModel(sparse_unet.SparseUNetTiny(), student.ProjectionHead(16))
  saved = jax.jit(pretrain.init)(jax.random.key(3), jnp.zeros((1, 64, 3)),
                                 jnp.zeros((1, 64, 3)), jnp.ones((1, 64), bool))
  kwargs = {"conv_impl": "dense", "pairs_per_voxel": [3.0, 7.0, 10.0, 10.0, 9.0],
            "voxel_size": 0.25}
  save_pretraining_step(str(tmp_path), dict(saved), config={
      "student": "sr_unet_tiny", "projection_dim": 16, "colors": True,
      "backbone_kwargs": kwargs})
  backbone, _ = checkpoints.load_student(str(tmp_path))
  assert (backbone.voxel_size, backbone.conv_impl, backbone.pairs_per_voxel) == (
      0.25, "dense", (3.0, 7.0, 10.0, 10.0, 9.0))


def test_load_student_needs_the_name_only_without_a_student_config(tmp_path):
  save_pretraining_step(str(tmp_path), pretrained_student())
  with pytest.raises(ValueError, match="does not name its student"):
    checkpoints.load_student(str(tmp_path))
  model, variables = checkpoints.load_student(str(tmp_path), student="pointnet2_tiny")
  assert isinstance(model, pointnet2.PointNet2)
  with pytest.raises(ValueError, match="does not fit the backbone"):
    checkpoints.load_student(str(tmp_path), student="pointnet2_small")
  save_pretraining_step(str(tmp_path / "named"), pretrained_student(),
                        config={"student": "pointnet2_tiny", "projection_dim": 16, "colors": True})
  with pytest.raises(ValueError, match="holds student 'pointnet2_tiny', not 'sr_unet_tiny'"):
    checkpoints.load_student(str(tmp_path / "named"), student="sr_unet_tiny")
