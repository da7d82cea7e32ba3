"""FreezeScheduler: unfreeze the top stages at a step and lower the learning rate — correct by construction.

Add it to an existing Trainer script, nothing else changes::

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[FreezeScheduler(unfreeze_at_step=500, num_stages=2, lr_factor=0.1)])

How it stays correct:

* At ``Trainer.__init__`` (before the optimizer and DDP exist) the stages it will unfreeze later are put
  in the optimizer and in DDP's buckets (``requires_grad=True``) but run frozen (``no_grad``, eval mode),
  so they get no gradient until their step; stages it never unfreezes are left out entirely.
* Everything is a pure function of ``state.global_step`` (optimizer steps, so gradient accumulation is
  accounted for): which stages train, and the lr factor, which is folded into the LR scheduler's
  lambdas. The factor is keyed on that optimizer step, not on the scheduler's own count (which lags it
  when fp16 skips a step, and which Accelerate advances ``num_processes`` times per step). A resumed
  run, and every DDP rank, computes exactly what the uninterrupted run did.
* ``stage_lr_decay`` uses `StageLrMultipliers` (no new param groups, same optimizer layout on resume).
* Every checkpoint records the resolved schedule (``freeze_schedule.json``), so a resume can check it continues it.

The maths is `FreezeSchedule` (plan.py), the distributed checks are in distributed.py; this module applies the
schedule to the model, optimizer and scheduler, and translates Trainer events.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from transformers import TrainerCallback

from ..freezing import apply_freeze, units_for
from ..model import TransferMeta, fix_tf_bn_momentum, tf_style_batchnorms
from .distributed import (check_ddp_wrapper, check_trainer_ddp, check_training_args, trainer_find_unused,
                          unwrap_model)
from .lr import StageLrMultipliers, scale_lr_schedule, unwrap_optimizer
from .plan import FreezeSchedule, Stages, optimizer_steps_per_epoch

logger = logging.getLogger(__name__)

__all__ = ["FreezeScheduler", "SCHEDULE_FILE"]

SCHEDULE_FILE = "freeze_schedule.json"
"""Written into each Trainer checkpoint: the schedule (phases, lr factor, stage LR decay) its weights follow."""


_TRAINER_CLAIMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""model -> weak reference to the TrainerState of the Trainer whose FreezeScheduler set the model up: a second
FreezeScheduler in the same Trainer (same state) is refused; a new Trainer on the same model is not."""


def _claim_for_trainer(model: nn.Module, state) -> None:
    if state is None:  # called outside a Trainer: nothing to compare with
        return
    owner = _TRAINER_CLAIMS.get(model)
    if owner is not None and owner() is state:
        raise ValueError(
            "Two FreezeSchedulers were given to one Trainer (callbacks=[...]), or the same one twice; they would "
            "both freeze and unfreeze the same model and scale the same learning rate. Use one FreezeScheduler; for "
            "several phases give it schedule=[(step, stages), ...], e.g. schedule=[(0, 0), (500, 2), (1500, 'all')].")
    _TRAINER_CLAIMS[model] = weakref.ref(state)


def _num_batches(dataloader) -> int | None:
    """The dataloader's length, or None when it has none (an IterableDataset's DataLoader raises TypeError)."""
    if dataloader is None:
        return None
    try:
        return len(dataloader)
    except TypeError:
        return None


@dataclass
class _Binding:
    """What a FreezeScheduler is bound to: set by prepare_model / attach, changed as steps are applied."""

    model: nn.Module | None = None
    units: list | None = None
    phase: int | None = None  # the phase applied to the model
    step: int = 0  # the optimizer step whose lr factor the scheduler's lambdas apply
    scheduler: object | None = None  # the LambdaLR whose lambdas carry the lr factor
    multipliers: StageLrMultipliers | None = None
    trainer_find_unused: tuple[bool, str] | None = None  # Trainer's DDP flag, read at on_init_end


