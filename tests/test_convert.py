"""convert.py and experiments/convert_weights.py: PyTorch ResNet weights give PyTorch's outputs.

The reference network is written here with torch.nn.functional ops alone (no torchvision),
following the torchvision v1.5 layout, and its random state dicts carry exactly torchvision's
names, including the classifier and the `num_batches_tracked` buffers.
"""

import math

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F  # noqa: N812

from experiments import convert_weights
from p2p_jax.models import convert, resnet

TINY = dict(bottleneck=True, stage_sizes=(1, 1, 1, 1), width=4)


def random_state_dict(bottleneck, stage_sizes, width, seed=0):
  """A torchvision-named ResNet state dict with He-scaled convs and random BN statistics.

  The last BN of each residual branch gets a small weight, so the residual sums grow slowly
  with depth and the deepest stages stay well scaled.
  """
  g = torch.Generator().manual_seed(seed)
  uniform = lambda lo, hi, n: lo + (hi - lo) * torch.rand(n, generator=g)
  state = {}

  def conv(name, out_channels, in_channels, k):
    std = math.sqrt(2.0 / (in_channels * k * k))
    state[f"{name}.weight"] = std * torch.randn(out_channels, in_channels, k, k, generator=g)

  def bn(name, channels, last=False):
    state[f"{name}.weight"] = uniform(0.2, 0.5, channels) if last else uniform(0.5, 1.5, channels)
    state[f"{name}.bias"] = 0.1 * torch.randn(channels, generator=g)
    state[f"{name}.running_mean"] = 0.1 * torch.randn(channels, generator=g)
    state[f"{name}.running_var"] = uniform(0.5, 1.5, channels)
    state[f"{name}.num_batches_tracked"] = torch.tensor(1000)

  conv("conv1", width, 3, 7)
  bn("bn1", width)
  expansion = 4 if bottleneck else 1
  in_channels = width
  for i, num_blocks in enumerate(stage_sizes):
    planes = width * 2 ** i
    for j in range(num_blocks):
      p = f"layer{i + 1}.{j}"
      stride = 2 if i > 0 and j == 0 else 1
      if bottleneck:
        conv(f"{p}.conv1", planes, in_channels, 1)
        bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3)
        bn(f"{p}.bn2", planes)
        conv(f"{p}.conv3", planes * 4, planes, 1)
        bn(f"{p}.bn3", planes * 4, last=True)
      else:
        conv(f"{p}.conv1", planes, in_channels, 3)
        bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3)
        bn(f"{p}.bn2", planes, last=True)
      if stride != 1 or in_channels != planes * expansion:
        conv(f"{p}.downsample.0", planes * expansion, in_channels, 1)
        bn(f"{p}.downsample.1", planes * expansion)
      in_channels = planes * expansion
  state["fc.weight"] = 0.01 * torch.randn(1000, in_channels, generator=g)
  state["fc.bias"] = torch.zeros(1000)
  return state


