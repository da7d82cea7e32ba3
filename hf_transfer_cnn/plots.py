"""Training curves and confusion-matrix PNGs (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["plot_training_curves", "plot_confusion_matrix"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(log_history: Sequence[dict], path: str | os.PathLike,
                         marks: Sequence[tuple[int, int]] = ()) -> str:
    """Loss (train/eval), eval accuracy and learning rate against the step; `marks` = (step, trainable stages)
    of each unfreeze, drawn as vertical lines."""
    plt = _plt()
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    lrs = [(e["step"], e["learning_rate"]) for e in log_history if "learning_rate" in e and "step" in e]
    evl = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    acc = [(e["step"], e["eval_accuracy"]) for e in log_history if "eval_accuracy" in e]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [
        (axes[0], "loss", [("train", train), ("eval", evl)]),
        (axes[1], "eval accuracy", [("eval", acc)]),
        (axes[2], "learning rate", [("head", lrs)]),
    ]
    for ax, title, series in panels:
        for label, pts in series:
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, label=label)
        for step, n in marks:
            ax.axvline(step, color="tab:red", linestyle="--", linewidth=1)
            ax.annotate(f"unfreeze → {n}", (step, 1), xycoords=("data", "axes fraction"), rotation=90,
                        va="top", ha="right", fontsize=8, color="tab:red")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        if any(pts for _, pts in series):
            ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> str:
    """Row-normalised confusion matrix with counts (labels omitted beyond 30 classes)."""
    plt = _plt()
    n = len(class_names)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, min(0.5 * n + 2, 16.0))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (eval)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
