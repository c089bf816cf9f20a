"""Synthetic rooms -> scannet_frames (TFDS) -> pipeline -> pairs that land on their pixels."""


import jax
import numpy as np

from p2p_jax.data import pipeline, synthetic
from p2p_jax.data.scannet_frames import build_frames, load_frames


def test_pairs_from_built_synthetic_frames_reproject_onto_their_pixels(tmp_path):
  manual = tmp_path / "rooms"
  synthetic.generate(str(manual), num_scenes=2, frames_per_scene=4, height=48, width=64, seed=3,
                     val_fraction=0.0, depth_holes=0.05, workers=1)
  build_frames(str(manual), str(tmp_path / "tfds"), config="skip1")
  source = load_frames(str(tmp_path / "tfds"), "train", config="skip1")
  assert len(source) == 8
  config = pipeline.PairConfig(image_hw=(40, 56), num_points=1024, num_pairs=512,
                               crop_scale=(0.4, 1.0), jitter_sigma=0.0)
  ds = pipeline.pretrain_dataset(source, config, seed=0, num_devices=2, per_device_batch=2,
                                 process_index=0, process_count=1)
  records = [source[i] for i in range(len(source))]
  checked = 0
  for step in range(2):
    host = ds[step]
    out = jax.tree.map(np.asarray, pipeline.make_pairs_jit(host, config))
    for d in range(2):
      for b in range(2):
        # The record this element came from: the one with its frame index and pose.
        (record,) = [r for r in records if r["frame"] == host["frame"][d, b]
                     and np.array_equal(r["cam_to_world"], host["cam_to_world"][d, b])]
        mask = out["pair_mask"][d, b]
        pts = out["points"][d, b][out["pair_points"][d, b][mask]]
        world = (out["world_from_points"][d, b].astype(np.float64)
                 @ np.c_[pts, np.ones(len(pts))].T).T[:, :3]
        cam = (np.linalg.inv(record["cam_to_world"].astype(np.float64))
               @ np.c_[world, np.ones(len(world))].T)
        cam = (record["color_from_depth"].astype(np.float64) @ cam)[:3]
        uvw = record["color_intrinsics"].astype(np.float64) @ cam
        row, col = uvw[1] / uvw[2], uvw[0] / uvw[2]
        top, left, h, w = host["crop"][d, b]
        row = (row - top + 0.5) * 40 / h - 0.5
        col = (col - left + 0.5) * 56 / w - 0.5
        if host["flip"][d, b]:
          col = 55 - col
        pix = out["pair_pixels"][d, b][mask]
        assert np.all(np.abs(pix[:, 0] - row) <= 0.501) and np.all(np.abs(pix[:, 1] - col) <= 0.501)
        checked += int(mask.sum())
  assert checked > 3000
