"""PointContrast on ScanNet frames (the paper's baseline), with PPKT's student and budget.

    python -m experiments.pretrain --config experiments/configs/pointcontrast_scannet.py \
        --workdir /ckpt/pointcontrast_scannet --config.data.manual_dir=/data/scannet

Data, student, optimiser, batch and steps: those of `ppkt_scannet` (the same budget). Pairs:
frames (every 25th) of one scene whose clouds overlap by >= 30%, computed once and stored
with the dataset; 4096 matches per batch; temperature 0.07 (the released scripts used 0.4:
--config.loss.temperature=0.4). Hardware and runtime: as `ppkt_scannet`, less the teacher.
Expected result: the paper's S3DIS Area 5 row reads scratch 65.16, PointContrast 66.86,
PPKT 68.28 mIoU. `runlocal` shrinks it to tiny synthetic data on a CPU.
"""

from experiments.configs import ppkt_scannet
from p2p_jax.configs import pretrain as schema


def get_config(arg=None):
  ppkt = ppkt_scannet.get_config(arg)
  c = schema.switch_method(ppkt, "pointcontrast")
  c.pointcontrast.num_matches = ppkt.ppkt.num_pairs
  c.loss.temperature = 0.07
  return c
