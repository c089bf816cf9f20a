"""Semantic segmentation metrics from a confusion matrix, with an ignore label.

    confusion = np.zeros((C, C), np.int64)
    for labels, predictions in batches:
      confusion += confusion_matrix(labels, predictions, C)
    scores = segmentation_scores(confusion)     # {"miou", "macc", "oa", "iou", "acc", "present"}
    print(iou_table(scores, labels.SCANNET20_NAMES))

Rows of the confusion matrix are ground-truth classes, columns predicted classes. Points (or
pixels) whose ground truth is the ignore label are left out; a prediction outside
[0, num_classes) for a labelled point is an error.

Convention for the means: mIoU and mAcc average over the classes *present in the ground
truth* of everything accumulated (row sum > 0). A class that never occurs in the ground truth
has no defined recall and an IoU of 0 / FP; it is reported as NaN and left out of the means,
but its false positives still lower the IoU of the classes they were taken from (as missed
points of those classes). With every class present this is the usual ScanNet benchmark mean.
"""

from collections.abc import Sequence

import numpy as np

# The label of unlabelled points and pixels, everywhere (`p2p_jax.data.labels` re-exports it).
IGNORE_LABEL = -1



def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int, *,
                     ignore_label: int = IGNORE_LABEL) -> np.ndarray:
  """Counts (ground truth, prediction) pairs.

  Args:
    labels: int ground truth of any shape; `ignore_label` marks unlabelled elements.
    predictions: int predicted classes, same shape.
    num_classes: C.
    ignore_label: ground truth value to leave out.

  Returns:
    int64 [C, C]: entry (i, j) counts elements of class i predicted as j.

  Raises:
    ValueError: mismatched shapes, or a label or a (counted) prediction outside [0, C).
  """
  labels = np.asarray(labels).reshape(-1)
  predictions = np.asarray(predictions).reshape(-1)
  if labels.shape != predictions.shape:
    raise ValueError(f"{labels.size} labels but {predictions.size} predictions")
  keep = labels != ignore_label
  labels, predictions = labels[keep].astype(np.int64), predictions[keep].astype(np.int64)
  for name, values in (("label", labels), ("prediction", predictions)):
    if values.size and (values.min() < 0 or values.max() >= num_classes):
      raise ValueError(f"{name}s must be in [0, {num_classes}) or the ignore label "
                       f"{ignore_label}; found {values.min()}..{values.max()}")
  return np.bincount(labels * num_classes + predictions,
                     minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: np.ndarray) -> dict[str, object]:
  """IoU, accuracy and their means from a confusion matrix (see the module docstring).

  Args:
    confusion: [C, C] counts, rows ground truth, columns predictions.

  Returns:
    "iou" float64 [C] (TP / (TP + FP + FN), NaN for classes absent from the ground truth),
    "acc" float64 [C] (recall TP / (TP + FN), NaN likewise), "present" bool [C], "miou" and
    "macc" (means over present classes; NaN if none), "oa" (trace / total; NaN if empty),
    all as Python floats except the arrays.
  """
  confusion = np.asarray(confusion, np.float64)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f"expected a square confusion matrix, got shape {confusion.shape}")
  tp = np.diag(confusion)
  gt = confusion.sum(axis=1)
  predicted = confusion.sum(axis=0)
  present = gt > 0
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(present, tp / (gt + predicted - tp), np.nan)
    acc = np.where(present, tp / gt, np.nan)
  total = confusion.sum()
  return {
      "miou": float(np.mean(iou[present])) if present.any() else float("nan"),
      "macc": float(np.mean(acc[present])) if present.any() else float("nan"),
      "oa": float(tp.sum() / total) if total else float("nan"),
      "iou": iou,
      "acc": acc,
      "present": present,
  }


def iou_table(scores: dict[str, object], class_names: Sequence[str], *, digits: int = 1) -> str:
  """A Markdown table of per-class IoU and accuracy (in %), then the means.

  Args:
    scores: the output of `segmentation_scores`.
    class_names: one name per class.
    digits: decimals shown.

  Returns:
    The table as Markdown text; classes absent from the ground truth show "n/a".
  """
  iou, acc = np.asarray(scores["iou"]), np.asarray(scores["acc"])
  if len(class_names) != len(iou):
    raise ValueError(f"{len(class_names)} class names for {len(iou)} classes")
  fmt = lambda x: "n/a" if np.isnan(x) else f"{100 * x:.{digits}f}"
  rows = ["| class | IoU | acc |", "|---|---:|---:|"]
  rows += [f"| {name} | {fmt(i)} | {fmt(a)} |" for name, i, a in zip(class_names, iou, acc)]
  rows.append(f"| **mean** (mIoU, mAcc) | **{fmt(scores['miou'])}** | **{fmt(scores['macc'])}** |")
  rows.append(f"| overall accuracy | | {fmt(scores['oa'])} |")
  return "\n".join(rows) + "\n"
