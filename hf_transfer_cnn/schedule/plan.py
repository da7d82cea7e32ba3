"""The freezing schedule as a value: which stages train at an optimizer step, and the learning-rate factor.

`FreezeSchedule` is pure: built from the trigger arguments (validated), resolved against a model's stage names
(and, for an epoch trigger, the optimizer steps per epoch), then queried by optimizer step. It knows nothing of
Trainer, optimizers or modules; `FreezeScheduler` applies what it says.
"""

from __future__ import annotations

import bisect
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..freezing import resolve_trainable_stages

__all__ = ["FreezeSchedule", "Stages", "optimizer_steps_per_epoch"]

Stages = int | str
"""A trainable-stage count as given: ``0..N`` or ``"all"``."""

NEVER = sys.maxsize
"""The step of an epoch trigger before the epoch length is known: nothing unfreezes before that."""


def optimizer_steps_per_epoch(num_batches: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps in an epoch of `num_batches` batches, as Trainer counts them (a last, partial accumulation
    window still steps); at least 1."""
    gas = max(int(gradient_accumulation_steps), 1)
    return max(num_batches // gas + int(num_batches % gas > 0), 1)


def _is_number(value: Any) -> bool:
    """An int or float, not a bool; nan and inf fail the range checks that follow (every comparison with nan is
    False)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_triggers(unfreeze_at_step, num_stages, schedule, unfreeze_at_epoch) -> None:
    if sum(x is not None for x in (unfreeze_at_step, unfreeze_at_epoch, schedule)) != 1:
        raise ValueError(
            "Give exactly one of unfreeze_at_step, unfreeze_at_epoch or schedule "
            f"(got unfreeze_at_step={unfreeze_at_step}, unfreeze_at_epoch={unfreeze_at_epoch}, schedule={schedule})."
        )
    if schedule is None and num_stages is None:
        raise ValueError("num_stages is required with unfreeze_at_step/unfreeze_at_epoch (an int or 'all').")
    if schedule is not None and num_stages is not None:
        raise ValueError("num_stages goes inside schedule=[(step, num_stages), ...]; don't pass both.")


@dataclass(frozen=True)
class FreezeSchedule:
    """Phases of trainable top stages by optimizer step, plus the learning-rate settings that go with them.

    Build it with `from_triggers` (the `FreezeScheduler` arguments) or `from_record` (a saved
    ``freeze_schedule.json``), then `resolve` it against the model's stage names (bottom to top).

    Attributes:
        phases: the phases as given, ``((first step, stages), ...)`` starting at step 0; the step of an
            epoch trigger's phase is None until `resolve` gets the epoch length.
        lr_factor: every learning rate is multiplied by it from `first_unfreeze_step` on.
        stage_lr_decay: the top trainable stage's LR multiplier; each lower one gets this times the one above.
        unfreeze_at_epoch: the epoch trigger, if the schedule was given in epochs.
        stage_names: the model's stages, bottom to top (empty until resolved).
        steps / stages: the resolved phases: first optimizer step and trainable top-stage count of each.
    """

    phases: tuple[tuple[int | None, Stages], ...]
    lr_factor: float = 1.0
    stage_lr_decay: float | None = None
    unfreeze_at_epoch: float | None = None
    stage_names: tuple[str, ...] = ()
    steps: tuple[int, ...] = ()
    stages: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        lr_factor, decay, epoch = self.lr_factor, self.stage_lr_decay, self.unfreeze_at_epoch
        if not (_is_number(lr_factor) and 0 < lr_factor < math.inf):
            raise ValueError(f"lr_factor={lr_factor!r} must be a positive number (e.g. 0.1).")
        if decay is not None and not (_is_number(decay) and 0 < decay <= 1):
            raise ValueError(f"stage_lr_decay={decay!r} must be in (0, 1].")
        if epoch is not None and not (_is_number(epoch) and math.isfinite(epoch)):
            raise ValueError(f"unfreeze_at_epoch={epoch!r} must be a finite number of epochs (e.g. 1 or 0.5).")
        if epoch is not None and epoch < 0:
            raise ValueError(f"unfreeze_at_epoch={epoch} must be >= 0.")
        phases = tuple((s, n) for s, n in self.phases)
        for step, _ in phases:
            if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
                raise ValueError(f"Schedule step {step!r} must be a non-negative integer optimizer step.")
        steps = [s for s, _ in phases if s is not None]
        if steps != sorted(steps) or len(set(steps)) != len(steps):
            raise ValueError(f"Schedule steps must be strictly increasing, got {steps}.")
        if not phases or phases[0][0] != 0:
            raise ValueError(f"A schedule's first phase starts at step 0, got {list(phases)}.")
        object.__setattr__(self, "phases", phases)
        object.__setattr__(self, "lr_factor", float(lr_factor))
        for name in ("stage_names", "steps", "stages"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    # -- building ------------------------------------------------------------------------------------------

    @classmethod
    def from_triggers(
        cls,
        unfreeze_at_step: int | None = None,
        num_stages: Stages | None = None,
        *,
        schedule: Sequence[tuple[int, Stages]] | None = None,
        unfreeze_at_epoch: float | None = None,
        lr_factor: float = 1.0,
        stage_lr_decay: float | None = None,
    ) -> FreezeSchedule:
        """The schedule `FreezeScheduler` takes: exactly one of a step, an epoch or a multi-phase schedule."""
        _check_triggers(unfreeze_at_step, num_stages, schedule, unfreeze_at_epoch)
        if unfreeze_at_epoch is not None:
            phases = [(0, 0), (None, num_stages)]
        elif unfreeze_at_step is not None:
            phases = [(0, 0), (unfreeze_at_step, num_stages)] if unfreeze_at_step != 0 else [(0, num_stages)]
        else:
            phases = list(schedule)
            if not phases or phases[0][0] != 0:
                phases = [(0, 0)] + phases
        return cls(tuple(phases), lr_factor=lr_factor, stage_lr_decay=stage_lr_decay,
                   unfreeze_at_epoch=unfreeze_at_epoch)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> FreezeSchedule:
        """The schedule a checkpoint's ``freeze_schedule.json`` (`record`) describes, resolved if it names stages."""
        plan = cls(tuple((int(s), int(n)) for s, n in record["phases"]), lr_factor=record.get("lr_factor", 1.0),
                   stage_lr_decay=record.get("stage_lr_decay"))
        names = record.get("stage_names") or []
        return plan.resolve(names) if names else plan

    def resolve(self, stage_names: Sequence[str], steps_per_epoch: int | None = None) -> FreezeSchedule:
        """This schedule with stage counts resolved against `stage_names` (bottom to top; ``"all"`` = all of them)
        and, for an epoch trigger, steps resolved with `steps_per_epoch` (None: not known yet, nothing unfreezes)."""
        names = list(stage_names)
        counts = tuple(resolve_trainable_stages(n, len(names), names) for _, n in self.phases)
        if self.unfreeze_at_epoch is None:
            steps = tuple(s for s, _ in self.phases)
        elif steps_per_epoch is None:
            steps = (0, NEVER)
        elif isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={steps_per_epoch!r} must be a positive integer.")
        else:
            steps = (0, int(math.ceil(self.unfreeze_at_epoch * steps_per_epoch)))
        return replace(self, stage_names=tuple(names), steps=steps, stages=counts)

    @property
    def is_resolved(self) -> bool:
        """Stage counts are known (`resolve` ran)."""
        return bool(self.stages)

    # -- by optimizer step ---------------------------------------------------------------------------------

    def phase_at(self, step: int) -> int:
        """Index of the phase optimizer step `step` is in (-1 before `resolve`)."""
        return bisect.bisect_right(self.steps, step) - 1

    def trainable_stages_at(self, step: int) -> int:
        """How many top stages train at optimizer step `step`."""
        if not self.is_resolved:
            raise RuntimeError("FreezeSchedule.resolve(stage_names) first: stage counts depend on the model.")
        return self.stages[max(self.phase_at(step), 0)]

    def trainable_stage_names_at(self, step: int) -> list[str]:
        """The stages that train at optimizer step `step`, bottom to top."""
        n = self.trainable_stages_at(step)
        return list(self.stage_names[len(self.stage_names) - n:]) if n else []

    @property
    def first_unfreeze_step(self) -> int | None:
        """The first optimizer step at which any backbone stage trains (the lr factor applies from there on)."""
        return next((s for s, n in zip(self.steps, self.stages) if n > 0), None)

    def lr_factor_at(self, step: int) -> float:
        """The factor on every learning rate at optimizer step `step`: `lr_factor` from the first unfreeze on."""
        first = self.first_unfreeze_step
        return self.lr_factor if first is not None and step >= first else 1.0

    def stage_lr_multipliers_at(self, step: int) -> list[tuple[str, float]]:
        """``(stage, multiplier of the head's LR)`` for each trainable stage at `step`, top first; empty without
        `stage_lr_decay`."""
        if self.stage_lr_decay is None:
            return []
        names = self.trainable_stage_names_at(step)
        return [(name, self.stage_lr_decay ** depth) for depth, name in enumerate(reversed(names), start=1)]

    def phases_until(self, step: int) -> list[tuple[int, int]]:
        """(first optimizer step, trainable stage count) of each phase that started before `step`."""
        out: list[tuple[int, int]] = []
        for s, n in zip(self.steps, self.stages):
            if s < max(step, 1) and (not out or out[-1][1] != n):
                if out and out[-1][0] == s:
                    out[-1] = (s, n)
                else:
                    out.append((s, n))
        return out

    def unreachable_steps(self, max_steps: int) -> list[int]:
        """Phase starts at or after `max_steps` (a run of that many steps never gets there); none if it is <= 0."""
        return [s for s in self.steps[1:] if s >= max_steps] if max_steps > 0 else []

    # -- over the whole run --------------------------------------------------------------------------------

    def _top(self, n: int) -> frozenset[str]:
        return frozenset(self.stage_names[len(self.stage_names) - n:]) if n else frozenset()

    @property
    def trained_stages(self) -> frozenset[str]:
        """Stages that train in some phase."""
        return self._top(max(self.stages)) if self.stages else frozenset()

    @property
    def kept_for_later(self) -> frozenset[str]:
        """Stages that train later but not at step 0: the optimizer (and DDP) must hold them from the start."""
        return self.trained_stages - self._top(self.stages[0]) if self.stages else frozenset()

    @property
    def varying_stages(self) -> frozenset[str]:
        """Stages that train in only part of the schedule, so get no gradient at some steps."""
        return self.trained_stages - self._top(min(self.stages)) if self.stages else frozenset()

    @property
    def trains_all_from_start(self) -> bool:
        """Every stage trains at every step (full fine-tuning)."""
        return self.is_resolved and min(self.stages) == len(self.stage_names)

    @property
    def scales_lr(self) -> bool:
        """`lr_factor` changes the learning rate (needs a LambdaLR-based scheduler)."""
        return self.lr_factor != 1.0

    @property
    def decays_stage_lr(self) -> bool:
        """`stage_lr_decay` changes per-stage learning rates (needs the optimizer)."""
        return self.stage_lr_decay is not None and self.stage_lr_decay != 1.0

    def record(self) -> dict[str, Any]:
        """The resolved schedule, as saved in checkpoints: ``phases`` [[first step, trainable stages], ...]."""
        return {"phases": [[int(s), int(n)] for s, n in zip(self.steps, self.stages)], "lr_factor": self.lr_factor,
                "stage_lr_decay": self.stage_lr_decay, "stage_names": list(self.stage_names)}
