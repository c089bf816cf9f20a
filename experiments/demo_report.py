"""The demo's `results/`: table, JSON, label-efficiency plot, PCA pictures and .ply exports.

    results/
      results.md              mIoU (mean +- std over seeds) per init and label fraction, linear
                              probes, per-class IoU at the smallest fraction, the teacher's 2D
                              scores, pretraining metrics and stage timings
      results.json            the same figures, and every run's
      label_efficiency.png    mIoU against the label fraction, one line per init
      training_curves.png     loss and accuracy against step: teacher, pretraining, fine-tuning
      features_view.png       one val frame: RGB, 2D teacher features, 3D features per init
      features_scene.png      one val scene from above, 3D features per init
      features_<init>.ply     that scene's points coloured by its 3D features' PCA
"""

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from p2p_jax import checkpoints as checkpoints_lib
from p2p_jax import geometry, viz
from p2p_jax.data import frames as frames_lib
from p2p_jax.data import labels as labels_lib
from p2p_jax.data import pipeline
from p2p_jax.methods import ppkt
from p2p_jax.models import convert, resnet
from p2p_jax.tasks import segmentation

NAMES = {"scratch": "scratch", "pointcontrast": "PointContrast", "ppkt": "PPKT"}


def aggregate(c: ml_collections.ConfigDict, runs: list[dict[str, Any]]) -> dict[str, Any]:
  """mIoU/mAcc/OA mean and std over seeds per (init, fraction), and per-init probes."""
  table = {}
  for init in c.study.inits:
    rows = {}
    for fraction in c.study.fractions:
      chosen = [r for r in runs if r["init"] == init and r["mode"] == "finetune"
                and r["fraction"] == fraction]
      rows[f"{fraction:g}"] = _stats(chosen)
    rows["linear_probe"] = _stats([r for r in runs if r["init"] == init
                                   and r["mode"] == "linear_probe"])
    table[init] = rows
  return table


def _stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
  out = {"runs": len(runs)}
  for key in ("miou", "macc", "oa"):
    values = np.array([r[key] for r in runs], np.float64)
    out[key] = float(values.mean()) if len(values) else None
    out[key + "_std"] = float(values.std()) if len(values) else None
  return out


def _cell(stats: dict[str, Any]) -> str:
  if stats["miou"] is None:
    return "-"
  text = f"{100 * stats['miou']:.1f}"
  return text + (f" ± {100 * stats['miou_std']:.1f}" if stats["runs"] > 1 else "")


