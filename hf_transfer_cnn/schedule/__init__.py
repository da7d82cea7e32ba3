"""Unfreezing over a run: `FreezeScheduler` (a Trainer callback) and the learning-rate plumbing it relies on."""

from .callback import SCHEDULE_FILE, FreezeScheduler

__all__ = ["FreezeScheduler", "SCHEDULE_FILE"]
