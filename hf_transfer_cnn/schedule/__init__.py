"""Unfreezing over a run: `FreezeScheduler` (a Trainer callback), the `FreezeSchedule` it follows (pure maths),
the distributed checks, and the learning-rate plumbing it relies on."""

from .callback import SCHEDULE_FILE, FreezeScheduler
from .plan import FreezeSchedule

__all__ = ["FreezeScheduler", "FreezeSchedule", "SCHEDULE_FILE"]
