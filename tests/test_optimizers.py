"""The optimisers against PyTorch: SGD with dampened momentum, weight decay and PolyLR."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from p2p_jax.train import state as state_lib


@pytest.mark.parametrize("dampening", [0.1, 0.0])
def test_sgd_dampening_weight_decay_and_poly_schedule_match_torch(dampening):
  """The paper's fine-tuning optimiser (lr 0.1, momentum 0.9, dampening 0.1, weight decay
  1e-4, PolyLR power 0.9) step by step against torch.optim.SGD + LambdaLR."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(5, 4)).astype(np.float32)
  target = rng.normal(size=(5,)).astype(np.float32)
  w0 = rng.normal(size=(4,)).astype(np.float32)
  total = 8
  config = state_lib.OptimizerConfig("sgd", learning_rate=0.1, weight_decay=1e-4, momentum=0.9,
                                     total_steps=total, schedule="poly", power=0.9,
                                     dampening=dampening)
  tx = state_lib.make_optimizer(config)
  loss = lambda w: jnp.sum((jnp.asarray(a) @ w - target) ** 2)
  w, opt_state, ours = jnp.asarray(w0), tx.init(jnp.asarray(w0)), []
  for _ in range(total):
    updates, opt_state = tx.update(jax.grad(loss)(w), opt_state, w)
    w = optax.apply_updates(w, updates)
    ours.append(np.asarray(w))

  wt = torch.tensor(w0, requires_grad=True)
  opt = torch.optim.SGD([wt], lr=0.1, momentum=0.9, dampening=dampening, weight_decay=1e-4)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / (total + 1)) ** 0.9)
  for step in range(total):
    opt.zero_grad()
    torch.sum((torch.tensor(a) @ wt - torch.tensor(target)) ** 2).backward()
    opt.step()
    sched.step()
    np.testing.assert_allclose(ours[step], wt.detach().numpy(), rtol=1e-5, atol=1e-6)
  schedule = state_lib.make_schedule(config)
  np.testing.assert_allclose([schedule(s) for s in range(3)],
                             [0.1 * (1 - s / 9) ** 0.9 for s in range(3)], rtol=1e-6)


def test_unknown_schedule_is_named():
  with pytest.raises(ValueError, match="unknown schedule 'exponential'"):
    state_lib.make_schedule(state_lib.OptimizerConfig(schedule="exponential"))


@pytest.mark.parametrize("boundaries", [(80 / 180, 120 / 180, 160 / 180), (0.5, 0.5), ()])
def test_step_schedule_matches_torch_multistep(boundaries):
  """VoteNet's schedule: lr x 0.1 at epochs 80, 120 and 160 of 180, as torch's MultiStepLR
  (a repeated milestone decays twice)."""
  total = 180
  config = state_lib.OptimizerConfig(learning_rate=1e-3, total_steps=total, schedule="step",
                                     boundaries=boundaries, decay=0.1)
  schedule = state_lib.make_schedule(config)
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([param], lr=1e-3)
  sched = torch.optim.lr_scheduler.MultiStepLR(
      opt, milestones=[round(b * total) for b in boundaries], gamma=0.1)
  expected = []
  for _ in range(total + 5):
    expected.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
  np.testing.assert_allclose([float(schedule(s)) for s in range(total + 5)], expected,
                             rtol=1e-6)
