"""A finished run's results in its output_dir: the unfreezing phases its weights went through, the training-curve
and confusion-matrix plots, per-class accuracy and ``all_results.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .args import ModelArguments
from .prepare import RunData
from .training import TrainedRun

__all__ = ["RESULTS_FILE", "RunSummary", "freeze_phases", "save_results", "write_results"]

RESULTS_FILE = "all_results.json"


@dataclass
class RunSummary:
    """What the card reports beside the metrics: the phases (step, stages trained from it), the plot files, and
    per-class accuracy and support (empty without an eval split)."""

    phases: list[tuple[int, list[str]]]
    plots: list[Path]
    per_class: dict[str, float] = field(default_factory=dict)
    support: dict[str, int] = field(default_factory=dict)


def freeze_phases(scheduler, initial: int | str, stage_names: list[str], weights_step: int,
                  final_step: int) -> tuple[list[tuple[int, list[str]]], list[int]]:
    """(phases the weights were trained with up to `weights_step`, the unfreeze steps of the whole run to mark on
    the training curves)."""
    if scheduler is not None:
        counts, marks = scheduler.phases_until(weights_step), scheduler.phases_until(final_step)[1:]
    else:
        counts, marks = [(0, len(stage_names) if initial == "all" else int(initial))], []
    phases = [(step, stage_names[len(stage_names) - n:] if n else []) for step, n in counts]
    return phases, marks


def save_results(results: dict[str, Any], out: Path) -> None:
    """Write `results` to ``out/all_results.json``."""
    with open(out / RESULTS_FILE, "w") as f:
        json.dump(results, f, indent=2, default=str)


def write_results(trained: TrainedRun, log_history: list[dict], model, data: RunData, model_args: ModelArguments,
                  scheduler, initial: int | str, out: Path) -> RunSummary:
    """Plots, per-class accuracy and ``all_results.json`` (completing `trained.results`) in `out`."""
    from ..plots import plot_training_curves

    results = trained.results
    phases, marks = freeze_phases(scheduler, initial, model.stage_names, trained.weights_step, trained.final_step)
    summary = RunSummary(phases, [plot_training_curves(log_history, out / "training_curves.png", marks=marks)])
    if trained.prediction is not None:
        _add_per_class(summary, trained.prediction, data.label_names(), out)
        results["per_class_accuracy"] = summary.per_class
    if data.num_train is not None:  # a stream's length is unknown
        results["num_train_images"] = data.num_train
    results["num_eval_images"] = data.num_eval
    results["strategy"] = model_args.strategy
    results["phases"] = phases
    save_results(results, out)
    return summary


def _add_per_class(summary: RunSummary, pred, names: list[str], out: Path) -> None:
    """The confusion-matrix plot, per-class accuracy (classes without eval images left out) and support."""
    from ..metrics import confusion_matrix, per_class_accuracy
    from ..plots import plot_confusion_matrix

    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    labels = np.asarray(pred.label_ids)
    cm = confusion_matrix(labels, np.asarray(logits).argmax(1), len(names))
    summary.plots.append(plot_confusion_matrix(cm, names, out / "confusion_matrix.png"))
    summary.per_class = {n: float(a) for n, a in zip(names, per_class_accuracy(cm)) if not np.isnan(a)}
    summary.support = {n: int(c) for n, c in zip(names, cm.sum(axis=1))}
