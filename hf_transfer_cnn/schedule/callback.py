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
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from torch import nn
from transformers import TrainerCallback

from ..freezing import apply_freeze, resolve_trainable_stages, units_for
from ..model import tf_style_batchnorms
from .plan import optimizer_steps_per_epoch
from .lr import StageLrMultipliers, scale_lr_schedule, unwrap_optimizer

logger = logging.getLogger(__name__)

__all__ = ["FreezeScheduler", "SCHEDULE_FILE"]

SCHEDULE_FILE = "freeze_schedule.json"
"""Written into each Trainer checkpoint: the schedule (phases, lr factor, stage LR decay) its weights follow."""

Stages = int | str


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
    ):
        triggers = [x is not None for x in (unfreeze_at_step, unfreeze_at_epoch, schedule)]
        if sum(triggers) != 1:
            raise ValueError(
                "Give exactly one of unfreeze_at_step, unfreeze_at_epoch or schedule "
                f"(got unfreeze_at_step={unfreeze_at_step}, unfreeze_at_epoch={unfreeze_at_epoch}, schedule={schedule})."
            )
        if schedule is None and num_stages is None:
            raise ValueError("num_stages is required with unfreeze_at_step/unfreeze_at_epoch (an int or 'all').")
        if schedule is not None and num_stages is not None:
            raise ValueError("num_stages goes inside schedule=[(step, num_stages), ...]; don't pass both.")
        if not (isinstance(lr_factor, (int, float)) and lr_factor > 0):
            raise ValueError(f"lr_factor={lr_factor!r} must be a positive number (e.g. 0.1).")
        if stage_lr_decay is not None and not (0 < stage_lr_decay <= 1):
            raise ValueError(f"stage_lr_decay={stage_lr_decay!r} must be in (0, 1].")
        self._epoch_trigger = unfreeze_at_epoch
        if unfreeze_at_epoch is not None:
            if unfreeze_at_epoch < 0:
                raise ValueError(f"unfreeze_at_epoch={unfreeze_at_epoch} must be >= 0.")
            raw = [(0, 0), (None, num_stages)]
        elif unfreeze_at_step is not None:
            raw = [(0, 0), (unfreeze_at_step, num_stages)] if unfreeze_at_step != 0 else [(0, num_stages)]
        else:
            raw = list(schedule)
            if not raw or raw[0][0] != 0:
                raw = [(0, 0)] + raw
        for step, _ in raw:
            if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
                raise ValueError(f"Schedule step {step!r} must be a non-negative integer optimizer step.")
        steps = [s for s, _ in raw if s is not None]
        if steps != sorted(steps) or len(set(steps)) != len(steps):
            raise ValueError(f"Schedule steps must be strictly increasing, got {steps}.")
        self._raw_schedule = raw
        self.lr_factor = float(lr_factor)
        self.stage_lr_decay = stage_lr_decay
        # resolved against a model:
        self.steps: list[int] = []
        self.stages: list[int] = []
        self._units = None
        self._model: nn.Module | None = None
        self._current: int | None = None
        self._multipliers: StageLrMultipliers | None = None
        self._scheduler = None
        self._step = 0  # the optimizer step whose lr factor the scheduler's lambdas apply
        self._trainer_find_unused: tuple[bool, str] | None = None  # Trainer's DDP flag, read at on_init_end
        self._keep: set[str] = set()  # stages trainable later but not at step 0
        self._varying: set[str] = set()  # stages trainable in only part of the schedule

    # -- library API (also used by plain Accelerate loops) -------------------------------------------------

    def prepare_model(self, model: nn.Module) -> None:
        """Freeze `model` for step 0 and register the stages to be unfrozen later with autograd.

        Call before the optimizer (and DDP) are created.
        """
        model = _unwrap_model(model)
        units = units_for(model)  # raises a clear error for architectures not in the registry
        names = [u.name for u in units]
        counts = [resolve_trainable_stages(n, len(units), names) for _, n in self._raw_schedule]
        self._units, self._model = units, model
        self.stages = counts
        self.steps = self._resolve_steps(None)
        later = set(names[len(names) - max(counts):]) - set(names[len(names) - counts[0]:] if counts[0] else [])
        self._keep = later
        # stages trainable in some phase and frozen in another: no gradient at some steps (DDP must allow that)
        self._varying = set(names[len(names) - max(counts):]) - set(names[len(names) - min(counts):] if min(counts)
                                                                    else [])
        self._current = None
        self._apply(0, force=True)
        trained = units[len(units) - max(counts):] if max(counts) else []
        tf_style = [m for u in trained for mod in u.modules for m in tf_style_batchnorms(mod)]
        if tf_style:
            logger.warning(
                "FreezeScheduler: %d BatchNorm layers in the stages this schedule trains have momentum %g, TensorFlow's "
                "decay convention (transformers' MobileNet/EfficientNet ports); in PyTorch their running statistics "
                "would follow the last batch. Call hf_transfer_cnn.fix_tf_bn_momentum(model) before training, or "
                "load the model with TransferModel.from_pretrained, which does.", len(tf_style), tf_style[0].momentum)

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
        if self._model is None:
            raise RuntimeError("Call FreezeScheduler.prepare_model(model) before attach().")
        self._check_ddp_wrapper(model)
        self._attach(optimizer, lr_scheduler, max_steps=max_steps, steps_per_epoch=steps_per_epoch,
                     global_step=global_step)

    def _check_ddp_wrapper(self, model: nn.Module | None) -> None:
        if not self._varying:
            return
        ddp, m = None, model
        while m is not None and ddp is None:
            if isinstance(m, nn.parallel.DistributedDataParallel):
                ddp = m
            m = getattr(m, "_orig_mod", None) or getattr(m, "module", None)
        fix = ("build the Accelerator with kwargs_handlers=[accelerate.DistributedDataParallelKwargs("
               "find_unused_parameters=True)] (or pass find_unused_parameters=True to DistributedDataParallel)")
        if ddp is not None and not ddp.find_unused_parameters:
            raise ValueError(f"FreezeScheduler trains stages {sorted(self._varying)} in only part of the schedule; "
                             "they get no gradient at the other steps, and DDP with find_unused_parameters=False "
                             f"fails there. {fix[0].upper() + fix[1:]}.")
        if ddp is None:  # no wrapper given (or the unwrapped model): warn where a distributed run could need it
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                logger.warning("FreezeScheduler: in a distributed run, stages %s get no gradient at some steps "
                               "(they train in only part of the schedule), which DDP allows only with "
                               "find_unused_parameters=True: %s. Pass attach(..., model=<the model accelerator.prepare "
                               "returned>) to have this checked.", sorted(self._varying), fix)

    def _attach(self, optimizer, lr_scheduler, *, max_steps: int | None, steps_per_epoch: int | None,
                global_step: int) -> None:
        if self._epoch_trigger is not None and not steps_per_epoch:
            raise ValueError("unfreeze_at_epoch needs steps_per_epoch (optimizer steps per epoch).")
        if self.lr_factor != 1.0 and lr_scheduler is None:
            raise ValueError(
                f"lr_factor={self.lr_factor:g} is applied through the LR scheduler, but attach() got none. Pass "
                "lr_scheduler=... (for a constant learning rate: torch.optim.lr_scheduler.LambdaLR(optimizer, "
                "lambda step: 1.0)), or use lr_factor=1.0."
            )
        if self.stage_lr_decay is not None and self.stage_lr_decay != 1.0 and optimizer is None:
            raise ValueError(f"stage_lr_decay={self.stage_lr_decay:g} needs the optimizer: attach(optimizer, ...).")
        self.steps = self._resolve_steps(steps_per_epoch)
        if optimizer is not None:
            self._check_optimizer(optimizer)
        if max_steps is not None and max_steps > 0:
            late = [s for s in self.steps[1:] if s >= max_steps]
            if late:
                logger.warning("FreezeScheduler: unfreeze step(s) %s are at or after max_steps=%d and will never "
                               "happen; lower them or raise max_steps.", late, max_steps)
        self._step = global_step
        self._scheduler = None
        if self.lr_factor != 1.0:
            self._scheduler = scale_lr_schedule(lr_scheduler, self._scheduled_factor)
        if self.stage_lr_decay is not None and self.stage_lr_decay != 1.0:
            if self._multipliers is not None:
                self._multipliers.remove()
            self._multipliers = StageLrMultipliers(optimizer, self._stage_multipliers)
        self._current = None
        self._apply(global_step, force=True)

    def update(self, global_step: int) -> bool:
        """Apply the phase and lr factor for `global_step` (call once per optimizer step, before its forward).

        Returns True when the set of trainable stages changed.
        """
        return self._apply(global_step)

    def _resolve_steps(self, steps_per_epoch: int | None) -> list[int]:
        if self._epoch_trigger is None:
            return [s for s, _ in self._raw_schedule]
        if steps_per_epoch is None:  # not known until train begin: nothing unfreezes before that
            return [0, sys.maxsize]
        return [0, int(math.ceil(self._epoch_trigger * steps_per_epoch))]

    # -- schedule ------------------------------------------------------------------------------------------

    def phase_at(self, step: int) -> int:
        return bisect.bisect_right(self.steps, step) - 1

    def trainable_stages_at(self, step: int) -> int:
        return self.stages[max(self.phase_at(step), 0)]

    @property
    def first_unfreeze_step(self) -> int | None:
        """The first optimizer step at which any backbone stage trains (the lr factor applies from there on)."""
        return next((s for s, n in zip(self.steps, self.stages) if n > 0), None)

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

    def _scheduled_factor(self, scheduler_step: int) -> float:
        # Not keyed on the scheduler's count: it lags the optimizer step when fp16 skips steps (no
        # scheduler.step() then), and Accelerate's scheduler wrapper steps it num_processes times per
        # optimizer step. The factor follows the optimizer step, like the stages do (see `_set_step`).
        return self.lr_factor_at(self._step)

    def _set_step(self, step: int) -> None:
        """Record the current optimizer step; re-sync the scheduler's lr when its factor changes."""
        before = self.lr_factor_at(self._step)
        self._step = step
        if self._scheduler is not None and self.lr_factor_at(step) != before:
            scale_lr_schedule(self._scheduler, self._scheduled_factor)  # lr = base * lambda(last_epoch), as stepped

    def lr_factor_at(self, step: int) -> float:
        first = self.first_unfreeze_step
        return self.lr_factor if first is not None and step >= first else 1.0

    def _stage_multipliers(self):
        n = self.stages[self._current] if self._current is not None else 0
        units = self._units[len(self._units) - n:] if n else []
        return [(list(u.parameters()), self.stage_lr_decay ** depth)
                for depth, u in enumerate(reversed(units), start=1)]

    def _apply(self, step: int, force: bool = False) -> bool:
        self._set_step(step)
        phase = max(self.phase_at(step), 0)
        if phase == self._current and not force:
            return False
        changed = self._current is not None and self.stages[phase] != self.stages[self._current]
        self._current = phase
        model = self._model
        n = self.stages[phase]
        keep = {u.name for u in self._units} & self._keep
        if hasattr(model, "freeze") and hasattr(model, "stage_units"):
            model.freeze(n, keep_requires_grad=keep)
        else:
            apply_freeze(model, self._units, n, keep_requires_grad=keep)
        if changed:
            names = [u.name for u in self._units][len(self._units) - n:] if n else []
            logger.info("FreezeScheduler: step %d: trainable stages %s, lr x%g", step, names, self.lr_factor_at(step))
        return changed

    def _check_optimizer(self, optimizer) -> None:
        opt = unwrap_optimizer(optimizer)
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        n_max = max(self.stages)
        missing = [u.name for u in self._units[len(self._units) - n_max:] if n_max
                   for p in u.parameters() if id(p) not in in_opt]
        if missing:
            raise RuntimeError(
                f"The optimizer does not hold the parameters of stage(s) {sorted(set(missing))} that FreezeScheduler "
                "will unfreeze, so they would never train. Pass the callback to Trainer(callbacks=[...]) when the "
                "Trainer is created (not trainer.add_callback afterwards), or call prepare_model(model) before "
                "building your optimizer."
            )

    # -- Trainer events ----------------------------------------------------------------------------------

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("FreezeScheduler needs the Trainer's model (Trainer(model=...); model_init is not supported).")
        self.prepare_model(model)
        self._check_args(args)
        self._trainer_find_unused = _trainer_find_unused(args, model)  # what this Trainer gave DDP, fixed now
        self._check_trainer_ddp(args, model)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None,
                       train_dataloader=None, **kwargs):
        self._check_args(args)
        if self._model is None or (model is not None and _unwrap_model(model) is not self._model):
            raise RuntimeError(
                "FreezeScheduler was not set up before the optimizer was built. Pass it to Trainer(callbacks=[...]) "
                "when creating the Trainer; adding it with trainer.add_callback() is too late."
            )
        steps_per_epoch = None
        if self._epoch_trigger is not None:
            if train_dataloader is None or not hasattr(train_dataloader, "__len__"):
                raise ValueError("unfreeze_at_epoch needs a train dataloader with a length; use unfreeze_at_step.")
            steps_per_epoch = optimizer_steps_per_epoch(len(train_dataloader), args.gradient_accumulation_steps)
        self._check_trainer_ddp(args, model)
        self._attach(optimizer, lr_scheduler, max_steps=state.max_steps, steps_per_epoch=steps_per_epoch,
                     global_step=state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self._apply(state.global_step)  # also sets the lr factor of the next update

    def schedule_record(self) -> dict:
        """The resolved schedule, as saved in checkpoints: ``phases`` [[first step, trainable stages], ...]."""
        return {"phases": [[int(s), int(n)] for s, n in zip(self.steps, self.stages)], "lr_factor": self.lr_factor,
                "stage_lr_decay": self.stage_lr_decay, "stage_names": [u.name for u in self._units or []]}

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"  # the one Trainer just wrote
        if state.is_world_process_zero and folder.is_dir():
            (folder / SCHEDULE_FILE).write_text(json.dumps(self.schedule_record(), indent=2))

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Annotate training logs with the phase of the optimizer step they describe."""
        if not state.log_history or self._current is None or "learning_rate" not in state.log_history[-1]:
            return
        entry = state.log_history[-1]
        step = max(state.global_step - 1, 0)  # the update that was just made
        n = self.trainable_stages_at(step)
        extra = {"trainable_stages": n, "lr_factor": self.lr_factor_at(step)}
        if self.stage_lr_decay is not None and n:
            names = [u.name for u in self._units][len(self._units) - n:]
            for depth, name in enumerate(reversed(names), start=1):
                extra[f"learning_rate_{name}"] = entry["learning_rate"] * self.stage_lr_decay ** depth
        entry.update(extra)
        if logs is not None:
            logs.update(extra)

    def on_train_end(self, args, state, control, **kwargs):
        if self._multipliers is not None:
            self._multipliers.remove()
            self._multipliers = None

    def _role(self) -> str:
        """What this schedule does to the optimizer, for error messages (after prepare_model)."""
        if self._keep:
            return f"it unfreezes stages {sorted(self._keep)} during training, so the optimizer must hold them frozen"
        if self.stage_lr_decay is not None:
            return "it gives each stage its own learning rate (stage_lr_decay) through per-stage parameter groups"
        return "it keeps the frozen stages out of the optimizer and their BatchNorm in eval mode"

    def _trains_all_from_start(self) -> bool:
        return self._units is not None and bool(self.stages) and min(self.stages) == len(self._units)

    def _check_args(self, args) -> None:
        engine = ("DeepSpeed" if getattr(args, "deepspeed", None) or getattr(args, "deepspeed_plugin", None)
                  else "FSDP" if getattr(args, "fsdp", None) else None)
        if engine is not None:
            raise ValueError(
                f"FreezeScheduler does not support {engine}: {self._role()}, and {engine} "
                f"{'partitions the optimizer state' if engine == 'DeepSpeed' else 'flattens the parameters'} itself. "
                "Use DDP (torchrun / accelerate launch); CNNs fit on one device."
                + (" Or drop stage_lr_decay: full fine-tuning then needs no FreezeScheduler."
                   if self._trains_all_from_start() and self.stage_lr_decay is not None else ""))
        if getattr(args, "ddp_static_graph", None):
            raise ValueError("FreezeScheduler changes which parameters get gradients at its steps; DDP's static_graph "
                             "assumes they never change. Leave ddp_static_graph unset.")
        if getattr(args, "n_gpu", 1) > 1 and getattr(args, "parallel_mode", None) is not None and \
                str(getattr(args.parallel_mode, "value", args.parallel_mode)) == "not_distributed" and \
                (self._keep or self._varying):  # fixed stages (fine_tuning, full + decay) run under it
            raise ValueError("Several GPUs without a distributed launch means nn.DataParallel, whose per-step replicas "
                             "FreezeScheduler cannot switch between frozen and trainable; launch with torchrun or "
                             "accelerate launch (DDP), or use one GPU.")

    def _check_trainer_ddp(self, args, model) -> None:
        """Stages kept for a later unfreeze get no gradient until then: Trainer's DDP must find unused parameters.
        Trainer fixes that flag when it is created (from ddp_find_unused_parameters, else off when activation
        checkpointing is on), so the decision is read at on_init_end and kept; later model changes do not alter it."""
        if self._trainer_find_unused is None:  # on_train_begin without on_init_end: read it now
            self._trainer_find_unused = _trainer_find_unused(args, model)
        find_unused, why = self._trainer_find_unused
        if getattr(args, "world_size", 1) <= 1 or not self._varying or find_unused:
            return
        stages = sorted(self._varying)
        if why == "explicit":
            raise ValueError(f"FreezeScheduler runs stages {stages} without gradients in part of the schedule, which "
                             "DDP only allows with find_unused_parameters; set ddp_find_unused_parameters=True (or "
                             "leave it unset).")
        raise ValueError(f"With activation checkpointing on, Trainer turns DDP's find_unused_parameters off, but "
                         f"FreezeScheduler runs stages {stages} without gradients in part of the schedule, which "
                         "needs it. Set ddp_find_unused_parameters=True (with non-reentrant checkpointing: "
                         "gradient_checkpointing_kwargs={'use_reentrant': False}), or turn checkpointing off.")


def _trainer_find_unused(args, model) -> tuple[bool, str]:
    """The find_unused_parameters Trainer gives DDP, and why: ("explicit") the argument, ("checkpointing") off for a
    PreTrainedModel with activation checkpointing, ("default") on otherwise."""
    from transformers import PreTrainedModel

    explicit = getattr(args, "ddp_find_unused_parameters", None)
    if explicit is not None:
        return bool(explicit), "explicit"
    model = _unwrap_model(model) if model is not None else None
    if isinstance(model, PreTrainedModel) and (model.is_activation_checkpointing
                                               or getattr(args, "activation_checkpointing", False)
                                               or getattr(args, "gradient_checkpointing", False)):
        return False, "checkpointing"
    return True, "default"


def _unwrap_model(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model
