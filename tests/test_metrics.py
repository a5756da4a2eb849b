"""Confusion matrix and per-class metrics (defects 2 and 11)."""
import cv2
import numpy as np
import pytest

from model.metrics import class_metrics, confusion_matrix, normalize_rows, plot_confusion_matrix


def test_confusion_matrix_rows_are_targets():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 4)
    assert cm.dtype == np.int64 and cm.shape == (4, 4)
    expected = np.array([[1, 1, 0, 0],
                         [0, 1, 0, 0],
                         [1, 0, 2, 0],
                         [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)


def test_precision_recall_not_swapped_and_no_nan():
    # class 0: 8 true, 6 found; class 1: 2 true, all found, plus 2 false alarms;
    # class 2: never occurs and never predicted (empty row and column)
    cm = np.array([[6, 2, 0],
                   [0, 2, 0],
                   [0, 0, 0]])
    precision, recall, f1 = class_metrics(cm)
    np.testing.assert_allclose(precision, [1.0, 0.5, 0.0])
    np.testing.assert_allclose(recall, [0.75, 1.0, 0.0])
    np.testing.assert_allclose(f1, [2 * 0.75 / 1.75, 2 * 0.5 / 1.5, 0.0])
    assert not np.isnan(np.concatenate([precision, recall, f1])).any()


def test_normalize_rows_empty_class_is_zero():
    cm = np.array([[3, 1], [0, 0]])
    with np.errstate(all='raise'):  # no division by zero even as a warning
        out = normalize_rows(cm)
    np.testing.assert_allclose(out, [[75.0, 25.0], [0.0, 0.0]])


@pytest.mark.parametrize('normalize', [True, False])
def test_plot_confusion_matrix_draws_the_matrix(tmp_path, normalize):
    cm = confusion_matrix(np.arange(30) % 25, (np.arange(30) + 1) % 25, 25)
    classes = [f'class_{i}' for i in range(25)]
    path = plot_confusion_matrix(cm, classes, tmp_path / 'sub' / 'cm.png', 'test',
                                 normalize=normalize, max_classes=20)
    img = cv2.imread(str(path))  # (H, W, 3) BGR
    # 100 dpi, 0.45 in per drawn class plus 3 in: the 20 drawn classes set the size
    assert img.shape == (1080, 1200, 3)
    # not blank: white background, black text, and the colour map's dark blue cells
    assert (img == 255).all(axis=2).mean() > 0.1 and (img < 60).all(axis=2).any()
    blue = (img[..., 0].astype(int) - img[..., 2]) > 100
    assert blue.sum() > 500
    few = plot_confusion_matrix(cm, classes, tmp_path / 'few.png', 'test', max_classes=4)
    assert cv2.imread(str(few)).shape == (450, 500, 3)  # the 5 in minimum
