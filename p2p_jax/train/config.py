"""Experiment configs: schema checks shared by every stage."""

import ml_collections


def check_config(config: ml_collections.ConfigDict, template: ml_collections.ConfigDict,
                 prefix: str = "") -> None:
  """Raises ValueError listing every key of `config` that `template` does not have."""
  unknown = []

  def walk(c, t, path):
    for key in c.keys():
      if key not in t:
        unknown.append(path + key)
      elif isinstance(c[key], ml_collections.ConfigDict) and isinstance(
          t[key], ml_collections.ConfigDict):
        walk(c[key], t[key], f"{path}{key}.")

  walk(config, template, prefix)
  if unknown:
    raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
