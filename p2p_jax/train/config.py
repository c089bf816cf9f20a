"""Experiment configs: the checks every stage's schema runs at start-up, before any data.

A schema (`p2p_jax.configs.<stage>`) is a template (every key with its default) plus a rule
for each key's value and cross-key checks. `check_config` reports, in one error, every key the
template lacks and every value its rule refuses, each naming the key, the value and what is
allowed: the choices for names, the range for numbers, the shape for tuples.
"""

import dataclasses
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one config value may be: `accepts(value)`, described as `allowed` in errors."""
  allowed: str
  accepts: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
  if low is not None and high is not None:
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
  if low is not None:
    return f"{'>' if low_open else '>='} {low:g}"
  if high is not None:
    return f"{'<' if high_open else '<='} {high:g}"
  return ""


def _in_range(v: float, low, high, low_open, high_open) -> bool:
  return ((low is None or (v > low if low_open else v >= low))
          and (high is None or (v < high if high_open else v <= high)))


def integer(low: int | None = None, high: int | None = None) -> Rule:
  """An int (not a bool) in [low, high]."""
  span = _range(low, high, False, False)
  return Rule(f"an integer {span}".strip(),
              lambda v: _is_int(v) and _in_range(v, low, high, False, False))


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Rule:
  """A finite int or float in the range; `*_open` excludes that end."""
  span = _range(low, high, low_open, high_open)
  return Rule(f"a number {span}".strip(),
              lambda v: _is_number(v) and _in_range(v, low, high, low_open, high_open))


def positive() -> Rule:
  """A finite number > 0."""
  return number(0, low_open=True)


def flag() -> Rule:
  """True or False."""
  return Rule("True or False", lambda v: isinstance(v, bool))


def text() -> Rule:
  """Any string (paths, split names)."""
  return Rule("a string", lambda v: isinstance(v, str))


def choice(choices: Iterable[Any]) -> Rule:
  """One of `choices`."""
  choices = sorted(choices) if not isinstance(choices, (tuple, list)) else list(choices)
  return Rule(f"one of {choices}", lambda v: not isinstance(v, bool) and v in choices)


def tuple_of(item: Rule, lengths: Sequence[int] | None = None) -> Rule:
  """A tuple (or list) of `item`s whose length is one of `lengths` (any length if None)."""
  if lengths is None:
    shape = "a tuple"
  elif len(lengths) == 1:
    shape = f"a tuple of {lengths[0]}"
  else:
    shape = f"a tuple of {' or '.join(str(n) for n in lengths)}"
  return Rule(f"{shape} (each {item.allowed})",
              lambda v: isinstance(v, (tuple, list))
              and (lengths is None or len(v) in lengths) and all(item.accepts(x) for x in v))


def ordered_pair(item: Rule) -> Rule:
  """A (low, high) tuple of `item`s with low <= high."""
  pair = tuple_of(item, (2,))
  return Rule(f"{pair.allowed[:-1]}, low <= high)",
              lambda v: pair.accepts(v) and v[0] <= v[1])


def leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """The dotted paths of every value of `config` that is not itself a ConfigDict."""
  out = []
  for key in config.keys():
    if isinstance(config[key], ml_collections.ConfigDict):
      out += leaf_keys(config[key], f"{prefix}{key}.")
    else:
      out.append(prefix + key)
  return out


def value_at(config: ml_collections.ConfigDict, path: str) -> Any:
  for key in path.split("."):
    config = config[key]
  return config


def check_config(config: ml_collections.ConfigDict, template: ml_collections.ConfigDict,
                 rules: Mapping[str, Rule] | None = None,
                 checks: Callable[[ml_collections.ConfigDict], list[str]] | None = None,
                 prefix: str = "") -> None:
  """Checks `config` against its schema, reporting every problem in one error.

  Args:
    config: the run's config.
    template: the schema's keys; a key of `config` it lacks is an error.
    rules: dotted key path -> the rule its value must pass (keys absent from `config` are
      not checked: a method's keys exist only for that method).
    checks: cross-key checks, run when every value passed its rule: `checks(config)` ->
      messages, each naming its keys and values.
    prefix: prepended to the paths in messages (the config's place in a larger one).

  Raises:
    ValueError: listing each unknown key and each refused value as
      `key = value: expected ...`.
  """
  unknown = []

  def walk(c, t, path):
    for key in c.keys():
      if key not in t:
        unknown.append(path + key)
      elif isinstance(c[key], ml_collections.ConfigDict) and isinstance(
          t[key], ml_collections.ConfigDict):
        walk(c[key], t[key], f"{path}{key}.")

  walk(config, template, prefix)
  problems = [f"unknown config keys: {', '.join(sorted(unknown))}"] if unknown else []
  present = set(leaf_keys(config))
  for path, rule in (rules or {}).items():
    if path in present:
      value = value_at(config, path)
      if not rule.accepts(value):
        problems.append(f"{prefix}{path} = {value!r}: expected {rule.allowed}")
  if not problems and checks is not None:
    problems += [prefix + p for p in checks(config)]
  if problems:
    raise ValueError("invalid config:\n  " + "\n  ".join(problems))


def check_or_exit(check: Callable[[ml_collections.ConfigDict], None],
                  config: ml_collections.ConfigDict) -> None:
  """A script's start-up check: `check(config)`, and on a bad config the message alone (no
  traceback) and exit status 2."""
  try:
    check(config)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