def reference_forward(state, x, bottleneck, stage_sizes):
  """torchvision's ResNet forward in eval mode, NCHW; returns the stem and stage outputs."""

  def bn(x, name):
    return F.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"],
                        state[f"{name}.weight"], state[f"{name}.bias"], training=False, eps=1e-5)

  x = F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), "bn1"))
  x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
  out = {"stem": x}
  for i, num_blocks in enumerate(stage_sizes):
    for j in range(num_blocks):
      p = f"layer{i + 1}.{j}"
      stride = 2 if i > 0 and j == 0 else 1
      if bottleneck:
        y = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"]), f"{p}.bn1"))
        y = F.relu(bn(F.conv2d(y, state[f"{p}.conv2.weight"], stride=stride, padding=1),
                      f"{p}.bn2"))
        y = bn(F.conv2d(y, state[f"{p}.conv3.weight"]), f"{p}.bn3")
      else:
        y = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"], stride=stride, padding=1),
                      f"{p}.bn1"))
        y = bn(F.conv2d(y, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
      if f"{p}.downsample.0.weight" in state:
        x = bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
      x = F.relu(y + x)
    out[f"layer{i + 1}"] = x
  return out


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("model_fn, bottleneck, stage_sizes", [
    (resnet.ResNet18, False, (2, 2, 2, 2)),
    (resnet.ResNet50, True, (3, 4, 6, 3)),
], ids=["resnet18", "resnet50"])
def test_converted_weights_give_the_pytorch_outputs(tmp_path, model_fn, bottleneck, stage_sizes):
  state = random_state_dict(bottleneck, stage_sizes, width=64)
  torch.save(state, tmp_path / "w.pth")
  safetensors.torch.save_file(state, tmp_path / "w.safetensors")
  model = model_fn()
  variables = convert.torchvision_resnet_to_flax(convert.load_state_dict(tmp_path / "w.pth"), model)
  assert_trees_equal(variables, convert.torchvision_resnet_to_flax(
      convert.load_state_dict(tmp_path / "w.safetensors"), model))

  images = np.random.default_rng(0).normal(size=(2, 240, 320, 3)).astype(np.float32)
  with torch.no_grad():
    expected = reference_forward(state, torch.from_numpy(images.transpose(0, 3, 1, 2)),
                                 bottleneck, stage_sizes)
  output, aux = jax.jit(resnet.frozen_features, static_argnums=0)(model, variables, images)
  np.testing.assert_array_equal(output, aux["layer4"])
  for name in ("stem", "layer1", "layer2", "layer3", "layer4"):
    want = expected[name].numpy().transpose(0, 2, 3, 1)
    got = np.asarray(aux[name])
    assert got.shape == want.shape, name
    scale = np.abs(want).max()
    # Well-scaled activations, so the tolerance below means something.
    assert 0.1 < scale < 1e3 and np.mean(want > 0) > 0.05, (name, scale)
    error = np.abs(got - want).max() / scale
    assert error < 1e-4, f"{name}: max error {error:.2e} of the largest activation"


def test_conversion_reports_every_problem_in_one_error():
  state = random_state_dict(**TINY)
  del state["layer2.0.conv1.weight"]
  state["layer5.0.conv1.weight"] = torch.zeros(3, 3)
  state["bn1.running_var"] = torch.ones(5)
  with pytest.raises(ValueError) as error:
    convert.torchvision_resnet_to_flax(state, resnet.ResNetTiny())
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "missing: layer2.0.conv1.weight (expected shape (8, 16, 1, 1))" in message
  assert "unexpected: layer5.0.conv1.weight (found shape (3, 3))" in message
  assert "shape mismatch: bn1.running_var expected (4,), found (5,)" in message
  assert "fc." not in message and "num_batches_tracked" not in message


def test_timm_variants_outside_the_torchvision_layout_are_named():
  state = random_state_dict(**TINY)
  # resnet*d: deep 3x3 stem, and the shortcut's conv and BN shifted by an average pool.
  state["conv1.0.weight"] = state.pop("conv1.weight")
  state["layer2.0.downsample.2.weight"] = state.pop("layer2.0.downsample.1.weight")
  state["layer2.0.downsample.1.weight"] = state.pop("layer2.0.downsample.0.weight")
  with pytest.raises(ValueError, match="deep 3x3 stem") as error:
    convert.torchvision_resnet_to_flax(state, resnet.ResNetTiny())
  assert "average-pooled shortcut" in str(error.value)


def test_load_state_dict_unwraps_training_checkpoints(tmp_path):
  state = random_state_dict(**TINY)
  torch.save(state, tmp_path / "plain.pt")
  wrapped = {f"module.{k}": v for k, v in state.items()}
  wrapped["module.conv1.weight"] = state["conv1.weight"].bfloat16()
  torch.save({"state_dict": wrapped, "epoch": 90}, tmp_path / "wrapped.pth")
  plain = convert.load_state_dict(tmp_path / "plain.pt")
  loaded = convert.load_state_dict(tmp_path / "wrapped.pth")
  assert sorted(loaded) == sorted(plain) == sorted(state)
  assert loaded["conv1.weight"].dtype == np.float32
  np.testing.assert_allclose(loaded["conv1.weight"], plain["conv1.weight"], rtol=1e-2, atol=1e-3)
  np.testing.assert_array_equal(loaded["layer1.0.bn1.running_var"],
                                state["layer1.0.bn1.running_var"].numpy())


def test_load_state_dict_reads_half_precision_safetensors_as_float32(tmp_path):
  state = {"bf16": torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).bfloat16(),
           "f16": torch.linspace(-2, 2, 7).half()}
  safetensors.torch.save_file(state, tmp_path / "w.safetensors")
  loaded = convert.load_state_dict(tmp_path / "w.safetensors")
  for name, tensor in state.items():
    assert loaded[name].dtype == np.float32, name
    np.testing.assert_array_equal(loaded[name], tensor.float().numpy())


def test_load_state_dict_rejects_unknown_and_missing_files(tmp_path):
  np.savez(tmp_path / "w.npz", a=np.zeros(3))
  with pytest.raises(ValueError, match=r"w\.npz.*unsupported"):
    convert.load_state_dict(tmp_path / "w.npz")
  with pytest.raises(FileNotFoundError, match="absent.pth"):
    convert.load_state_dict(tmp_path / "absent.pth")
  with pytest.raises(FileNotFoundError, match="no teacher checkpoint"):
    convert.load_teacher_checkpoint(tmp_path / "absent", resnet.ResNetTiny())


def test_cli_round_trip(tmp_path, capsys):
  torch.save(random_state_dict(**TINY), tmp_path / "tiny.pth")
  output = tmp_path / "teacher"
  argv = ["--input", str(tmp_path / "tiny.pth"), "--arch", "tiny", "--output", str(output)]
  assert convert_weights.main(argv) == 0
  assert f"to {output}" in capsys.readouterr().out
  model = resnet.ResNetTiny()
  restored = convert.load_teacher_checkpoint(output, model)
  expected = convert.torchvision_resnet_to_flax(
      convert.load_state_dict(tmp_path / "tiny.pth"), model)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(restored))
  assert_trees_equal(restored, expected)

  with pytest.raises(ValueError, match=r"shape mismatch: params/conv1/kernel expected "
                     r"\(7, 7, 3, 8\), found \(7, 7, 3, 4\)"):
    convert.load_teacher_checkpoint(output, resnet.ResNetTiny(num_filters=8))

  with pytest.raises(SystemExit):
    convert_weights.main(argv)
  assert "exists; pass --overwrite" in capsys.readouterr().err
  assert convert_weights.main(argv + ["--overwrite"]) == 0


