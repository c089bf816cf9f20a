"""Segmentation metrics against a confusion matrix computed by hand."""

import numpy as np
import pytest

from p2p_jax import metrics

# Ground truth and predictions of 11 points, 4 classes; the last two points are unlabelled,
# so their predictions (one of them out of range) do not count.
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, -1, -1])
PREDICTIONS = np.array([0, 0, 1, 1, 3, 2, 2, 0, 2, 3, 9])
# Rows ground truth, columns predictions, written out by hand.
CONFUSION = np.array([[2, 1, 0, 0],
                      [0, 1, 0, 1],
                      [1, 0, 3, 0],
                      [0, 0, 0, 0]])


def test_confusion_matrix_by_hand_and_ignore_label():
  np.testing.assert_array_equal(metrics.confusion_matrix(LABELS, PREDICTIONS, 4), CONFUSION)
  # Any shape; accumulating chunks gives the whole.
  chunks = sum(metrics.confusion_matrix(LABELS[i:i + 3], PREDICTIONS[i:i + 3], 4)
               for i in range(0, 11, 3))
  np.testing.assert_array_equal(chunks, CONFUSION)
  np.testing.assert_array_equal(
      metrics.confusion_matrix(LABELS[:9].reshape(3, 3), PREDICTIONS[:9].reshape(3, 3), 4),
      CONFUSION)
  # Another ignore value.
  np.testing.assert_array_equal(
      metrics.confusion_matrix(np.where(LABELS < 0, 255, LABELS), PREDICTIONS, 4,
                               ignore_label=255), CONFUSION)


def test_scores_by_hand():
  scores = metrics.segmentation_scores(CONFUSION)
  # IoU = TP / (TP + FP + FN): class 0: 2 / (3 + 3 - 2), class 1: 1 / (2 + 2 - 1),
  # class 2: 3 / (4 + 3 - 3); class 3 never occurs in the ground truth (its one false
  # positive already counts as a miss of class 1).
  iou = [2 / 4, 1 / 3, 3 / 4]
  acc = [2 / 3, 1 / 2, 3 / 4]
  np.testing.assert_allclose(scores["iou"][:3], iou)
  np.testing.assert_allclose(scores["acc"][:3], acc)
  assert np.isnan(scores["iou"][3]) and np.isnan(scores["acc"][3])
  np.testing.assert_array_equal(scores["present"], [True, True, True, False])
  assert scores["miou"] == pytest.approx(np.mean(iou))
  assert scores["macc"] == pytest.approx(np.mean(acc))
  assert scores["oa"] == pytest.approx(6 / 9)


def test_perfect_and_empty():
  perfect = metrics.segmentation_scores(np.diag([5, 0, 7]))
  assert perfect["miou"] == perfect["macc"] == perfect["oa"] == 1.0
  empty = metrics.segmentation_scores(np.zeros((3, 3)))
  assert np.isnan(empty["miou"]) and np.isnan(empty["oa"])


def test_out_of_range_values_are_errors():
  with pytest.raises(ValueError, match="labels must be in"):
    metrics.confusion_matrix(np.array([0, 4]), np.array([0, 0]), 4)
  with pytest.raises(ValueError, match="predictions must be in"):
    metrics.confusion_matrix(np.array([0, 1]), np.array([0, 4]), 4)
  with pytest.raises(ValueError, match="2 labels but 3 predictions"):
    metrics.confusion_matrix(np.array([0, 1]), np.array([0, 1, 2]), 4)


def test_iou_table():
  table = metrics.iou_table(metrics.segmentation_scores(CONFUSION), ["a", "b", "c", "d"])
  lines = table.strip().split("\n")
  assert lines[0] == "| class | IoU | acc |" and len(lines) == 2 + 4 + 2
  assert "| a | 50.0 | 66.7 |" in lines
  assert "| d | n/a | n/a |" in lines
  assert "**52.8**" in lines[-2] and "66.7" in lines[-1]
  with pytest.raises(ValueError, match="3 class names for 4 classes"):
    metrics.iou_table(metrics.segmentation_scores(CONFUSION), ["a", "b", "c"])
