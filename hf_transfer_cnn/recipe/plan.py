"""Strategy → freezing plan: the run's optimizer steps, the stages that train from the start and the
`FreezeScheduler` that unfreezes the rest; a resumed `gradual` run keeps the unfreeze step it was trained with."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ..schedule.plan import optimizer_steps_per_epoch
from .args import ModelArguments
from .checks import parse_schedule

logger = logging.getLogger(__name__)

__all__ = ["parse_schedule", "total_steps", "build_freeze_plan", "default_unfreeze_step", "keep_resumed_schedule"]


def total_steps(training_args: Any, num_train: int | None) -> int:
    """The optimizer steps Trainer will run (its `max_steps`): batches are split over the processes as Accelerate's
    sharded loader does (the last, short batch kept unless `dataloader_drop_last`). `num_train` is None for a
    stream, which needs `max_steps`."""
    if training_args.max_steps and training_args.max_steps > 0:
        return int(training_args.max_steps)
    if num_train is None:
        raise ValueError("A stream has no length: set max_steps.")
    bs, world = training_args.per_device_train_batch_size, max(training_args.world_size, 1)
    batches = num_train // (bs * world) if training_args.dataloader_drop_last else \
        math.ceil(math.ceil(num_train / bs) / world)
    per_epoch = optimizer_steps_per_epoch(batches, training_args.gradient_accumulation_steps)
    return int(math.ceil(training_args.num_train_epochs * per_epoch))


def build_freeze_plan(model_args: ModelArguments, total_steps: int) -> tuple[int | str, Any]:
    """(initial trainable stages, FreezeScheduler or None) for the chosen strategy."""
    from ..schedule import FreezeScheduler

    s, decay = model_args.strategy, model_args.stage_lr_decay
    if s == "feature_extraction":
        return 0, None
    if s == "full":  # a scheduler only for discriminative learning rates: every stage trains from step 0
        if decay is None:
            return "all", None
        return "all", FreezeScheduler(schedule=[(0, "all")], stage_lr_decay=decay)
    if s == "fine_tuning":
        return model_args.stages(), FreezeScheduler(schedule=[(0, model_args.stages())], stage_lr_decay=decay)
    if model_args.schedule:
        return 0, FreezeScheduler(schedule=parse_schedule(model_args.schedule), lr_factor=model_args.lr_factor,
                                  stage_lr_decay=decay)
    if model_args.unfreeze_at_epoch is not None:
        return 0, FreezeScheduler(unfreeze_at_epoch=model_args.unfreeze_at_epoch, num_stages=model_args.stages(),
                                  lr_factor=model_args.lr_factor, stage_lr_decay=decay)
    step = model_args.unfreeze_at_step if model_args.unfreeze_at_step is not None else \
        default_unfreeze_step(total_steps)
    return 0, FreezeScheduler(unfreeze_at_step=step, num_stages=model_args.stages(), lr_factor=model_args.lr_factor,
                              stage_lr_decay=decay)


def default_unfreeze_step(total_steps: int) -> int:
    """`gradual` without a trigger unfreezes after 30 % of the run."""
    return max(1, round(0.3 * total_steps))


def keep_resumed_schedule(model_args: ModelArguments, resume: str | None, total_steps: int) -> None:
    """A resumed `gradual` run keeps the unfreeze step its checkpoint was trained with (`SCHEDULE_FILE`). Without an
    explicit trigger, the default (30 % of the run) would follow the new run length and could refreeze stages that
    have trained; an explicit step that differs from the checkpoint's is a warning. A checkpoint without the record
    falls back to comparing run lengths: a default step that would move is refused, with the step that keeps it."""
    if not resume or model_args.strategy != "gradual" or model_args.schedule or \
            model_args.unfreeze_at_epoch is not None:
        return
    from ..schedule import SCHEDULE_FILE

    record = Path(resume) / SCHEDULE_FILE
    if record.is_file():
        _keep_recorded_step(model_args, resume, json.loads(record.read_text()), SCHEDULE_FILE)
    elif model_args.unfreeze_at_step is None:
        _check_default_step_stays(resume, total_steps)


def _keep_recorded_step(model_args: ModelArguments, resume: str, record: dict, record_name: str) -> None:
    phases = record.get("phases") or []
    step = next((int(s) for s, n in phases if n > 0), None)
    if step is None or len(phases) > 2:
        return  # not a one-step gradual schedule: nothing to carry over
    if model_args.unfreeze_at_step is None:
        model_args.unfreeze_at_step = step
        logger.info("Resuming %s: keeping its unfreeze step %d (from %s).", resume, step, record_name)
    elif model_args.unfreeze_at_step != step:
        logger.warning("Resuming %s with unfreeze_at_step=%d; the run it continues unfroze at step %d.", resume,
                       model_args.unfreeze_at_step, step)


def _check_default_step_stays(resume: str, total_steps: int) -> None:
    """Without a schedule record: refuse a resumed run whose default unfreeze step would differ from its own."""
    state = Path(resume) / "trainer_state.json"
    before = json.loads(state.read_text()).get("max_steps") if state.is_file() else None
    if not before:
        return
    old, new = default_unfreeze_step(int(before)), default_unfreeze_step(total_steps)
    if old == new:
        return
    raise ValueError(
        f"Resuming {resume} for {total_steps} steps, but the run it continues was planned for {before}: the default "
        f"unfreeze step (30 % of the run) would move from {old} to {new}, and the resumed run would not follow the "
        f"schedule it was trained with. Pass --unfreeze_at_step {old} to keep it (or --unfreeze_at_step {new} to "
        "change it knowingly).")
