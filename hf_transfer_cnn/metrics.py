"""Classification metrics from logits: accuracy, top-5, macro-F1, per-class accuracy, confusion matrix."""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "classification_metrics", "per_class_accuracy", "compute_metrics_fn"]


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> np.ndarray:
    """Rows: true class, columns: predicted class; rows with a negative (ignored) label are left out."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    keep = labels >= 0
    labels, preds = labels[keep], preds[keep]
    if len(labels) and (max(labels.max(), preds.max()) >= num_labels or preds.min() < 0):
        raise ValueError(f"labels/predictions outside 0..{num_labels - 1}.")
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class (NaN for classes absent from the labels)."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """accuracy, top5_accuracy (with at least 5 classes), macro_f1 (over classes present in labels or preds).

    Rows with a negative label (-100, the loss's ignore index) are left out of every metric."""
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"Expected logits [N, C] and labels [N], got {logits.shape} and {labels.shape}.")
    num_labels = logits.shape[1]
    scored = labels >= 0  # -100 (and any negative label): ignored, as by the cross-entropy loss
    logits, labels = logits[scored], labels[scored]
    preds = logits.argmax(axis=1)
    out = {"accuracy": float((preds == labels).mean()) if len(labels) else float("nan")}
    if num_labels >= 5 and len(labels):
        top5 = np.argpartition(-logits, 4, axis=1)[:, :5]
        out["top5_accuracy"] = float((top5 == labels[:, None]).any(axis=1).mean())
    cm = confusion_matrix(labels, preds, num_labels)
    tp = np.diag(cm).astype(float)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    present = (tp + fp + fn) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    out["macro_f1"] = float(f1[present].mean()) if present.any() else float("nan")
    return out


def compute_metrics_fn(eval_pred) -> dict[str, float]:
    """`Trainer(compute_metrics=...)` adapter."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return classification_metrics(logits, labels)
