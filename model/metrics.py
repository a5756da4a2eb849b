"""Confusion matrix (rows: true classes, columns: predicted), per-class metrics and the plot."""
import numpy as np


def confusion_matrix(targets, predictions, num_classes):
    """Port of AED_train.updateConfusionMatrix: class-index pairs counted into int64 (K, K)."""
    t = np.asarray(targets, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    # bincount of the flat index t * K + p fills the matrix in one pass
    return np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _safe_divide(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def class_metrics(cm):
    """Port of AED_train.calculateMetrics: per-class (precision, recall, f1), (K,) each, with
    precision and recall no longer swapped (defect 2); undefined values are 0, never NaN."""
    tp = np.diag(cm)
    precision = _safe_divide(tp, cm.sum(axis=0))
    recall = _safe_divide(tp, cm.sum(axis=1))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return precision, recall, f1


def normalize_rows(cm):
    """Each row as percentages of its sum; a class with no samples stays 0 (defect 11)."""
    return _safe_divide(cm * 100.0, cm.sum(axis=1, keepdims=True))


def plot_confusion_matrix(cm, classes, path, title, normalize=True, max_classes=20):
    """Port of AED_train.showConfusionMatrix; returns the Path. Only the first max_classes
    classes are drawn; normalized rows are percentages of the full row all the same."""
    from matplotlib.figure import Figure  # never pyplot's global state: safe in threads and headless

    n = min(len(classes), max_classes)
    values = (normalize_rows(cm) if normalize else np.asarray(cm, dtype=np.float64))[:n, :n]
    names = [str(c) for c in classes[:n]]
    size = max(5.0, 0.45 * n + 3.0)
    fig = Figure(figsize=(size, size * 0.9), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    vmax = 100.0 if normalize else max(1.0, float(values.max()))
    im = ax.imshow(values, interpolation='nearest', cmap='Blues', vmin=0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=10)
    font = 10 if n <= 10 else 8
    ax.set_xticks(range(n), names, rotation=60, ha='right', fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set(xlabel='Predicted label', ylabel='True label')
    for i in range(n):
        for j in range(n):
            v = values[i, j]
            text = f'{v:.0f}' if normalize else f'{int(v)}'
            ax.text(j, i, text, ha='center', va='center', fontsize=font - 1,
                    color='white' if v > vmax / 2 else 'black')
    return save_figure(fig, path)


def save_figure(fig, path):
    """Write a matplotlib Figure to path (folders made as needed) and free it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    # drop the figure's references so repeated plots don't accumulate memory
    fig.clear()
    return path
