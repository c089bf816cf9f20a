"""resnet.py: shapes, ImageNet preprocessing and frozen use of the teacher.

That converted PyTorch weights give PyTorch's outputs is tested in test_convert.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from p2p_jax.models import resnet


def random_variables(model, rng):
  """He-scaled kernels and random BN affines and statistics, drawn with NumPy.

  Faster than `model.init`, whose threefry draws compile once per kernel shape.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))

  def draw(path, x):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(0.0, np.sqrt(2.0 / np.prod(x.shape[:-1])), x.shape).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    return rng.normal(0.0, 0.1, x.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def tiny():
  model = resnet.ResNetTiny()
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 50, 70, 3)).astype(np.float32)
  return model, random_variables(model, rng), images


def test_feature_dim_of_the_named_variants():
  assert resnet.ResNet18().feature_dim == 512
  assert resnet.ResNet34().feature_dim == 512
  assert resnet.ResNet50().feature_dim == 2048
  assert resnet.ResNet101().feature_dim == 2048
  assert resnet.ResNetTiny().feature_dim == 128


def test_aux_shapes_on_a_non_square_input(tiny):
  model, variables, images = tiny
  output, aux = jax.jit(model.apply)(variables, images)
  # 50 x 70: conv1 (7x7, s2, p3) -> 25 x 35, max pool (3x3, s2, p1) -> 13 x 18, then each
  # stride-2 stage rounds up: 7 x 9, 4 x 5, 2 x 3.
  expected = {
      "stem": (2, 13, 18, 4),
      "layer1": (2, 13, 18, 16),
      "layer2": (2, 7, 9, 32),
      "layer3": (2, 4, 5, 64),
      "layer4": (2, 2, 3, 128),
  }
  assert {k: v.shape for k, v in aux.items()} == expected
  assert output.shape == (2, 2, 3, model.feature_dim)
  np.testing.assert_array_equal(output, aux["layer4"])


def test_resnet50_shapes_without_compute():
  images = jax.ShapeDtypeStruct((1, 240, 320, 3), jnp.float32)
  model = resnet.ResNet50()
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  output, aux = jax.eval_shape(model.apply, variables, images)
  assert output.shape == (1, 8, 10, 2048)
  assert [aux[k].shape[1:] for k in ("stem", "layer1", "layer2", "layer3")] == [
      (60, 80, 64), (60, 80, 256), (30, 40, 512), (15, 20, 1024)]


def test_preprocess_hand_computed():
  images = np.array([[[[0, 0, 0], [255, 255, 255], [128, 64, 32]]]], np.uint8)
  expected = [[[[-2.117904, -2.035714, -1.804444],
                [2.248908, 2.428571, 2.64],
                [0.074065, -0.915266, -1.246710]]]]
  out = resnet.preprocess(images)
  assert out.dtype == jnp.float32 and out.shape == (1, 1, 3, 3)
  np.testing.assert_allclose(out, expected, atol=2e-6)
  np.testing.assert_allclose(resnet.preprocess(images.astype(np.float32)), expected, atol=2e-6)


def test_frozen_features_give_exactly_zero_gradients_to_the_teacher(tiny):
  model, variables, images = tiny

  @functools.partial(jax.jit, static_argnums=1)
  def loss(variables, frozen):
    if frozen:
      output, _ = resnet.frozen_features(model, variables, images)
    else:
      output, _ = model.apply(variables, images, train=False)
    return jnp.sum(output ** 2)

  grads = jax.grad(loss)(variables, True)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))
  # The same loss without stop_gradient does reach the weights.
  grads = jax.grad(loss)(variables, False)
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads["params"]))


def test_inference_mode_leaves_batch_stats_unchanged(tiny):
  model, variables, images = tiny
  apply = jax.jit(functools.partial(model.apply, mutable="batch_stats"), static_argnames="train")
  _, updates = apply(variables, images, train=False)
  jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])
  # Training mode does update them, so the check above can fail.
  _, updates = apply(variables, images, train=True)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), updates["batch_stats"],
                         variables["batch_stats"])
  assert all(jax.tree.leaves(changed))


def test_inference_mode_treats_images_independently(tiny):
  model, variables, images = tiny
  frozen = jax.jit(resnet.frozen_features, static_argnums=0)
  both, _ = frozen(model, variables, images)
  first, _ = frozen(model, variables, images[:1])
  np.testing.assert_allclose(both[:1], first, rtol=1e-5, atol=1e-5)
  # Batch statistics (training mode) would mix the two images.
  apply = jax.jit(functools.partial(model.apply, train=True, mutable="batch_stats"))
  (mixed, _), _ = apply(variables, images)
  (alone, _), _ = apply(variables, images[:1])
  assert not np.allclose(mixed[:1], alone, rtol=1e-3, atol=1e-3)


def test_bfloat16_compute_keeps_float32_parameters(tiny):
  model, variables, images = tiny
  model16 = resnet.ResNetTiny(dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(
      jax.eval_shape(model16.init, jax.random.key(0), images)))
  frozen = jax.jit(resnet.frozen_features, static_argnums=0)
  out16, _ = frozen(model16, variables, images)
  out32, _ = frozen(model, variables, images)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(np.float32), out32, atol=0.05 * np.abs(out32).max())
