"""A run whose loss blows up is stopped, not finished: `DivergenceGuard` checks after every optimizer step that the
trained weights are finite (a nan/inf loss makes them nan/inf at that step, whatever the logging interval, and
Trainer's default ``logging_nan_inf_filter`` hides it from the logged loss). At the first non-finite step it stops
training without saving, evaluating or logging that step, so the checkpoints already saved are the good ones; the
recipe then raises `TrainingDiverged` instead of writing final weights, results or a model card."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

__all__ = ["TrainingDiverged", "DivergenceGuard"]


class TrainingDiverged(RuntimeError):
    """Training stopped because the weights became non-finite; the message names the step, the last finite loss and
    the last good checkpoint."""

    def __init__(self, message: str, *, step: int, last_finite_loss: float | None, checkpoint: str | None):
        super().__init__(message)
        self.step = step
        self.last_finite_loss = last_finite_loss
        self.checkpoint = checkpoint


def _non_finite(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters holding nan or inf (empty when all are finite)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params or bool(torch.stack([torch.isfinite(p.detach()).all() for _, p in params]).all()):
        return []
    return [n for n, p in params if not bool(torch.isfinite(p.detach()).all())]


class DivergenceGuard(TrainerCallback):
    """Stops training at the first optimizer step after which a trained weight is nan/inf (see the module)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.params: list[str] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.step is None and model is not None:
            bad = _non_finite(model)
            if bad:
                self.step, self.params = state.global_step, bad
        return self._hold(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        return self._hold(control)

    def _hold(self, control):
        if self.step is not None:  # nothing of the diverged weights is saved, evaluated or logged
            control.should_training_stop = True
            control.should_save = control.should_evaluate = control.should_log = False
        return control

    def error(self, log_history: list[dict[str, Any]], output_dir: str, learning_rate: float) -> TrainingDiverged:
        """The `TrainingDiverged` to raise for the step this guard stopped at."""
        from .output import checkpoint_step, incomplete_reason

        losses = [(e["step"], float(e["loss"])) for e in log_history
                  if "loss" in e and "step" in e and e["step"] < self.step and math.isfinite(float(e["loss"]))]
        last = losses[-1] if losses else None
        out = Path(output_dir)
        good = [p for p in out.glob("checkpoint-*") if (checkpoint_step(p) or self.step) < self.step
                and incomplete_reason(p) is None]
        ckpt = str(max(good, key=checkpoint_step)) if good else None
        shown = ", ".join(self.params[:3]) + (f" and {len(self.params) - 3} more" if len(self.params) > 3 else "")
        kept = f"The last good checkpoint is {ckpt}. " if ckpt else "No checkpoint was saved before it. "
        again = f", e.g. from that checkpoint's weights with --model_name_or_path {ckpt}" if ckpt else ""
        message = (
            f"Training diverged at step {self.step}: the loss blew up and the trained weights became nan/inf "
            f"({shown}); "
            + (f"the last finite loss was {last[1]:.6g} at step {last[0]}. " if last else
               "no finite loss was logged before it (the last finite loss is unknown). ")
            + "The run was stopped there: nothing of that step was saved, and no final weights, results or model card "
            + f"were written. {kept}Lower --learning_rate (it was {learning_rate:g}), or add warmup (--warmup_steps) "
            + f"or gradient clipping (--max_grad_norm), and run again{again}.")
        return TrainingDiverged(message, step=self.step, last_finite_loss=last[1] if last else None, checkpoint=ckpt)
