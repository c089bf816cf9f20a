"""PointContrast pretraining of the PointNet++ student on the synthetic rooms: the baseline of
`ppkt_synthetic`, with the same student, data, optimiser and budget.

    python -m experiments.pretrain --config experiments/configs/pointcontrast_synthetic.py \
        --workdir /tmp/pointcontrast_synthetic
    python -m experiments.pretrain --config experiments/configs/pointcontrast_synthetic.py:runlocal\
        --workdir /tmp/pointcontrast_local      # seconds on a 2-core CPU

Hardware and runtime: as `ppkt_synthetic` (the step has no teacher, so it is faster).
Expected result: the loss falls below chance (log of the matches per batch) and the match
top-1 accuracy rises; fine-tuned (experiments/finetune.py), it sits between scratch and PPKT.
"""

from experiments.configs import ppkt_synthetic
from p2p_jax.configs import pretrain as schema


def get_config(arg=None):
  ppkt = ppkt_synthetic.get_config(arg)
  c = schema.switch_method(ppkt, "pointcontrast")
  c.pointcontrast.num_matches = ppkt.ppkt.num_pairs  # 4096 per batch of 8, as PPKT's pairs
  if arg == "runlocal":
    c.pointcontrast.min_overlap = 0.2  # tiny frames of few points
  c.loss.temperature = 0.07  # the paper's; the released scripts used 0.4
  return c
