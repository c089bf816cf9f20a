"""The state every training stage carries, and the shared optimisers and their schedule."""

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything that changes in training. Its fields are the keys of the "state" checkpoint
  item, so they are never renamed."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @classmethod
  def create(cls, variables: dict[str, Any], tx: optax.GradientTransformation) -> "TrainState":
    """Step 0 of `variables` ({"params", optional "batch_stats"}) under the optimiser `tx`."""
    return cls(step=jnp.zeros((), jnp.int32), params=variables["params"],
               batch_stats=variables.get("batch_stats", {}),
               opt_state=tx.init(variables["params"]))

  def apply_gradients(self, grads: Any, batch_stats: Any,
                      tx: optax.GradientTransformation) -> tuple["TrainState", Any]:
    """The next state: one update of `tx` from `grads`, and the new BatchNorm statistics.

    Returns:
      (new state, the applied updates).
    """
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state), updates


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """An optimiser and its schedule; hashable, so a jitted step can take it as a static argument.

  Attributes:
    name: "sgd" (with momentum; PPKT: lr 0.5, momentum 0.9, weight decay 1e-4) or "adamw".
    learning_rate: the peak learning rate.
    weight_decay: L2 weight decay (added to the gradient for SGD, decoupled for AdamW).
    momentum: SGD momentum (unused by AdamW).
    warmup_steps: linear warm-up from 0.
    total_steps: length of the schedule.
    schedule: "cosine" (decay to 0 at `total_steps`), "poly" (MinkowskiEngine's PolyLR:
      lr (1 - step / (total_steps + 1))^power, the fine-tuning schedule of the paper's code)
      or "step" (torch's MultiStepLR, VoteNet's: lr times `decay` at each boundary passed).
    power: the "poly" schedule's exponent.
    boundaries: the "step" schedule's boundaries, as fractions of `total_steps` (VoteNet:
      epochs 80, 120 and 160 of 180); the step round(fraction x total_steps) is the first at
      the lower rate.
    decay: the "step" schedule's factor at each boundary.
    dampening: SGD momentum dampening as in `torch.optim.SGD`: the momentum buffer starts at
      the first gradient, then b = momentum b + (1 - dampening) g.
  """
  name: str = "adamw"
  learning_rate: float = 1e-2
  weight_decay: float = 1e-4
  momentum: float = 0.9
  warmup_steps: int = 0
  total_steps: int = 300
  schedule: str = "cosine"
  power: float = 0.9
  dampening: float = 0.0
  boundaries: tuple[float, ...] = ()
  decay: float = 0.1

  @classmethod
  def from_config(cls, optimizer, total_steps: int) -> "OptimizerConfig":
    """From an experiment config's `optimizer` field and the run's length."""
    return cls(name=optimizer.name, learning_rate=optimizer.learning_rate,
               weight_decay=optimizer.weight_decay, momentum=optimizer.momentum,
               warmup_steps=optimizer.warmup_steps, total_steps=total_steps,
               schedule=optimizer.schedule, power=optimizer.power,
               dampening=optimizer.dampening, boundaries=tuple(optimizer.boundaries),
               decay=optimizer.decay)


def make_schedule(config: OptimizerConfig):
  """Linear warm-up to the learning rate, then cosine decay to 0 at `total_steps` ("cosine"),
  MinkowskiEngine's PolyLR after the warm-up ("poly"), or steps down by `decay` at each of
  `boundaries` ("step")."""
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                              max(config.total_steps, config.warmup_steps + 1))
  if config.schedule == "step":
    scales = {}  # a repeated boundary decays twice, as in torch's MultiStepLR
    for fraction in config.boundaries:
      boundary = round(fraction * config.total_steps)
      scales[boundary] = scales.get(boundary, 1.0) * config.decay
    stepped = optax.piecewise_constant_schedule(config.learning_rate, scales)
    if not config.warmup_steps:
      return stepped
    return lambda step: jnp.where(step < config.warmup_steps,
                                  config.learning_rate * step / config.warmup_steps,
                                  stepped(step))
  if config.schedule != "poly":
    raise ValueError(f"unknown schedule {config.schedule!r}; expected 'cosine', 'poly' or "
                     "'step'")
  length = max(config.total_steps - config.warmup_steps, 1) + 1

  def poly(step):
    after = jnp.maximum(step - config.warmup_steps, 0)
    decay = config.learning_rate * (1.0 - jnp.minimum(after, length) / length) ** config.power
    if not config.warmup_steps:
      return decay
    return jnp.where(step < config.warmup_steps,
                     config.learning_rate * step / config.warmup_steps, decay)

  return poly


def _dampened_momentum(momentum: float, dampening: float) -> optax.GradientTransformation:
  """torch.optim.SGD's momentum buffer: b_1 = g_1, then b = momentum b + (1 - dampening) g."""
  def init(params):
    return (jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    del params
    count, buffer = state
    buffer = jax.tree.map(
        lambda b, g: jnp.where(count == 0, g, momentum * b + (1.0 - dampening) * g),
        buffer, grads)
    return buffer, (count + 1, buffer)

  return optax.GradientTransformation(init, update)


@functools.cache
def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """SGD with momentum or AdamW on `make_schedule(config)`; one object per config, so steps
  that take it as a static argument compile once."""
  schedule = make_schedule(config)
  if config.name == "sgd" and config.dampening:
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       _dampened_momentum(config.momentum, config.dampening),
                       optax.scale_by_learning_rate(schedule))
  if config.name == "sgd":
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(schedule, momentum=config.momentum))
  if config.name == "adamw":
    return optax.adamw(schedule, weight_decay=config.weight_decay)
  raise ValueError(f"unknown optimizer {config.name!r}; expected 'sgd' or 'adamw'")
