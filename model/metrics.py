"""Confusion matrix, per-class precision/recall/F1 and the confusion-matrix plot.

Rows of every confusion matrix here are the TRUE classes and columns the
PREDICTED classes. Functions are pure; the plot uses a private matplotlib
Figure (Agg canvas), never pyplot's global state, so it is safe in threads,
workers and headless machines.
"""
from pathlib import Path

import numpy as np


def confusion_matrix(targets, predictions, num_classes):
    """Port of AED_train.updateConfusionMatrix: (target, prediction) pairs of class indices
    counted into an int64 array (K, K), rows = targets, columns = predictions."""
    t = np.asarray(targets, dtype=np.int64).ravel()
    p = np.asarray(predictions, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f'targets ({t.size}) and predictions ({p.size}) differ in length')
    k = int(num_classes)
    if t.size and (t.min() < 0 or p.min() < 0 or t.max() >= k or p.max() >= k):
        raise ValueError(f'class index outside 0..{k - 1}')
    # bincount of the flat index t * K + p fills the matrix in one pass
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def _safe_divide(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def class_metrics(cm):
    """Port of AED_train.calculateMetrics: per-class (precision, recall, f1) as float64 arrays
    (K,). precision = tp / column sum (everything predicted as the class), recall = tp / row
    sum (everything that truly is the class); the original swapped the two (defect 2).
    Undefined values (no predictions, no samples) are 0, never NaN."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    precision = _safe_divide(tp, cm.sum(axis=0))
    recall = _safe_divide(tp, cm.sum(axis=1))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return precision, recall, f1


def normalize_rows(cm):
    """Each row as percentages of its sum; a class with no samples stays 0 (defect 11)."""
    cm = np.asarray(cm, dtype=np.float64)
    return _safe_divide(cm * 100.0, cm.sum(axis=1, keepdims=True))


def plot_confusion_matrix(cm, classes, path, title, normalize=True, max_classes=20):
    """Port of AED_train.showConfusionMatrix: save the matrix as a PNG at path; returns the Path.

    Only the first max_classes classes are drawn (large class counts become unreadable);
    with normalize the rows are percentages of the FULL row, so the cap does not change
    the numbers. Cells carry their value as text.
    """
    # Figure + Agg canvas directly: no pyplot, no global backend switch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    values = normalize_rows(cm) if normalize else cm.astype(np.float64)
    n = min(len(classes), cm.shape[0], max(1, int(max_classes)))
    values = values[:n, :n]
    names = [str(c) for c in list(classes)[:n]]

    size = max(5.0, 0.45 * n + 3.0)
    fig = Figure(figsize=(size, size * 0.9), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    vmax = 100.0 if normalize else max(1.0, float(values.max()) if values.size else 1.0)
    im = ax.imshow(values, interpolation='nearest', cmap='Blues', vmin=0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=10)
    ticks = np.arange(n)
    font = 10 if n <= 10 else 8
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(names, rotation=60, ha='right', fontsize=font)
    ax.set_yticklabels(names, fontsize=font)
    ax.set_xlabel('Predicted label')
    ax.set_ylabel('True label')
    threshold = vmax / 2.0
    for i in range(n):
        for j in range(n):
            v = values[i, j]
            text = f'{v:.0f}' if normalize else f'{int(v)}'
            ax.text(j, i, text, ha='center', va='center', fontsize=font - 1,
                    color='white' if v > threshold else 'black')
    return save_figure(fig, path)


def save_figure(fig, path):
    """Write a matplotlib Figure to path (folders made as needed) and free it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    # drop the figure's references so repeated plots don't accumulate memory
    fig.clear()
    return path