def test_cli_errors(tmp_path, capsys):
  missing = tmp_path / "missing.pth"
  with pytest.raises(SystemExit) as exit_info:
    convert_weights.main(["--input", str(missing), "--arch", "resnet50",
                          "--output", str(tmp_path / "out")])
  assert exit_info.value.code == 2
  assert f"--input {missing}: no such file" in capsys.readouterr().err

  torch.save(random_state_dict(**TINY), tmp_path / "tiny.pth")
  assert convert_weights.main(["--input", str(tmp_path / "tiny.pth"), "--arch", "resnet18",
                               "--output", str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err
  assert err.startswith(f"error: {tmp_path / 'tiny.pth'}: cannot load the weights")
  assert err.count(str(tmp_path / "tiny.pth")) == 1
  assert "shape mismatch: conv1.weight" in err
  assert not (tmp_path / "out").exists()


def _truncated(save):
  def write(path):
    save(random_state_dict(**TINY), path)
    path.write_bytes(path.read_bytes()[:-200])
  return write


# File name -> (writes the file, what the error says after "error: <path>: ").
BAD_FILES = {
    "model.pth": (lambda p: torch.save(torch.nn.Conv2d(3, 4, 3), p),
                  "not a weights-only state dict, it pickles torch.nn.modules.conv.Conv2d; was it "
                  "saved with torch.save(model)? Save model.state_dict() instead"),
    "truncated.pth": (_truncated(torch.save), "corrupt, truncated or not written by torch.save "
                      "(RuntimeError: PytorchStreamReader failed reading zip archive"),
    "random.pth": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(1000)),
                   "corrupt, truncated or not written by torch.save (UnpicklingError: "),
    "empty.pt": (lambda p: p.write_bytes(b""),
                 "corrupt, truncated or not written by torch.save (EOFError)"),
    "truncated.safetensors": (_truncated(safetensors.torch.save_file),
                              "not a readable .safetensors file (SafetensorError: "),
    "checkpoint.pth": (lambda p: torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, p),
                       "not a state dict, these entries are not tensors: ['epoch']"),
    "weights.npz": (lambda p: np.savez(p, a=np.zeros(3)), "unsupported weight file suffix '.npz'"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_cli_reports_bad_weight_files_in_one_line(tmp_path, capsys, name):
  write, message = BAD_FILES[name]
  path = tmp_path / name
  write(path)
  assert convert_weights.main(["--input", str(path), "--arch", "tiny",
                               "--output", str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err
  assert err.startswith(f"error: {path}: {message}"), err
  assert err.count("\n") == 1 and err.count(str(path)) == 1, err
  assert not (tmp_path / "out").exists()
