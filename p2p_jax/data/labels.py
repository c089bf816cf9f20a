"""Semantic classes: NYU40 ids as stored by ScanNet, and the 20-class ScanNet benchmark.

ScanNet's `<scene>_vh_clean_2.labels.ply` stores an NYU40 id per vertex; the benchmark keeps
20 of them and ignores the rest. The synthetic rooms use the same NYU40 ids, so one mapping
serves real and synthetic data.
"""

import numpy as np

from p2p_jax.metrics import IGNORE_LABEL

# (NYU40 id, name) of the 20 ScanNet benchmark classes, in benchmark order.
SCANNET20 = (
    (1, "wall"), (2, "floor"), (3, "cabinet"), (4, "bed"), (5, "chair"), (6, "sofa"),
    (7, "table"), (8, "door"), (9, "window"), (10, "bookshelf"), (11, "picture"),
    (12, "counter"), (14, "desk"), (16, "curtain"), (24, "refrigerator"),
    (28, "shower curtain"), (33, "toilet"), (34, "sink"), (36, "bathtub"),
    (39, "otherfurniture"),
)
SCANNET20_NAMES = tuple(name for _, name in SCANNET20)
NUM_CLASSES = len(SCANNET20)

# NYU40 id (0..40; 0 = unlabelled) -> benchmark class 0..19, or IGNORE_LABEL.
NYU40_TO_SCANNET20 = np.full(41, IGNORE_LABEL, np.int32)
for _index, (_nyu40, _) in enumerate(SCANNET20):
  NYU40_TO_SCANNET20[_nyu40] = _index


def nyu40_to_scannet20(nyu40: np.ndarray) -> np.ndarray:
  """Maps NYU40 ids to benchmark classes; ids outside 1..40 and unused classes -> IGNORE_LABEL."""
  nyu40 = np.asarray(nyu40)
  inside = (nyu40 >= 0) & (nyu40 <= 40)
  return np.where(inside, NYU40_TO_SCANNET20[np.clip(nyu40, 0, 40)], IGNORE_LABEL).astype(np.int32)
