"""Every distributed-training check `FreezeScheduler` makes, in one place.

A schedule that freezes or unfreezes stages during a run changes which parameters get gradients. That needs
DDP with ``find_unused_parameters`` (and no static graph), and rules out DeepSpeed/FSDP (which own the optimizer
state and flatten parameters) and ``nn.DataParallel`` (whose per-step replicas cannot be switched).
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from torch import nn
from transformers import PreTrainedModel
from transformers.training_args import ParallelMode

from .plan import FreezeSchedule

logger = logging.getLogger(__name__)

__all__ = ["unwrap_model", "find_ddp", "check_ddp_wrapper", "trainer_find_unused", "check_trainer_ddp",
           "check_training_args", "uses_data_parallel"]

_DDP_FIX = ("build the Accelerator with kwargs_handlers=[accelerate.DistributedDataParallelKwargs("
            "find_unused_parameters=True)] (or pass find_unused_parameters=True to DistributedDataParallel)")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / Accelerate wrappers (anything holding it as ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def find_ddp(model: nn.Module | None) -> nn.parallel.DistributedDataParallel | None:
    """The `DistributedDataParallel` wrapper in `model`'s chain of wrappers (``torch.compile``, ``.module``)."""
    m = model
    while m is not None:
        if isinstance(m, nn.parallel.DistributedDataParallel):
            return m
        m = getattr(m, "_orig_mod", None) or getattr(m, "module", None)
    return None


def check_ddp_wrapper(model: nn.Module | None, varying: Collection[str]) -> None:
    """Plain loops: stages in `varying` get no gradient at some steps, so a DDP wrapper must find unused
    parameters; without a wrapper to check, warn in a distributed run of several processes."""
    if not varying:
        return
    ddp = find_ddp(model)
    if ddp is not None and not ddp.find_unused_parameters:
        raise ValueError(f"FreezeScheduler trains stages {sorted(varying)} in only part of the schedule; "
                         "they get no gradient at the other steps, and DDP with find_unused_parameters=False "
                         f"fails there. {_DDP_FIX[0].upper() + _DDP_FIX[1:]}.")
    if ddp is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            logger.warning("FreezeScheduler: in a distributed run, stages %s get no gradient at some steps "
                           "(they train in only part of the schedule), which DDP allows only with "
                           "find_unused_parameters=True: %s. Pass attach(..., model=<the model accelerator.prepare "
                           "returned>) to have this checked.", sorted(varying), _DDP_FIX)


def trainer_find_unused(args, model: nn.Module | None) -> tuple[bool, str]:
    """The find_unused_parameters Trainer gives DDP, and why: ("explicit") the argument, ("checkpointing") off for a
    PreTrainedModel with activation checkpointing, ("default") on otherwise."""
    explicit = getattr(args, "ddp_find_unused_parameters", None)
    if explicit is not None:
        return bool(explicit), "explicit"
    model = unwrap_model(model) if model is not None else None
    if isinstance(model, PreTrainedModel) and (model.is_activation_checkpointing
                                               or getattr(args, "activation_checkpointing", False)
                                               or getattr(args, "gradient_checkpointing", False)):
        return False, "checkpointing"
    return True, "default"


def check_trainer_ddp(args, varying: Collection[str], find_unused: tuple[bool, str]) -> None:
    """Trainer's DDP (`find_unused` as `trainer_find_unused` read it) must find unused parameters when stages in
    `varying` go without gradients in part of the schedule."""
    ok, why = find_unused
    if getattr(args, "world_size", 1) <= 1 or not varying or ok:
        return
    stages = sorted(varying)
    if why == "explicit":
        raise ValueError(f"FreezeScheduler runs stages {stages} without gradients in part of the schedule, which "
                         "DDP only allows with find_unused_parameters; set ddp_find_unused_parameters=True (or "
                         "leave it unset).")
    raise ValueError(f"With activation checkpointing on, Trainer turns DDP's find_unused_parameters off, but "
                     f"FreezeScheduler runs stages {stages} without gradients in part of the schedule, which "
                     "needs it. Set ddp_find_unused_parameters=True (with non-reentrant checkpointing: "
                     "gradient_checkpointing_kwargs={'use_reentrant': False}), or turn checkpointing off.")


def uses_data_parallel(args) -> bool:
    """Trainer wraps the model in ``nn.DataParallel``: several GPUs in one process, no distributed launch."""
    mode = getattr(args, "parallel_mode", None)
    if mode is None:
        return False
    if not isinstance(mode, ParallelMode):
        try:
            mode = ParallelMode(getattr(mode, "value", mode))
        except ValueError:
            return False
    return getattr(args, "n_gpu", 1) > 1 and mode is ParallelMode.NOT_DISTRIBUTED


def _role(plan: FreezeSchedule) -> str:
    """What `plan` does to the optimizer, for error messages (after it is resolved)."""
    if plan.kept_for_later:
        return (f"it unfreezes stages {sorted(plan.kept_for_later)} during training, so the optimizer must hold them "
                "frozen")
    if plan.stage_lr_decay is not None:
        return "it gives each stage its own learning rate (stage_lr_decay) through per-stage parameter groups"
    return "it keeps the frozen stages out of the optimizer and their BatchNorm in eval mode"


def check_training_args(args, plan: FreezeSchedule) -> None:
    """Refuse TrainingArguments `plan` cannot run under: DeepSpeed, FSDP, DDP's static graph, and ``nn.DataParallel``
    when stages change during the run."""
    engine = ("DeepSpeed" if getattr(args, "deepspeed", None) or getattr(args, "deepspeed_plugin", None)
              else "FSDP" if getattr(args, "fsdp", None) else None)
    if engine is not None:
        raise ValueError(
            f"FreezeScheduler does not support {engine}: {_role(plan)}, and {engine} "
            f"{'partitions the optimizer state' if engine == 'DeepSpeed' else 'flattens the parameters'} itself. "
            "Use DDP (torchrun / accelerate launch); CNNs fit on one device."
            + (" Or drop stage_lr_decay: full fine-tuning then needs no FreezeScheduler."
               if plan.trains_all_from_start and plan.stage_lr_decay is not None else ""))
    if getattr(args, "ddp_static_graph", None):
        raise ValueError("FreezeScheduler changes which parameters get gradients at its steps; DDP's static_graph "
                         "assumes they never change. Leave ddp_static_graph unset.")
    if plan.varying_stages and uses_data_parallel(args):  # fixed stages (fine_tuning, full + decay) run under it
        raise ValueError("Several GPUs without a distributed launch means nn.DataParallel, whose per-step replicas "
                         "FreezeScheduler cannot switch between frozen and trainable; launch with torchrun or "
                         "accelerate launch (DDP), or use one GPU.")
