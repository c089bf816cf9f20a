"""Preparation is atomic: a killed or interrupted step is detected and redone, never used.

Covers the synthetic rooms (ScanNet and S3DIS layouts), the TFDS build, the frame pairs, the
teacher's export and the teacher cache. Kills are real SIGKILLs of a subprocess where the
step runs long enough to be hit; elsewhere an exception raised in the middle of a write stands
in for the kill (it leaves the same files behind, since no clean-up code runs at that point).
"""

import dataclasses
import glob
import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_pipeline import make_frames
from test_train_ppkt import PAIRS

from p2p_jax.data import frame_pairs, s3dis, scannet, synthetic, teacher_cache, teacher_frames
from p2p_jax.data.scannet_frames import ScannetFrames, build_frames, load_frames
from p2p_jax.data.synthetic import s3dis_writer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two scenes on two spawned workers (as `prepare` runs them on a two-core machine), each
# rendering for about a second: long enough to be killed while writing frames.
ROOMS = dict(scenes=2, frames_per_scene=150, height=96, width=128, seed=5, val_fraction=0.5,
             points_per_m2=60.0, workers=2)
SMALL = dict(scenes=2, frames_per_scene=5, height=24, width=32, seed=5, val_fraction=0.5,
             points_per_m2=30.0, workers=1)
GENERATE = ("import json, sys\n"
            "from p2p_jax.data import synthetic\n"
            "synthetic.generate_if_asked(sys.argv[1], json.loads(sys.argv[2]))\n")


def digest(root):
  """{path relative to root: sha256 of the file, or "dir"} of everything under root."""
  out = {}
  for folder, dirs, names in os.walk(root):
    for name in dirs:
      out[os.path.relpath(os.path.join(folder, name), root)] = "dir"
    for name in names:
      with open(os.path.join(folder, name), "rb") as f:
        out[os.path.relpath(os.path.join(folder, name), root)] = hashlib.sha256(
            f.read()).hexdigest()
  return out


def start(code, *args):
  """A Python subprocess in its own session (so the test can clean up whatever it leaves)."""
  return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)


def kill(proc):
  """SIGKILL of the process alone (not its workers), as the OOM killer or a crash would."""
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def kill_group(proc):
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass


def wait_for(pattern, proc, timeout=120):
  deadline = time.time() + timeout
  while not glob.glob(pattern):
    assert proc.poll() is None, f"finished before {pattern} appeared"
    assert time.time() < deadline, f"no {pattern} after {timeout} s"
    time.sleep(0.005)


def frame_files(out):
  return glob.glob(os.path.join(out, "scans", "*", "color", "*.jpg"))