class FreezeScheduler(TrainerCallback):
    """Unfreeze the top-N stages at an optimizer step (or epoch) and scale the learning rate.

    Args:
        unfreeze_at_step: optimizer step (``state.global_step``) at which `num_stages` top stages start training.
        num_stages: how many top stages to unfreeze (an int or ``"all"``).
        schedule: multi-phase form ``[(step, stages), ...]``, e.g. ``[(0, 0), (500, 2), (1500, "all")]``.
        unfreeze_at_epoch: like `unfreeze_at_step`, in epochs (converted to a step at train begin).
        lr_factor: from the first step at which a backbone stage trains, every learning rate is ``lr_factor`` × the
            scheduler's value. Applied through a `LambdaLR`-based scheduler, so ``lr_factor != 1`` needs one.
        stage_lr_decay: discriminative LR: the top trainable stage gets ``stage_lr_decay`` × the head's LR,
            and each lower trainable stage ``stage_lr_decay`` × the one above. Needs the optimizer, not a scheduler.
        fix_batchnorm_momentum: convert BatchNorm momentum written in TensorFlow's convention (0.997 in a plain
            transformers MobileNet/EfficientNet) in the stages this schedule trains to PyTorch's (``1 - x``, or the
            momentum `convert` recorded for torchvision weights); False only warns.

    The schedule itself is `plan`, a `FreezeSchedule` (resolved against the model by `prepare_model`).
    """

    def __init__(
        self,
        unfreeze_at_step: int | None = None,
        num_stages: Stages | None = None,
        *,
        schedule: Sequence[tuple[int, Stages]] | None = None,
        unfreeze_at_epoch: float | None = None,
        lr_factor: float = 1.0,
        stage_lr_decay: float | None = None,
        fix_batchnorm_momentum: bool = True,
    ):
        self.fix_batchnorm_momentum = bool(fix_batchnorm_momentum)
        self.plan: FreezeSchedule = FreezeSchedule.from_triggers(
            unfreeze_at_step, num_stages, schedule=schedule, unfreeze_at_epoch=unfreeze_at_epoch,
            lr_factor=lr_factor, stage_lr_decay=stage_lr_decay)
        self._bound = _Binding()

    @property
    def steps(self) -> list[int]:
        """First optimizer step of each phase (empty before `prepare_model`)."""
        return list(self.plan.steps)

    @property
    def stages(self) -> list[int]:
        """Trainable top-stage count of each phase (empty before `prepare_model`)."""
        return list(self.plan.stages)

    @property
    def lr_factor(self) -> float:
        """The factor on every learning rate from the first unfreeze on."""
        return self.plan.lr_factor

    @property
    def stage_lr_decay(self) -> float | None:
        """The top trainable stage's LR multiplier (each lower stage: this times the one above), or None."""
        return self.plan.stage_lr_decay

    # -- library API (also used by plain Accelerate loops) -------------------------------------------------

    def prepare_model(self, model: nn.Module) -> None:
        """Freeze `model` for step 0 and register the stages to be unfrozen later with autograd.

        Call before the optimizer (and DDP) are created.
        """
        model = unwrap_model(model)
        units = units_for(model)  # raises a clear error for architectures not in the registry
        self.plan = self.plan.resolve([u.name for u in units])
        self._bound.model, self._bound.units, self._bound.phase = model, units, None
        self._apply(0, force=True)
        self._fix_tf_batchnorms(model, [u for u in units if u.name in self.plan.trained_stages])

    def _fix_tf_batchnorms(self, model: nn.Module, trained: list) -> None:
        """BatchNorm momentum in TensorFlow's decay convention (transformers' MobileNet/EfficientNet ports) in stages
        this schedule trains: converted to PyTorch's (one INFO line), unless `fix_batchnorm_momentum=False`."""
        modules = nn.ModuleList([mod for u in trained for mod in u.modules])
        tf_style = tf_style_batchnorms(modules)
        if not tf_style:
            return
        if self.fix_batchnorm_momentum:
            config = getattr(model, "config", None)
            recorded = TransferMeta.of(config).batch_norm_momentum if config is not None else None
            fix_tf_bn_momentum(modules, momentum=recorded)
            return
        logger.warning(
            "FreezeScheduler: %d BatchNorm layers in the stages this schedule trains have momentum %g, "
            "TensorFlow's decay convention (transformers' MobileNet/EfficientNet ports); in PyTorch their running "
            "statistics would follow the last batch. Call hf_transfer_cnn.fix_tf_bn_momentum(model) before "
            "training, or leave fix_batchnorm_momentum=True.", len(tf_style), tf_style[0].momentum)

    def attach(self, optimizer=None, lr_scheduler=None, *, model: nn.Module | None = None,
               max_steps: int | None = None, steps_per_epoch: int | None = None, global_step: int = 0) -> None:
        """Validate against the optimizer/scheduler, fold ``lr_factor`` into the scheduler, apply ``global_step``.

        Call after the optimizer and scheduler exist (after ``accelerator.prepare``; when resuming, after loading
        the checkpoint, with ``global_step`` the optimizer step to continue from). ``lr_factor != 1`` needs
        `lr_scheduler` (`LambdaLR`-based; for a constant LR use ``LambdaLR(optimizer, lambda step: 1.0)``) and
        ``stage_lr_decay`` needs `optimizer`; either missing raises a ValueError rather than being ignored.
        The factor follows the optimizer step given here and to `update`, however often the scheduler is stepped.
        `model`: the prepared model; a DDP wrapper is checked for ``find_unused_parameters``, which stages that
        unfreeze later need (they get no gradient until then).
        """
        if self._bound.model is None:
            raise RuntimeError("Call FreezeScheduler.prepare_model(model) before attach().")
        check_ddp_wrapper(model, self.plan.varying_stages)
        self._attach(optimizer, lr_scheduler, max_steps=max_steps, steps_per_epoch=steps_per_epoch,
                     global_step=global_step)

    def update(self, global_step: int) -> bool:
        """Apply the phase and lr factor for `global_step` (call once per optimizer step, before its forward).

        Returns True when the set of trainable stages changed.
        """
        return self._apply(global_step)

    def _attach(self, optimizer, lr_scheduler, *, max_steps: int | None, steps_per_epoch: int | None,
                global_step: int) -> None:
        plan = self.plan
        if plan.unfreeze_at_epoch is not None and not steps_per_epoch:
            raise ValueError("unfreeze_at_epoch needs steps_per_epoch (optimizer steps per epoch).")
        if plan.scales_lr and lr_scheduler is None:
            raise ValueError(
                f"lr_factor={plan.lr_factor:g} is applied through the LR scheduler, but attach() got none. Pass "
                "lr_scheduler=... (for a constant learning rate: torch.optim.lr_scheduler.LambdaLR(optimizer, "
                "lambda step: 1.0)), or use lr_factor=1.0."
            )
        if plan.decays_stage_lr and optimizer is None:
            raise ValueError(f"stage_lr_decay={plan.stage_lr_decay:g} needs the optimizer: attach(optimizer, ...).")
        self.plan = plan = plan.resolve(plan.stage_names, steps_per_epoch)
        if optimizer is not None:
            self._check_optimizer(optimizer)
        late = plan.unreachable_steps(max_steps) if max_steps is not None else []
        if late:
            logger.warning("FreezeScheduler: unfreeze step(s) %s are at or after max_steps=%d and will never "
                           "happen; lower them or raise max_steps.", late, max_steps)
        bound = self._bound
        bound.step = global_step
        bound.scheduler = scale_lr_schedule(lr_scheduler, self._scheduled_factor) if plan.scales_lr else None
        if plan.decays_stage_lr:
            if bound.multipliers is not None:
                bound.multipliers.remove()
            bound.multipliers = StageLrMultipliers(optimizer, self._stage_multipliers)
        bound.phase = None
        self._apply(global_step, force=True)

    def _check_optimizer(self, optimizer) -> None:
        opt = unwrap_optimizer(optimizer)
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        missing = {u.name for u in self._bound.units if u.name in self.plan.trained_stages
                   for p in u.parameters() if id(p) not in in_opt}
        if missing:
            raise RuntimeError(
                f"The optimizer does not hold the parameters of stage(s) {sorted(missing)} that FreezeScheduler "
                "will unfreeze, so they would never train. Pass the callback to Trainer(callbacks=[...]) when the "
                "Trainer is created (not trainer.add_callback afterwards), or call prepare_model(model) before "
                "building your optimizer."
            )

    # -- schedule (see FreezeSchedule) ---------------------------------------------------------------------

    def phase_at(self, step: int) -> int:
        """Index of the phase optimizer step `step` is in."""
        return self.plan.phase_at(step)

    def trainable_stages_at(self, step: int) -> int:
        """How many top stages train at optimizer step `step`."""
        return self.plan.trainable_stages_at(step)

    @property
    def first_unfreeze_step(self) -> int | None:
        """The first optimizer step at which any backbone stage trains (the lr factor applies from there on)."""
        return self.plan.first_unfreeze_step

    def phases_until(self, step: int) -> list[tuple[int, int]]:
        """(first optimizer step, trainable stage count) of each phase that started before `step`."""
        return self.plan.phases_until(step)

    def lr_factor_at(self, step: int) -> float:
        """The factor on every learning rate at optimizer step `step`."""
        return self.plan.lr_factor_at(step)

    def schedule_record(self) -> dict:
        """The resolved schedule, as saved in checkpoints: ``phases`` [[first step, trainable stages], ...]."""
        return self.plan.record()

    # -- applying it ---------------------------------------------------------------------------------------

    def _scheduled_factor(self, scheduler_step: int) -> float:
        # Not keyed on the scheduler's count: it lags the optimizer step when fp16 skips steps (no
        # scheduler.step() then), and Accelerate's scheduler wrapper steps it num_processes times per
        # optimizer step. The factor follows the optimizer step, like the stages do (see `_set_step`).
        return self.plan.lr_factor_at(self._bound.step)

    def _set_step(self, step: int) -> None:
        """Record the current optimizer step; re-sync the scheduler's lr when its factor changes."""
        before = self.plan.lr_factor_at(self._bound.step)
        self._bound.step = step
        if self._bound.scheduler is not None and self.plan.lr_factor_at(step) != before:
            scale_lr_schedule(self._bound.scheduler, self._scheduled_factor)  # lr = base * lambda(last_epoch)

    def _stage_multipliers(self) -> list[tuple[list[nn.Parameter], float]]:
        if self._bound.phase is None:
            return []
        units = {u.name: u for u in self._bound.units}
        return [(list(units[name].parameters()), k) for name, k in self.plan.stage_lr_multipliers_at(self._bound.step)]

    def _apply(self, step: int, force: bool = False) -> bool:
        self._set_step(step)
        plan, bound = self.plan, self._bound
        phase = max(plan.phase_at(step), 0)
        if phase == bound.phase and not force:
            return False
        changed = bound.phase is not None and plan.stages[phase] != plan.stages[bound.phase]
        bound.phase = phase
        n, keep = plan.stages[phase], set(plan.kept_for_later)
        if hasattr(bound.model, "freeze") and hasattr(bound.model, "stage_units"):
            bound.model.freeze(n, keep_requires_grad=keep)
        else:
            apply_freeze(bound.model, bound.units, n, keep_requires_grad=keep)
        if changed:
            logger.info("FreezeScheduler: step %d: trainable stages %s, lr x%g", step,
                        plan.trainable_stage_names_at(step), plan.lr_factor_at(step))
        return changed

    # -- Trainer events ----------------------------------------------------------------------------------

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("FreezeScheduler needs the Trainer's model (Trainer(model=...); model_init is not "
                             "supported).")
        _claim_for_trainer(unwrap_model(model), state)
        self.prepare_model(model)
        check_training_args(args, self.plan)
        self._bound.trainer_find_unused = trainer_find_unused(args, model)  # what this Trainer gave DDP, fixed now
        self._check_trainer_ddp(args, model)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None,
                       train_dataloader=None, **kwargs):
        check_training_args(args, self.plan)
        if self._bound.model is None or (model is not None and unwrap_model(model) is not self._bound.model):
            raise RuntimeError(
                "FreezeScheduler was not set up before the optimizer was built. Pass it to Trainer(callbacks=[...]) "
                "when creating the Trainer; adding it with trainer.add_callback() is too late."
            )
        steps_per_epoch = None
        if self.plan.unfreeze_at_epoch is not None:
            batches = _num_batches(train_dataloader)
            if batches is None:
                raise ValueError(
                    f"unfreeze_at_epoch={self.plan.unfreeze_at_epoch:g} needs the number of batches in an epoch, but "
                    "the train dataloader has no length (an IterableDataset or a streaming dataset has none). Use "
                    "FreezeScheduler(unfreeze_at_step=<optimizer step>, ...) instead (epochs x optimizer steps per "
                    "epoch), or give the dataset a __len__.")
            steps_per_epoch = optimizer_steps_per_epoch(batches, args.gradient_accumulation_steps)
        self._check_trainer_ddp(args, model)
        self._attach(optimizer, lr_scheduler, max_steps=state.max_steps, steps_per_epoch=steps_per_epoch,
                     global_step=state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self._apply(state.global_step)  # also sets the lr factor of the next update

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"  # the one Trainer just wrote
        if state.is_world_process_zero and folder.is_dir():
            (folder / SCHEDULE_FILE).write_text(json.dumps(self.schedule_record(), indent=2))

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Annotate training logs with the phase of the optimizer step they describe."""
        if not state.log_history or self._bound.phase is None or "learning_rate" not in state.log_history[-1]:
            return
        entry = state.log_history[-1]
        step = max(state.global_step - 1, 0)  # the update that was just made
        extra = {"trainable_stages": self.plan.trainable_stages_at(step), "lr_factor": self.plan.lr_factor_at(step)}
        for name, k in self.plan.stage_lr_multipliers_at(step):
            extra[f"learning_rate_{name}"] = entry["learning_rate"] * k
        entry.update(extra)
        if logs is not None:
            logs.update(extra)

    def on_train_end(self, args, state, control, **kwargs):
        if self._bound.multipliers is not None:
            self._bound.multipliers.remove()
            self._bound.multipliers = None

    def _check_trainer_ddp(self, args, model) -> None:
        """Stages kept for a later unfreeze get no gradient until then: Trainer's DDP must find unused parameters.
        Trainer fixes that flag when it is created (from ddp_find_unused_parameters, else off when activation
        checkpointing is on), so the decision is read at on_init_end and kept; later model changes do not alter it."""
        if self._bound.trainer_find_unused is None:  # on_train_begin without on_init_end: read it now
            self._bound.trainer_find_unused = trainer_find_unused(args, model)
        check_trainer_ddp(args, self.plan.varying_stages, self._bound.trainer_find_unused)
