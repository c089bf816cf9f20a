"""torchvision / timm ResNet weights (.pth or .safetensors) -> Flax variables of `resnet.ResNet`.

Convert once with `python -m experiments.convert_weights`, which writes an Orbax checkpoint;
training then restores it with `load_teacher_checkpoint` and needs no PyTorch:

    state = load_state_dict("resnet50-0676ba61.pth")                # name -> numpy array
    variables = torchvision_resnet_to_flax(state, resnet.ResNet50())
    save_teacher_checkpoint("/abs/teacher_r50", variables)
    variables = load_teacher_checkpoint("/abs/teacher_r50", resnet.ResNet50())

timm's plain ResNets (resnet18/34/50/101 with any pretrained tag, e.g. `resnet50.a1_in1k`) use
torchvision's names and layout. timm's other variants do not fit `resnet.ResNet` and are
rejected with the reason: deep 3x3 stems (`conv1.0`, the c/d/s/t variants), average-pooled
shortcuts (`downsample.1` is a conv, the d/e/t variants) and squeeze-excitation (`se.`).
"""

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from p2p_jax.models import resnet

# Entries of torchvision's classifier checkpoints that the backbone does not use.
_IGNORED_PREFIXES = ("fc.",)
_IGNORED_SUFFIXES = (".num_batches_tracked",)
# Flax module names that are not PyTorch's with "_" -> ".".
_TORCH_MODULE = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# Key fragments of timm ResNets whose architecture differs from torchvision's.
_TIMM_VARIANTS = {
    "conv1.0.": "a deep 3x3 stem (timm *c/*d/*s/*t variants)",
    "downsample.2.": "an average-pooled shortcut (timm *d/*e/*t variants)",
    ".se.": "squeeze-excitation blocks (timm seresnet*)",
}


def _first_line(error: Exception) -> str:
  """The gist of `error`: torch.load wraps its unpickler's reason in paragraphs of advice."""
  text = str(error).split("WeightsUnpickler error:")[-1]
  line = next((l.strip() for l in text.splitlines() if l.strip()), "")
  line = line.split(". ")[0][:200]
  return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _torch_load(path: str) -> Any:
  """`torch.load(weights_only=True)` whose failures on bad files are one-line ValueErrors."""
  import torch
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except OSError:
    raise
  except Exception as e:  # Bad files raise UnpicklingError, RuntimeError, EOFError, KeyError, ...
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if isinstance(e, pickle.UnpicklingError) and found:
      raise ValueError(f"{path}: not a weights-only state dict, it pickles {found[1]}; was it "
                       "saved with torch.save(model)? Save model.state_dict() instead") from e
    raise ValueError(f"{path}: corrupt, truncated or not written by torch.save "
                     f"({_first_line(e)})") from e


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict from disk.

  `.pth` / `.pt` files need PyTorch and are read with `weights_only=True` (no arbitrary
  unpickling); `.safetensors` files need the `safetensors` package but not PyTorch. Weights
  wrapped as `{"state_dict": ...}`, as many training scripts save them, are unwrapped, and the
  `module.` prefix of DistributedDataParallel is removed.

  Args:
    path: the weight file.

  Returns:
    Parameter and buffer names (e.g. "layer1.0.conv1.weight") -> numpy arrays; bfloat16 and
    float16 tensors come back as float32.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the suffix is not one of the above, the file is corrupt or truncated, or it
      holds something other than tensors (e.g. a whole pickled module). Every message starts
      with `path`.
    ImportError: no PyTorch for a .pth / .pt file, or no safetensors for a .safetensors file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such weight file: {path}")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".safetensors":
    try:
      import safetensors
      from safetensors.numpy import load_file
    except ImportError as e:
      raise ImportError(f"reading {path} needs safetensors; install it") from e
    try:
      state = load_file(path)  # bfloat16 arrays use the NumPy dtype ml_dtypes registers.
    except (safetensors.SafetensorError, TypeError) as e:
      raise ValueError(f"{path}: not a readable .safetensors file ({_first_line(e)})") from e
    state = {k: v.astype(np.float32) if v.dtype in (ml_dtypes.bfloat16, np.float16) else v
             for k, v in state.items()}
  elif suffix in (".pth", ".pt"):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"reading {path} needs PyTorch; install torch or convert the file to "
                        ".safetensors") from e
    state = _torch_load(path)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
      state = state["state_dict"]
    if not isinstance(state, Mapping):
      raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
      raise ValueError(f"{path}: not a state dict, these entries are not tensors: {bad}")
    # torch cannot export bfloat16 to NumPy; half precision becomes float32 as for .safetensors.
    state = {k: (v.float() if v.dtype in (torch.bfloat16, torch.float16) else v).numpy()
             for k, v in state.items()}
  else:
    raise ValueError(f"{path}: unsupported weight file suffix {suffix!r}; expected .pth, .pt "
                     "or .safetensors")
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state