def markdown(c, table, runs, teacher_result, pretrained, timings) -> str:
  fractions = [f"{f:g}" for f in c.study.fractions]
  lines = ["# Label-efficient 3D semantic segmentation on the synthetic rooms", "",
           f"Student: `{c.student}`; val scenes: every point, ScanNet-20 classes present in "
           "the ground truth. mIoU in %, mean ± std over seeds "
           f"(seeds per fraction: {', '.join(str(s) for s in c.study.seeds)}).", "",
           "| init | " + " | ".join(f"{100 * float(f):g}% labels" for f in fractions)
           + " | linear probe |",
           "|---" * (len(fractions) + 2) + "|"]
  for init in c.study.inits:
    row = table[init]
    lines.append(f"| {NAMES[init]} | " + " | ".join(_cell(row[f]) for f in fractions)
                 + f" | {_cell(row['linear_probe'])} |")
  if "ppkt" in table and "scratch" in table:
    gains = [table["ppkt"][f]["miou"] - table["scratch"][f]["miou"] for f in fractions]
    lines += ["", "PPKT - scratch (mIoU points): "
              + ", ".join(f"{100 * float(f):g}%: {100 * g:+.1f}" for f, g in zip(fractions, gains))]
    probe = (table["ppkt"]["linear_probe"]["miou"], table["scratch"]["linear_probe"]["miou"])
    lines.append(f"Linear probe, PPKT / randomly initialised student: "
                 f"{100 * probe[0]:.1f} / {100 * probe[1]:.1f} = "
                 f"{probe[0] / max(probe[1], 1e-9):.2f}x")
  smallest = f"{c.study.fractions[0]:g}"
  lines += ["", f"## Per-class IoU at {100 * c.study.fractions[0]:g}% labels (seed 0)", "",
            "| class | " + " | ".join(NAMES[i] for i in c.study.inits) + " |",
            "|---" * (len(c.study.inits) + 1) + "|"]
  per_class = {i: next((r["per_class_iou"] for r in runs if r["init"] == i and r["mode"] ==
                        "finetune" and f"{r['fraction']:g}" == smallest and r["seed"] == 0), {})
               for i in c.study.inits}
  for _, name in labels_lib.SCANNET20:
    cells = [per_class[i].get(name) for i in c.study.inits]
    if all(v is None for v in cells):
      continue
    lines.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{100 * v:.1f}"
                                              for v in cells) + " |")
  lines += ["", f"## The 2D teacher on its held-out frames ({c.teacher.arch}, "
            f"{c.teacher.total_steps} steps)", "",
            f"Pixel accuracy {100 * teacher_result['pixel_accuracy']:.1f}%, "
            f"2D mIoU {100 * teacher_result['miou']:.1f}%.", "", "| class | IoU |", "|---|---|"]
  lines += [f"| {name} | {100 * v:.1f} |" for name, v in teacher_result["per_class_iou"].items()
            if v is not None]
  lines += ["", "## Stages", "",
            f"- Teacher: {teacher_result.get('train_frames', '?')} training frames of "
            f"{len(teacher_result.get('train_scenes', []))} rooms; held-out 2D mIoU "
            f"{100 * teacher_result['miou']:.1f}%."]
  for method, last in pretrained.items():
    if last:
      lines.append(f"- {NAMES[method]} pretraining, {last['step']} steps: final loss "
                   f"{last['loss']:.3f}, pair top-1 {100 * last['pair_accuracy']:.1f}%.")
  lines.append("- Time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
               + f"; total {sum(timings.values()) / 60:.1f} min.")
  return "\n".join(lines) + "\n"


def plot(path: str, c, table) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4))
  x = np.array(c.study.fractions) * 100
  for init in c.study.inits:
    rows = [table[init][f"{f:g}"] for f in c.study.fractions]
    y = np.array([100 * r["miou"] for r in rows])
    err = np.array([100 * r["miou_std"] for r in rows])
    line = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=NAMES[init])
    probe = table[init]["linear_probe"]["miou"]
    if probe is not None:
      ax.axhline(100 * probe, ls=":", color=line[0].get_color(), lw=1)
  ax.set_xscale("log")
  ax.set_xticks(x)
  ax.set_xticklabels([f"{v:g}%" for v in x])
  ax.set_xlabel("labelled training scenes")
  ax.set_ylabel("val mIoU (%)")
  ax.set_title("fine-tuning (lines) and linear probes (dotted)", fontsize=9)
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(path: str, c, workdir: str, teacher_result, runs) -> None:
  """Loss and accuracy against step for every stage: the teacher (and its held-out mIoU),
  each pretraining, and the fine-tuning runs at 100% of the labels (one line per init)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex="col")
  curve = teacher_result.get("curve", {})
  steps = curve.get("step", [])
  axes[0, 0].plot(steps, curve.get("loss", []), label="training loss")
  axes[1, 0].plot(steps, curve.get("pixel_accuracy", []), label="training pixel accuracy")
  held = [(s, m) for s, m in zip(steps, curve.get("holdout_miou", [])) if m is not None]
  if held:
    axes[1, 0].plot(*zip(*held), "o-", label="held-out 2D mIoU")
  axes[0, 0].set_title(f"2D teacher ({c.teacher.arch})", fontsize=9)
  for method in [m for m in ("ppkt", "pointcontrast") if m in c.study.inits]:
    log = _read_jsonl(os.path.join(workdir, method, "metrics.jsonl"))
    x = [r["step"] for r in log]
    axes[0, 1].plot(x, [r["loss"] for r in log], label=NAMES[method])
    axes[1, 1].plot(x, [r["pair_accuracy"] for r in log], label=NAMES[method])
  axes[0, 1].set_title("3D pretraining (contrastive)", fontsize=9)
  axes[1, 1].set_ylabel("pair top-1 accuracy")
  for init in c.study.inits:
    run = next((r for r in runs if r["init"] == init and r["mode"] == "finetune"
                and r["fraction"] == max(c.study.fractions) and r["seed"] == 0), None)
    if run is None:
      continue
    log = _read_jsonl(os.path.join(workdir, "finetune", run["name"], "metrics.jsonl"))
    x = [r["step"] for r in log]
    axes[0, 2].plot(x, [r["loss"] for r in log], label=NAMES[init])
    axes[1, 2].plot(x, [r["accuracy"] for r in log], label=NAMES[init])
  axes[0, 2].set_title(f"fine-tuning, {100 * max(c.study.fractions):g}% labels", fontsize=9)
  axes[1, 2].set_ylabel("training point accuracy")
  axes[0, 0].set_ylabel("loss")
  for ax in axes.flat:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  for ax in axes[1]:
    ax.set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _backbones(configs, checkpoints, inits):
  """Each init's backbone as a function (points, colors, mask) -> features."""
  f = configs["finetune"]
  model = segmentation.make_model(f.student, "linear_probe")
  variables = segmentation.init_variables(model, jax.random.key(f.seed), f.crop.num_points)
  out = {}
  for init in inits:
    v = variables
    if checkpoints[init]:
      v, _ = checkpoints_lib.load_student_backbone(checkpoints[init], model, variables)
    apply = jax.jit(lambda v, p, c, m: model.apply(v, p, c, m, train=False)[1]["features"])
    out[init] = lambda p, c, m, v=v, apply=apply: np.asarray(apply(v, p, c, m))
  return out


