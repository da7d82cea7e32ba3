"""The Trainer of a run: built with the FreezeScheduler ahead of the reporting integrations and the
`DivergenceGuard` last, the optional evaluation before training, then training, saving and the final evaluation.
A run that diverges raises `TrainingDiverged`; a write that fails (a full disk) raises an OSError naming the path."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from .args import ModelArguments
from .divergence import DivergenceGuard
from .output import write_failure
from .prepare import RunDatasets
from .seeded import SampleEpochCallback, SeededAugmentation
from .streaming import streaming_trainer_class

__all__ = ["TrainedRun", "build_trainer", "evaluate_before", "train_and_evaluate"]


@dataclass
class TrainedRun:
    """What training left: the results so far, the final predictions on the eval split (or None), the step of the
    best checkpoint when its weights are the ones saved (`load_best_model_at_end`), and the last step."""

    results: dict[str, Any]
    prediction: Any | None
    best_step: int | None
    final_step: int

    @property
    def weights_step(self) -> int:
        """The step the saved weights were trained up to."""
        return self.best_step or self.final_step


def build_trainer(model, training_args: Any, datasets: RunDatasets, scheduler):
    """A `Trainer` (a `StreamingTrainer` for a stream) with compute_metrics; `scheduler` (if any) runs right after
    DefaultFlowCallback, a `DivergenceGuard` after every other callback (it overrides their save/log decisions)."""
    from transformers import Trainer

    from ..metrics import compute_metrics_fn

    trainer_class = streaming_trainer_class() if datasets.streaming else Trainer
    trainer = trainer_class(model=model, args=training_args, train_dataset=datasets.train, eval_dataset=datasets.eval,
                            data_collator=datasets.collator, compute_metrics=compute_metrics_fn,
                            callbacks=[scheduler] if scheduler is not None else None)
    if scheduler is not None:  # annotate logs before the reporting integrations (TensorBoard, W&B, ...) send them
        trainer.callback_handler.callbacks.remove(scheduler)
        trainer.callback_handler.callbacks.insert(1, scheduler)  # after DefaultFlowCallback
    if isinstance(datasets.train, SeededAugmentation):
        trainer.add_callback(SampleEpochCallback(datasets.train))
    trainer.add_callback(DivergenceGuard())
    return trainer


def evaluate_before(trainer, datasets: RunDatasets, model_args: ModelArguments) -> dict[str, float]:
    """The ``before_*`` metrics (empty without an eval split or with evaluate_before_training off)."""
    if datasets.eval is None or not model_args.evaluate_before_training:
        return {}
    before = trainer.evaluate(metric_key_prefix="before")
    before.pop("epoch", None)  # Trainer's log adds the epoch (0) to the metrics: it is not a result
    return before


@contextlib.contextmanager
def _naming_failed_writes(trainer):
    """A failed write (a full disk, a read-only folder) re-raised naming the path and how to resume
    (`write_failure`)."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        failed = write_failure(err, trainer.args.output_dir, trainer.state.global_step)
        if failed is None:
            raise
        raise failed from err


def train_and_evaluate(trainer, datasets: RunDatasets, resume: str | None, before: dict[str, float],
                       started: float) -> TrainedRun:
    """Train (resuming `resume`), save the model, predict the eval split; `started` is the run's start time. Raises
    `TrainingDiverged` (nothing saved) when the loss blew up, and an OSError naming the path when a write failed."""
    args = trainer.args
    with _naming_failed_writes(trainer):
        train_result = trainer.train(resume_from_checkpoint=resume)
    guard = next(c for c in trainer.callback_handler.callbacks if isinstance(c, DivergenceGuard))
    if guard.step is not None:
        raise guard.error(trainer.state.log_history, args.output_dir, args.learning_rate)
    with _naming_failed_writes(trainer):
        trainer.save_model()
    results: dict[str, Any] = {**before, **train_result.metrics}
    if datasets.streaming:  # one endless pass over the stream: an epoch count would mean nothing
        results.pop("epoch", None)
    else:
        results["epoch"] = trainer.state.epoch  # the epochs trained
    pred = trainer.predict(datasets.eval, metric_key_prefix="eval") if datasets.eval is not None else None
    if pred is not None:
        results.update(pred.metrics)
    results["train_wall_time_s"] = round(time.time() - started, 2)
    results["world_size"] = args.world_size
    results["train_steps"] = trainer.state.global_step
    # load_best_model_at_end: the saved weights are those of the best checkpoint, trained only up to its step
    best = trainer.state.best_global_step if args.load_best_model_at_end and \
        trainer.state.best_model_checkpoint else None
    if best:
        results["best_model_step"] = best
    return TrainedRun(results, pred, best, trainer.state.global_step)