def abstract_variables(model: resnet.ResNet) -> dict[str, Any]:
  """Shapes and dtypes of `model`'s `{"params", "batch_stats"}`, computed without any FLOPs."""
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)


def _torch_name(flax_key: tuple[str, ...]) -> str:
  collection, *modules, leaf = flax_key
  modules = [_TORCH_MODULE.get(m, m.replace("_", ".")) for m in modules]
  return ".".join(modules + [_TORCH_LEAF[collection, leaf]])


def torchvision_resnet_to_flax(state_dict: Mapping[str, Any],
                               model: resnet.ResNet) -> dict[str, Any]:
  """Maps a torchvision (or timm) ResNet state dict onto `model`'s Flax variables.

  Convolution weights [out, in, kh, kw] become kernels [kh, kw, in, out]; BatchNorm
  weight / bias / running_mean / running_var become scale / bias / mean / var. The
  classifier (`fc.*`) and `num_batches_tracked` are ignored.

  Args:
    state_dict: names -> arrays (numpy, or anything `np.asarray` takes), e.g. from
      `load_state_dict`.
    model: the ResNet whose variables to fill, e.g. `resnet.ResNet50()`.

  Returns:
    `{"params": ..., "batch_stats": ...}` of float32 numpy arrays.

  Raises:
    ValueError: listing every missing name, unexpected name and shape mismatch at once.
  """
  expected = traverse_util.flatten_dict(abstract_variables(model))
  state = {k: v for k, v in state_dict.items()
           if not (k.startswith(_IGNORED_PREFIXES) or k.endswith(_IGNORED_SUFFIXES))}
  flat, problems = {}, []
  for name, key in sorted((_torch_name(key), key) for key in expected):
    abstract = expected[key]
    # PyTorch's layout of the expected shape, so messages compare like with like.
    torch_shape = abstract.shape
    if len(torch_shape) == 4:
      torch_shape = tuple(abstract.shape[i] for i in (3, 2, 0, 1))
    if name not in state:
      problems.append(f"missing: {name} (expected shape {torch_shape})")
      continue
    value = np.asarray(state.pop(name), np.float32)
    if value.shape != torch_shape:
      problems.append(f"shape mismatch: {name} expected {torch_shape}, found {value.shape}")
      continue
    flat[key] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
  problems += [f"unexpected: {name} (found shape {tuple(np.shape(value))})"
               for name, value in sorted(state.items())]
  if problems:
    hints = [f"the weights have {why}, which this ResNet does not"
             for fragment, why in _TIMM_VARIANTS.items()
             if any(fragment in name for name in state)]
    raise ValueError(
        f"cannot load the weights into {type(model).__name__}(stage_sizes="
        f"{tuple(model.stage_sizes)}, block_cls={model.block_cls.__name__}, num_filters="
        f"{model.num_filters}): {len(problems)} problem(s)\n  "
        + "\n  ".join(hints + problems))
  return traverse_util.unflatten_dict(flat)


def save_teacher_checkpoint(path: str | os.PathLike, variables: Any, *,
                            overwrite: bool = False) -> str:
  """Writes `{"params", "batch_stats"}` as an Orbax checkpoint and waits until it is complete.

  Args:
    path: the checkpoint directory; made absolute, as Orbax requires.
    variables: the teacher's variables, e.g. from `torchvision_resnet_to_flax`.
    overwrite: replace an existing checkpoint at `path` instead of failing.

  Returns:
    The absolute path written.
  """
  path = os.path.abspath(os.fspath(path))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, variables, force=overwrite)
    checkpointer.wait_until_finished()
  return path


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {"/".join(str(k.key) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_teacher_checkpoint(path: str | os.PathLike, model: resnet.ResNet) -> dict[str, Any]:
  """Restores the teacher's variables written by `save_teacher_checkpoint`.

  Args:
    path: the checkpoint directory.
    model: the ResNet the checkpoint was converted for.

  Returns:
    `{"params": ..., "batch_stats": ...}` of jax arrays on the default device.

  Raises:
    FileNotFoundError: `path` is not a directory.
    ValueError: listing every variable the checkpoint lacks, has in excess or has with
      another shape than `model`.
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no teacher checkpoint at {path}")
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        abstract_variables(model))
  with ocp.StandardCheckpointer() as checkpointer:
    # Checked here because a failed Orbax restore leaves asynchronous work that errors at exit.
    stored, wanted = _shapes(checkpointer.metadata(path).item_metadata), _shapes(target)
    problems = [f"missing: {k} (expected shape {v})" for k, v in wanted.items() if k not in stored]
    problems += [f"shape mismatch: {k} expected {v}, found {stored[k]}"
                 for k, v in wanted.items() if k in stored and stored[k] != v]
    problems += [f"unexpected: {k} (found shape {v})" for k, v in stored.items() if k not in wanted]
    if problems:
      raise ValueError(f"the checkpoint {path} does not fit the model: {len(problems)} "
                       "problem(s)\n  " + "\n  ".join(problems))
    return checkpointer.restore(path, target)