def feature_pictures(results_dir, c, configs, workdir, checkpoints) -> list[str]:
  """PCA pictures of one val frame (2D teacher and 3D features) and one val scene."""
  from p2p_jax.data.scannet_frames import load_frames
  written = []
  backbones = _backbones(configs, checkpoints, c.study.inits)
  p = configs["ppkt"]
  frames = load_frames(p.data.data_dir, "val", config=p.data.frames_config)
  # The first val scene's frame with the most depth variation: a view into the room.
  candidates = [frames[i] for i in range(min(len(frames), c.world.frames_per_scene))]
  frame = max(candidates, key=lambda fr: float(np.std(np.asarray(fr["depth"], np.float32))))
  scene_name = frame["scene"].decode() if isinstance(frame["scene"], bytes) else frame["scene"]
  depth = np.asarray(frame["depth"])
  image = np.asarray(frame["image"], np.uint8)
  # As the pretraining pipeline reads a frame: its back-projection, and each point's colour
  # through the colour camera (constant grey for a student trained on geometry alone).
  pairs = ppkt.pair_config(p)
  cam_points, valid = pairs.depth_range.back_project(jnp.asarray(depth),
                                                     jnp.asarray(frame["depth_intrinsics"]))
  geometry_fields = {k: jnp.asarray(frame[k]) for k in frames_lib.GEOMETRY_FIELDS}
  pixels, _ = frames_lib.color_pixels(geometry_fields, cam_points)
  all_colors = np.asarray(frames_lib.point_colors(jnp.asarray(image), pixels, pairs.colors))
  world = np.asarray(geometry.transform_points(jnp.asarray(frame["cam_to_world"]), cam_points))
  rows, cols = np.nonzero(np.asarray(valid))
  points = world[rows, cols]
  points = points - np.array([*points[:, :2].mean(axis=0), 0.0], np.float32)
  colors = all_colors[rows, cols]
  mask = np.ones(len(points), bool)

  teacher_model = resnet.VARIANTS[c.teacher.arch]()
  teacher_vars = convert.load_teacher_checkpoint(p.ppkt.teacher.checkpoint, teacher_model)
  teacher_in = pipeline.teacher_image(image, (0, 0, *depth.shape), False,
                                      tuple(p.ppkt.image_hw))
  _, stages = resnet.frozen_features(teacher_model, teacher_vars,
                                     resnet.preprocess(teacher_in[None]))
  fmap = stages[p.ppkt.teacher.layer][0]
  dense = jax.image.resize(fmap, depth.shape + (fmap.shape[-1],), "bilinear")
  dense = np.asarray(dense).reshape(-1, fmap.shape[-1])
  teacher_pca = viz.pca_colors(dense).reshape(depth.shape + (3,))
  panels = [("RGB", image), (f"2D teacher ({c.teacher.arch} {p.ppkt.teacher.layer})", teacher_pca)]
  for init, backbone in backbones.items():
    feats = backbone(points[None], colors[None], mask[None])[0]
    panels.append((f"3D: {NAMES[init]}", viz.splat(np.stack([rows, cols], 1),
                                                   viz.pca_colors(feats), depth.shape)))
  path = os.path.join(results_dir, "features_view.png")
  viz.save_panels(path, panels, title=f"val frame {scene_name}/{frame['frame']}: "
                  "first 3 principal components of the features as RGB")
  written.append(path)

  # A whole val scene: per-cell blocks as in evaluation, features spread to every point.
  f = configs["finetune"]
  scene = segmentation.load_split(f.data, "val")[0]
  crop = segmentation.crop_config(f)
  prepared = segmentation.prepare_eval_scene(scene, crop)
  panels = [("RGB", None)]
  scene_feats = {}
  for init, backbone in backbones.items():
    feats = None
    for block, members, nearest in zip(prepared.blocks, prepared.cells, prepared.nearest):
      out = backbone(block["points"][None], block["colors"][None], block["point_mask"][None])[0]
      if feats is None:
        feats = np.zeros((len(scene["points"]), out.shape[-1]), np.float32)
      feats[members] = out[nearest]
    scene_feats[init] = viz.pca_colors(feats)
    ply = os.path.join(results_dir, f"features_{init}.ply")
    viz.write_ply(ply, scene["points"], scene_feats[init], labels=scene["labels"])
    written.append(ply)
  written.append(_top_view(os.path.join(results_dir, "features_scene.png"), scene, scene_feats))
  return written


