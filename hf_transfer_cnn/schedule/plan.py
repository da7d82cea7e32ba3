"""The freezing schedule as a value: which stages train at an optimizer step, and the learning-rate factor."""

from __future__ import annotations

__all__ = ["optimizer_steps_per_epoch"]


def optimizer_steps_per_epoch(num_batches: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps in an epoch of `num_batches` batches, as Trainer counts them (a last, partial accumulation
    window still steps); at least 1."""
    gas = max(int(gradient_accumulation_steps), 1)
    return max(num_batches // gas + int(num_batches % gas > 0), 1)
