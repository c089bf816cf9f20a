"""The teacher feature cache: stored features, clear errors, and training equal to uncached."""

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_pipeline import make_frames
from test_train_ppkt import PAIRS, setup

from p2p_jax.data import pipeline, teacher_cache
from p2p_jax.methods import ppkt
from p2p_jax.models import resnet
from p2p_jax.train import contrastive, parallel

VIEWS = dataclasses.replace(PAIRS, views_per_frame=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  teacher = resnet.ResNetTiny()
  variables = jax.jit(teacher.init)(jax.random.key(0), jnp.zeros((1, 32, 48, 3)))
  frames = make_frames(8, seed=1)
  directory = str(tmp_path_factory.mktemp("cache"))
  metadata = teacher_cache.cache_metadata(teacher="tiny", num_frames=len(frames), seed=0,
                                          config=VIEWS, checkpoint="random init")
  built = teacher_cache.build_cache(directory, frames,
                                    ppkt.teacher_features(teacher, variables), VIEWS,
                                    seed=0, metadata=metadata, batch_size=5, progress=False)
  return built, frames, teacher, variables, metadata


def test_stored_features_are_the_teachers_features_of_each_view(cache):
  built, frames, teacher, variables, _ = cache
  assert len(built) == len(frames)
  for index in (0, 5, 7):
    stored = built.features(index)
    assert stored.dtype == np.float16 and stored.shape[0] == 3
    for view in range(3):
      crop, flip = pipeline.frame_view(index, view, 0, frames[index]["depth"].shape, VIEWS)
      image = pipeline.teacher_image(np.asarray(frames[index]["image"]), crop, flip,
                                     VIEWS.image_hw)
      expected, _ = resnet.frozen_features(teacher, variables, resnet.preprocess(image[None]))
      np.testing.assert_allclose(stored[view], np.asarray(expected[0]), rtol=2e-3, atol=2e-3)
  # The three views of a frame differ (different crops), so each is really stored.
  assert not np.allclose(built.features(0)[0], built.features(0)[1])


def test_batches_with_a_cache_carry_the_views_features_and_the_same_geometry(cache):
  built, frames, teacher, variables, _ = cache
  plain = pipeline.pretrain_dataset(frames, VIEWS, seed=0, num_devices=2, per_device_batch=4,
                                    process_index=0, process_count=1)
  cached = pipeline.pretrain_dataset(frames, VIEWS, seed=0, num_devices=2, per_device_batch=4,
                                     process_index=0, process_count=1, cache=built)
  for i in (0, 3):
    a, b = plain[i], cached[i]
    assert "teacher_features" not in a and "image" not in b
    for key in a.keys() - {"image"}:
      np.testing.assert_array_equal(a[key], b[key])
    images = a["image"].reshape((-1,) + a["image"].shape[2:])
    expected, _ = resnet.frozen_features(teacher, variables, resnet.preprocess(images))
    np.testing.assert_allclose(b["teacher_features"].reshape(expected.shape), expected, rtol=2e-3,
                               atol=2e-3)


def test_training_with_the_cache_equals_training_without_up_to_float16(cache):
  built, frames, _, _, _ = cache
  state, teacher_vars, _, kwargs = setup("sgd")
  kwargs["pair_config"] = VIEWS
  devices = jax.devices()[:2]
  results = []
  for source_cache in (None, built):
    host = pipeline.pretrain_dataset(frames, VIEWS, seed=0, num_devices=2, per_device_batch=4,
                                     process_index=0, process_count=1, cache=source_cache)
    step = contrastive.pmap_step(ppkt.train_step, devices, **kwargs)
    s = parallel.replicate(state, devices)
    t = parallel.replicate(teacher_vars, devices) if source_cache is None else {}
    losses = []
    for i in range(3):
      s, metrics = step(s, t, host[i])
      losses.append(float(metrics["loss"][0]))
    results.append((jax.tree.map(lambda x: np.asarray(x[0]), s.params), losses))
  (plain_params, plain_losses), (cached_params, cached_losses) = results
  np.testing.assert_allclose(cached_losses, plain_losses, rtol=2e-3)
  # float16 features move the trajectory by a small fraction of how far the steps moved it.
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  moved = np.linalg.norm(flat(plain_params) - flat(state.params))
  apart = np.linalg.norm(flat(cached_params) - flat(plain_params))
  assert apart < 0.02 * moved, (apart, moved)
  assert not np.allclose(plain_losses[0], plain_losses[2])  # the steps did change something


def test_clear_errors(cache, tmp_path):
  built, frames, _, _, metadata = cache
  with pytest.raises(ValueError, match=r"cache.json: field 'seed' is 0, but this run needs 1"):
    teacher_cache.TeacherCache(built.directory, {**metadata, "seed": 1})
  with pytest.raises(FileNotFoundError, match="no teacher cache here"):
    teacher_cache.TeacherCache(str(tmp_path))
  with pytest.raises(ValueError, match="views_per_frame > 0"):
    teacher_cache.build_cache(str(tmp_path), frames, lambda x: x, PAIRS, seed=0, metadata={})
  with pytest.raises(ValueError, match="needs fixed views"):
    pipeline.pretrain_dataset(frames, PAIRS, seed=0, num_devices=1, per_device_batch=2,
                              process_index=0, process_count=1, cache=built)[0]
  # A cache whose record count disagrees with its metadata (e.g. another source) is refused.
  meta = json.load(open(os.path.join(built.directory, teacher_cache.METADATA)))
  other = tmp_path / "other"
  other.mkdir()
  os.symlink(os.path.join(built.directory, teacher_cache.FEATURES),
             other / teacher_cache.FEATURES)
  json.dump({**meta, "num_frames": 9}, open(other / teacher_cache.METADATA, "w"))
  with pytest.raises(ValueError, match=r"8 records, but .*cache.json says num_frames=9"):
    teacher_cache.TeacherCache(str(other))


def test_records_are_raw_float16_of_the_recorded_shape(cache, tmp_path):
  built, _, _, _, metadata = cache
  meta = json.load(open(os.path.join(built.directory, teacher_cache.METADATA)))
  assert meta["format"] == "raw float16"
  assert meta["record_shape"] == list(built.features(0).shape)
  # Read from many threads at once (as the data loader does), every record is intact.
  expected = [built.features(i) for i in range(len(built))]
  with ThreadPoolExecutor(8) as pool:
    got = list(pool.map(built.features, [i % len(built) for i in range(400)]))
  for i, features in enumerate(got):
    np.testing.assert_array_equal(features, expected[i % len(built)])
  # A cache of the earlier .npy records has no "format" and is refused, naming the field.
  old = tmp_path / "old"
  old.mkdir()
  os.symlink(os.path.join(built.directory, teacher_cache.FEATURES), old / teacher_cache.FEATURES)
  json.dump({k: v for k, v in meta.items() if k != "format"},
            open(old / teacher_cache.METADATA, "w"))
  with pytest.raises(ValueError, match=r"cache.json: field 'format' is None, but this run "
                     r"needs 'raw float16'"):
    teacher_cache.TeacherCache(str(old), metadata)
  # A record of the wrong size names the file, the record and the shape.
  bad = tmp_path / "bad"
  bad.mkdir()
  os.symlink(os.path.join(built.directory, teacher_cache.FEATURES),
             bad / teacher_cache.FEATURES)
  json.dump({**meta, "record_shape": [2] + meta["record_shape"][1:]},
            open(bad / teacher_cache.METADATA, "w"))
  with pytest.raises(ValueError, match=r"features.array_record: record 3 holds \d+ values, "
                     r"but cache.json says record_shape=\[2, "):
    teacher_cache.TeacherCache(str(bad)).features(3)