def _top_view(path, scene, scene_feats) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  points = scene["points"]
  order = np.argsort(points[:, 2])  # higher points drawn last, as seen from above
  below_ceiling = points[order, 2] < np.percentile(points[:, 2], 90)
  order = order[below_ceiling]
  panels = [("RGB", scene["colors"] / 255.0)] + [(NAMES[k], v) for k, v in scene_feats.items()]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
  for ax, (title, colors) in zip(axes, panels):
    ax.scatter(points[order, 0], points[order, 1], c=colors[order], s=1.0, linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.axis("off")
  fig.suptitle(f"val scene {scene['scene']} from above (ceiling removed): 3D features' PCA",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def write_results(results_dir, c, configs, workdir, runs, teacher_result, pretrained,
                  checkpoints, timings) -> None:
  os.makedirs(results_dir, exist_ok=True)
  table = aggregate(c, runs)
  with open(os.path.join(results_dir, "results.md"), "w") as f:
    f.write(markdown(c, table, runs, teacher_result, pretrained, timings))
  plot(os.path.join(results_dir, "label_efficiency.png"), c, table)
  plot_curves(os.path.join(results_dir, "training_curves.png"), c, workdir, teacher_result, runs)
  pictures = feature_pictures(results_dir, c, configs, workdir, checkpoints)
  with open(os.path.join(results_dir, "results.json"), "w") as f:
    json.dump({"table": table, "runs": runs, "teacher": teacher_result,
               "pretraining": pretrained, "timings_seconds": timings,
               "config": {**c.to_dict(), "stages": {k: v.to_dict() for k, v in configs.items()}},
               "pictures": [os.path.basename(p) for p in pictures]},
              f, indent=1, default=str)
  print(open(os.path.join(results_dir, "results.md")).read())