def test_generation_killed_at_random_points_restarts_into_the_uninterrupted_dataset(tmp_path):
  """The review's acceptance test: SIGKILLs of `generate_if_asked` (what `prepare` runs) at
  seeded random points, and once while frames are being written; the restarted run's tree
  equals, byte for byte, that of a run never killed."""
  settings = json.dumps(ROOMS)
  reference, out = str(tmp_path / "reference"), str(tmp_path / "killed")
  began = time.perf_counter()
  done = subprocess.run([sys.executable, "-c", GENERATE, reference, settings], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  duration = time.perf_counter() - began
  procs = []
  try:
    # While the workers write frames: the kill stops them too (no orphan writes on).
    procs.append(start(GENERATE, out, settings))
    wait_for(os.path.join(out, "scans", "*", "color", "*.jpg"), procs[-1])
    kill(procs[-1])
    assert procs[-1].returncode == -signal.SIGKILL
    time.sleep(0.5)
    written = len(frame_files(out))
    time.sleep(1.0)
    assert len(frame_files(out)) == written < 2 * ROOMS["frames_per_scene"]
    assert digest(out) != digest(reference)
    # At random points of later runs: start-up, clean-up of the partial output, rendering.
    rng = random.Random(0)
    for _ in range(3):
      procs.append(start(GENERATE, out, settings))
      time.sleep(rng.uniform(0.1, 0.7) * duration)
      kill(procs[-1])
    done = subprocess.run([sys.executable, "-c", GENERATE, out, settings], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert digest(out) == digest(reference)
  finally:
    for proc in procs:
      kill_group(proc)


def children(pid):
  """The pids whose parent is `pid` (from /proc)."""
  out = []
  for entry in os.listdir("/proc"):
    try:
      with open(f"/proc/{entry}/stat") as f:
        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
          out.append(int(entry))
    except (OSError, ValueError, IndexError):
      continue
  return out


def test_a_worker_killed_mid_scene_stops_the_generation_with_an_error_not_a_hang(tmp_path):
  """A worker SIGKILLed while rendering (the OOM killer, a crash in a native library): the
  generation ends with an error naming the output and the lost worker, within seconds, and
  leaves the marker incomplete (a restart redoes it). A process pool that only replaces the
  worker would wait forever for its scene."""
  out = str(tmp_path / "rooms")
  proc = subprocess.Popen([sys.executable, "-c", GENERATE, out, json.dumps(ROOMS)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  try:
    wait_for(os.path.join(out, "scans", "*", "color", "*.jpg"), proc)
    workers = [pid for pid in children(proc.pid)
               if "spawn_main" in open(f"/proc/{pid}/cmdline").read()]
    assert len(workers) == ROOMS["workers"], workers
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
  finally:
    kill_group(proc)
  assert proc.returncode not in (0, None)
  assert "worker" in stderr and out in stderr, stderr[-3000:]
  marker = json.load(open(os.path.join(out, synthetic.MARKER)))
  assert marker["complete"] is False


def interrupt_after(monkeypatch, module, name, calls):
  """Makes `module.name` raise KeyboardInterrupt on its `calls`-th call (an in-process kill)."""
  original, count = getattr(module, name), [0]

  def wrapper(*args, **kwargs):
    count[0] += 1
    if count[0] == calls:
      raise KeyboardInterrupt(f"killed in {name}")
    return original(*args, **kwargs)
  monkeypatch.setattr(module, name, wrapper)


@pytest.mark.parametrize("restart", ["generate_if_asked", "command line"])
def test_an_interrupted_generation_is_named_removed_and_redone(tmp_path, monkeypatch, caplog,
                                                                restart):
  reference, out = str(tmp_path / "reference"), str(tmp_path / "out")
  synthetic.generate_if_asked(reference, SMALL)
  with monkeypatch.context() as m:
    interrupt_after(m, scannet, "write_frame", 7)  # in the second scene
    with pytest.raises(KeyboardInterrupt):
      synthetic.generate_if_asked(out, SMALL)
  assert os.path.isdir(os.path.join(out, "scans", "scene0001_00"))
  with caplog.at_level(logging.WARNING):
    if restart == "generate_if_asked":
      assert synthetic.generate_if_asked(out, SMALL)
    else:  # its own partial output needs no --overwrite
      synthetic.main(["--out", out, "--scenes", "2", "--frames-per-scene", "5", "--height", "24",
                      "--width", "32", "--seed", "5", "--val-fraction", "0.5",
                      "--points-per-m2", "30", "--workers", "1"])
  assert out in caplog.text and "interrupted" in caplog.text
  assert digest(out) == digest(reference)
  assert not synthetic.generate_if_asked(out, SMALL)  # complete now: reused


def test_a_users_export_without_generator_settings_is_used_and_never_deleted(tmp_path, caplog):
  out = str(tmp_path / "export")
  files = {"scans/scene0000_00/color/0.jpg": b"a real frame",
           "scans/scene0000_00/scene0000_00_vh_clean_2.ply": b"a real mesh",
           "scannetv2_train.txt": b"scene0000_00\n", scannet.LABEL_MAP_FILE: b"a label map"}
  for name, data in files.items():
    os.makedirs(os.path.dirname(os.path.join(out, name)), exist_ok=True)
    with open(os.path.join(out, name), "wb") as f:
      f.write(data)
  before = digest(out)
  with caplog.at_level(logging.WARNING):
    assert not synthetic.generate_if_asked(out, SMALL)
  assert digest(out) == before
  assert out in caplog.text and "never deleted" in caplog.text


def test_a_complete_dataset_of_other_settings_is_used_with_the_difference_named(tmp_path,
                                                                               caplog):
  """Stages share one folder of rooms: a finished generation is never regenerated or
  deleted under another stage's settings, and the difference is logged."""
  out = str(tmp_path / "out")
  assert synthetic.generate_if_asked(out, SMALL)
  before = digest(out)
  assert not synthetic.generate_if_asked(out, {**SMALL, "workers": 2})  # same files
  assert "asks for" not in caplog.text
  assert not synthetic.generate_if_asked(out, {**SMALL, "frames_per_scene": 3})
  assert digest(out) == before
  assert out in caplog.text and "frames_per_scene=3" in caplog.text


S3DIS = dict(scenes=4, areas=2, seed=4, points_per_m2=150.0)


def test_s3dis_rooms_killed_while_writing_restart_into_the_uninterrupted_tree(tmp_path):
  """The S3DIS writer stages its tree beside the target and renames it; a kill leaves no
  tree that looks complete, and the restart removes the kill's staging folder."""
  code = ("import json, sys\n"
          "from p2p_jax.data.synthetic import s3dis_writer\n"
          "s3dis_writer.generate_if_asked(sys.argv[1], json.loads(sys.argv[2]))\n")
  reference, out = str(tmp_path / "reference"), str(tmp_path / "killed")
  s3dis_writer.generate_if_asked(reference, S3DIS)
  proc = start(code, out, json.dumps(S3DIS))
  try:
    wait_for(os.path.join(out, ".Stanford3dDataset*", "Area_1", "*", "*.txt"), proc)
    kill(proc)
  finally:
    kill_group(proc)
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(out, s3dis.ROOT))
  assert s3dis_writer.generate_if_asked(out, S3DIS)
  assert digest(out) == digest(reference)


def test_a_killed_tfds_build_is_not_reused(tmp_path):
  """TFDS writes into `incomplete.*` and renames on success (`utils.incomplete_dir`), so a
  killed build is not `is_prepared()` and the next build writes every frame."""
  rooms, data_dir = str(tmp_path / "rooms"), str(tmp_path / "tfds")
  synthetic.generate(rooms, num_scenes=2, frames_per_scene=60, height=24, width=32, seed=1,
                     val_fraction=0.0, points_per_m2=20.0, workers=1)
  code = ("import sys\n"
          "from p2p_jax.data.scannet_frames import build_frames\n"
          "build_frames(sys.argv[1], sys.argv[2], config='skip1')\n")
  proc = start(code, rooms, data_dir)
  try:
    wait_for(os.path.join(data_dir, "scannet_frames", "skip1", "incomplete.*", "*"), proc)
    kill(proc)
  finally:
    kill_group(proc)
  assert proc.returncode == -signal.SIGKILL
  assert not ScannetFrames(data_dir=data_dir, config="skip1").is_prepared()
  build_frames(rooms, data_dir, config="skip1")
  assert len(load_frames(data_dir, "train", "skip1")) == 120


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("frames")
  synthetic.generate(str(root / "rooms"), num_scenes=2, frames_per_scene=4, height=24, width=32,
                     seed=3, val_fraction=0.0, points_per_m2=20.0, workers=1)
  build_frames(str(root / "rooms"), str(root / "tfds"), config="skip1")
  return str(root / "tfds")


def test_a_truncated_pair_list_is_named_and_recomputed_and_a_temporary_one_ignored(
    frames_dir, caplog):
  path = frame_pairs.pairs_path(frames_dir, "train", "skip1")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp.npz", "wb") as f:  # a write killed before its rename
    f.write(b"PK\x03\x04 half a zip")
  pairs = frame_pairs.mine_pairs(frames_dir, "train", "skip1", progress=False)
  assert len(pairs) > 0
  with open(path, "rb") as f:
    data = f.read()
  for cut in (len(data) // 2, 0):  # truncated, or renamed before its data reached the disk
    with open(path, "wb") as f:
      f.write(data[:cut])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      again = frame_pairs.mine_pairs(frames_dir, "train", "skip1", progress=False)
    assert path in caplog.text
    np.testing.assert_array_equal(again.index, pairs.index)
    with open(path, "rb") as f:
      assert f.read() == data


class KilledFile:
  """A file opened for writing that is killed half way through its first write."""

  def __init__(self, file):
    self.file = file

  def write(self, text):
    self.file.write(text[:max(1, len(text) // 2)])
    self.file.flush()
    raise KeyboardInterrupt("killed while writing")

  def writelines(self, lines):
    self.write("".join(lines))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.file.close()


def kill_writes_of(monkeypatch, module, prefix):
  """Kills `module`'s writes of files whose name starts with `prefix` (its `open`)."""
  def fake_open(path, mode="r", *args, **kwargs):
    file = open(path, mode, *args, **kwargs)
    if "w" in mode and os.path.basename(path).startswith(prefix):
      return KilledFile(file)
    return file
  monkeypatch.setattr(module, "open", fake_open, raising=False)


def test_a_teacher_cache_killed_while_writing_its_metadata_is_rebuilt_not_read(tmp_path,
                                                                              monkeypatch):
  """`ppkt.prepare` takes a cache with `cache.json` as complete; a kill mid-write must not
  leave one."""
  config = dataclasses.replace(PAIRS, views_per_frame=2)
  frames = make_frames(3, seed=1)
  features = lambda images: np.asarray(images, np.float32)[:, ::8, ::8]
  directory = str(tmp_path / "cache")
  metadata = teacher_cache.cache_metadata(teacher="test", num_frames=3, seed=0, config=config)
  build = lambda: teacher_cache.build_cache(directory, frames, features, config, seed=0,
                                            metadata=metadata, batch_size=4, progress=False)
  with monkeypatch.context() as m:
    kill_writes_of(m, teacher_cache, teacher_cache.METADATA)
    with pytest.raises(KeyboardInterrupt):
      build()
  assert not os.path.exists(os.path.join(directory, teacher_cache.METADATA))
  with pytest.raises(FileNotFoundError, match="no teacher cache"):
    teacher_cache.TeacherCache(directory, metadata)
  cache = build()
  assert len(cache) == 3 and cache.features(2).shape[0] == 2


def test_a_teacher_export_killed_while_writing_its_lists_is_redone(tmp_path, monkeypatch):
  manual, root = str(tmp_path / "manual"), str(tmp_path / "teacher")
  train, held_out = ["scene0000_00", "scene0001_00"], ["scene0002_00", "scene0003_00"]
  for scene in train + held_out:
    os.makedirs(os.path.join(manual, "scans", scene))
  with open(os.path.join(manual, scannet.LABEL_MAP_FILE), "w") as f:
    f.write("a label map\n")
  with monkeypatch.context() as m:
    kill_writes_of(m, teacher_frames, "scannetv2_val")
    with pytest.raises(KeyboardInterrupt):
      teacher_frames.write_export(manual, root, train, held_out)
  teacher_frames.write_export(manual, root, train, held_out)
  export = os.path.join(root, "export")
  for name, scenes in (("scannetv2_train.txt", train), ("scannetv2_val.txt", held_out)):
    with open(os.path.join(export, name)) as f:
      assert f.read().split() == scenes
  assert sorted(os.listdir(os.path.join(export, "scans"))) == train + held_out
  assert sorted(os.listdir(root)) == ["export"]
