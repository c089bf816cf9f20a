"""Pretraining methods, one module each, found by name (`config.method`).

    ppkt           pixel-to-point contrast against a frozen 2D teacher (the paper)
    pointcontrast  3D-to-3D contrast of matched points of overlapping frames (the baseline)

A method module provides `prepare(config, workdir)` (offline work such as caches, idempotent)
and `setup(config, workdir, *, student, tx, schedule, devices) -> (dataset, init, step)`:
the host batches, `init(key) -> TrainState`, and the pmapped `step(state, batch) -> (state,
metrics)` whose metrics hold "loss", "pairs" and "pair_accuracy". A new method is one new file
here; `p2p_jax.train.pretrain` runs it.
"""

import importlib
import pkgutil
import types


def names() -> list[str]:
  """The methods in this package."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__))


def get(name: str) -> types.ModuleType:
  """The method module called `name`."""
  if name not in names():
    raise ValueError(f"unknown method {name!r}; expected one of {names()}")
  return importlib.import_module(f"{__name__}.{name}")
