"""The fine-tuning job behind `recipes/finetune.py`: data → TransferModel → Trainer → metrics, plots, card, Hub.

Arguments are dataclasses parsed by `HfArgumentParser` (`ModelArguments`, `DataArguments`,
`TransformArguments`, `TrainingArguments`), from a YAML/JSON file (``--config``) with command-line overrides.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..processing import channel_values
from ..schedule.plan import optimizer_steps_per_epoch
from ..data import (DataArguments, TransformArguments, build_transforms, collate_fn,
                   load_image_classification_data, with_transforms)

logger = logging.getLogger(__name__)

__all__ = ["ModelArguments", "parse_recipe_args", "run_finetune", "STRATEGIES"]

STRATEGIES = ("feature_extraction", "fine_tuning", "gradual", "full")


@dataclass
class ModelArguments:
    """What to fine-tune and how."""

    model_name_or_path: str = field(metadata={"help": "Hub id or local directory of the pretrained checkpoint."})
    strategy: Literal["feature_extraction", "fine_tuning", "gradual", "full"] = field(default="gradual", metadata={
        "help": "feature_extraction: train the head only; fine_tuning: the top num_stages stages train from the "
                "start; gradual: head first, then the top num_stages stages from unfreeze_at_step (FreezeScheduler); "
                "full: everything trains."})
    num_stages: str = field(default="2", metadata={"help": "Top stages to train (fine_tuning/gradual): an int or 'all'."})
    unfreeze_at_step: int | None = field(default=None, metadata={
        "help": "gradual: optimizer step of the unfreeze (default: 30% of the training steps)."})
    unfreeze_at_epoch: float | None = field(default=None, metadata={"help": "gradual: unfreeze at this epoch instead."})
    schedule: str | None = field(default=None, metadata={
        "help": "gradual: multi-phase schedule 'step:stages,...', e.g. '0:0,300:2,900:all' (instead of the above; "
                "one given on the command line replaces the config file's)."})
    lr_factor: float = field(default=0.1, metadata={
        "help": "gradual: every learning rate is multiplied by this from the first unfreeze on."})
    stage_lr_decay: float | None = field(default=None, metadata={
        "help": "Discriminative LR: top trainable stage gets this times the head's LR, each lower stage this times "
                "the one above."})
    num_channels: int | None = field(default=None, metadata={"help": "Input channels (1 = grayscale); adapts the stem."})
    image_size: int | None = field(default=None, metadata={"help": "Square input size (default: the checkpoint's)."})
    head_hidden_sizes: str | None = field(default=None, metadata={"help": "Hidden layers of a custom head, e.g. '512,256'."})
    head_dropout: float = field(default=0.0, metadata={"help": "Dropout in a custom head."})
    head_pooling: Literal["avg", "max", "concat"] = field(default="avg", metadata={"help": "Pooling before the head."})
    cache_features: bool = field(default=False, metadata={
        "help": "feature_extraction: compute backbone features once and train the head on them (needs augment=False)."})
    expected_label_names: str | None = field(default=None, metadata={
        "help": "Comma-separated class names the data must have, in id order (e.g. to continue training a fine-tuned "
                "model, whose trained head is kept when its labels are these); other names, order or count are an "
                "error."})
    evaluate_before_training: bool = field(default=True, metadata={
        "help": "Evaluate once before training (the 'before' column of the results)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start afresh in an output_dir that holds an earlier run's checkpoints (they are moved to an "
                "overwritten-<time> folder in it, and its outputs replaced). Without it such a run is refused: resume it (resume_from_checkpoint: last) or "
                "pick a new output_dir."})
    model_revision: str = field(default="main", metadata={"help": "Checkpoint revision (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one / HF_TOKEN)."})

    def head_spec(self) -> dict | None:
        hidden = [int(h) for h in self.head_hidden_sizes.split(",") if h.strip()] if self.head_hidden_sizes else []
        if not hidden and not self.head_dropout and self.head_pooling == "avg":
            return None
        return {"hidden_sizes": hidden, "dropout": self.head_dropout, "pooling": self.head_pooling}

    def stages(self) -> int | str:
        value = str(self.num_stages).strip()
        return "all" if value.lower() == "all" else int(value)


def _load_config_file(path: str) -> dict:
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(data).__name__}.")
    return data


def parse_recipe_args(argv: list[str] | None = None):
    """(model_args, data_args, transform_args, training_args) from ``--config FILE`` plus CLI overrides."""
    from transformers import HfArgumentParser, TrainingArguments

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, TransformArguments, TrainingArguments))
    cli = {a[2:].split("=", 1)[0].replace("-", "_") for a in rest if a.startswith("--")}
    cfg: dict = {}
    if known.config:
        cfg = _load_config_file(known.config)
        valid = {f.name for dc in parser.dataclass_types for f in fields(dc)}
        unknown = sorted(set(cfg) - valid)
        if unknown:
            raise ValueError(f"Unknown argument(s) {unknown} in {known.config}. Valid names are the fields of "
                             "ModelArguments, DataArguments, TransformArguments and TrainingArguments.")
        if cli & set(_TRIGGERS):  # an unfreeze trigger on the command line replaces the file's (they exclude)
            for name in set(_TRIGGERS) - cli:
                if cfg.get(name) is not None:
                    logger.info("--%s on the command line replaces %s from %s.", sorted(cli & set(_TRIGGERS))[0],
                                name, known.config)
                    cfg[name] = None
        for action in parser._actions:
            if action.dest in cfg:
                action.required = False
        parser.set_defaults(**cfg)
    model_args, data_args, transform_args, training_args = parser.parse_args_into_dataclasses(args=rest)
    if model_args.strategy not in STRATEGIES:
        raise ValueError(f"strategy={model_args.strategy!r}; use one of {', '.join(STRATEGIES)}.")
    _check_freeze_options(model_args, cli, {k for k, v in cfg.items() if v is not None}, known.config)
    return model_args, data_args, transform_args, training_args


_TRIGGERS = ("unfreeze_at_step", "unfreeze_at_epoch", "schedule")
_GRADUAL_ONLY = (*_TRIGGERS, "lr_factor")


def _check_freeze_options(model_args: ModelArguments, cli: set[str], in_file: set[str], config: str | None) -> None:
    """Options the chosen strategy would not use are an error when given on the command line, a logged warning
    when they come from the config file (a shared recipe run with another --strategy); so are two triggers."""
    s = model_args.strategy
    given = cli | in_file
    if s == "gradual":
        triggers = [t for t in _TRIGGERS if getattr(model_args, t) is not None]
        if len(triggers) > 1:
            raise ValueError(f"strategy=gradual takes one of unfreeze_at_step, unfreeze_at_epoch, schedule; got "
                             f"{', '.join(f'{t}={getattr(model_args, t)!r}' for t in triggers)}. Keep one.")
        unused = ["num_stages"] if triggers == ["schedule"] and "num_stages" in given else []
    else:
        unused = [o for o in _GRADUAL_ONLY if o in given]
        if s in ("feature_extraction", "full") and "num_stages" in given:
            unused.append("num_stages")
        if s == "feature_extraction" and model_args.stage_lr_decay is not None:
            unused.append("stage_lr_decay")

    def why(names: list[str]) -> str:
        if s == "gradual":
            return "schedule sets the stage counts"
        them = "them" if len(names) > 1 else "it"
        return f"strategy={s} does not use {them}" + (
            "; unfreeze_at_step, unfreeze_at_epoch, schedule and lr_factor belong to strategy=gradual"
            if set(names) & set(_GRADUAL_ONLY) else "") + (
            "; stage_lr_decay sets backbone stages' learning rates, and feature_extraction trains none"
            if "stage_lr_decay" in names else "")

    on_cli = [o for o in unused if o in cli]
    if on_cli:
        them = "them" if len(on_cli) > 1 else "it"
        raise ValueError(f"{', '.join('--' + o for o in on_cli)}: {why(on_cli)}. Drop {them}, or pick a strategy "
                         f"that uses {them}.")
    if unused:
        logger.warning("Ignoring %s from %s: %s.", ", ".join(unused), config, why(unused))
        if "stage_lr_decay" in unused:  # dropped for this run, so that the card does not report it
            model_args.stage_lr_decay = None


def _parse_schedule(text: str) -> list[tuple[int, int | str]]:
    phases = []
    for part in text.split(","):
        step, _, stages = part.strip().partition(":")
        if not stages:
            raise ValueError(f"schedule entry {part!r} must look like 'step:stages', e.g. '300:2' or '900:all'.")
        phases.append((int(step), "all" if stages.strip() == "all" else int(stages)))
    return phases


def _total_steps(training_args, num_train: int) -> int:
    """The optimizer steps Trainer will run (its `max_steps`): batches are split over the processes as Accelerate's
    sharded loader does (the last, short batch kept unless `dataloader_drop_last`)."""
    if training_args.max_steps and training_args.max_steps > 0:
        return int(training_args.max_steps)
    bs, world = training_args.per_device_train_batch_size, max(training_args.world_size, 1)
    batches = num_train // (bs * world) if training_args.dataloader_drop_last else \
        math.ceil(math.ceil(num_train / bs) / world)
    per_epoch = optimizer_steps_per_epoch(batches, training_args.gradient_accumulation_steps)
    return int(math.ceil(training_args.num_train_epochs * per_epoch))


def build_freeze_plan(model_args: ModelArguments, total_steps: int):
    """(initial trainable stages, FreezeScheduler or None) for the chosen strategy."""
    from ..schedule import FreezeScheduler

    s = model_args.strategy
    if s == "feature_extraction":
        return 0, None
    if s == "full":  # a scheduler only for discriminative learning rates: every stage trains from step 0
        if model_args.stage_lr_decay is None:
            return "all", None
        return "all", FreezeScheduler(schedule=[(0, "all")], stage_lr_decay=model_args.stage_lr_decay)
    if s == "fine_tuning":
        sched = FreezeScheduler(schedule=[(0, model_args.stages())], stage_lr_decay=model_args.stage_lr_decay)
        return model_args.stages(), sched
    if model_args.schedule:
        return 0, FreezeScheduler(schedule=_parse_schedule(model_args.schedule), lr_factor=model_args.lr_factor,
                                  stage_lr_decay=model_args.stage_lr_decay)
    if model_args.unfreeze_at_epoch is not None:
        return 0, FreezeScheduler(unfreeze_at_epoch=model_args.unfreeze_at_epoch, num_stages=model_args.stages(),
                                  lr_factor=model_args.lr_factor, stage_lr_decay=model_args.stage_lr_decay)
    step = model_args.unfreeze_at_step if model_args.unfreeze_at_step is not None else _default_unfreeze_step(total_steps)
    return 0, FreezeScheduler(unfreeze_at_step=step, num_stages=model_args.stages(), lr_factor=model_args.lr_factor,
                              stage_lr_decay=model_args.stage_lr_decay)


def _default_unfreeze_step(total_steps: int) -> int:
    """`gradual` without a trigger unfreezes after 30 % of the run."""
    return max(1, round(0.3 * total_steps))


def _keep_resumed_schedule(model_args: ModelArguments, resume: str | None, total_steps: int) -> None:
    """A resumed `gradual` run keeps the unfreeze step its checkpoint was trained with (`SCHEDULE_FILE`). Without an
    explicit trigger, the default (30 % of the run) would follow the new run length and could refreeze stages that
    have trained; an explicit step that differs from the checkpoint's is a warning. A checkpoint without the record
    falls back to comparing run lengths: a default step that would move is refused, with the step that keeps it."""
    if not resume or model_args.strategy != "gradual" or model_args.schedule or model_args.unfreeze_at_epoch is not None:
        return
    from ..schedule import SCHEDULE_FILE

    record = Path(resume) / SCHEDULE_FILE
    if record.is_file():
        phases = json.loads(record.read_text()).get("phases") or []
        step = next((int(s) for s, n in phases if n > 0), None)
        if step is None or len(phases) > 2:
            return  # not a one-step gradual schedule: nothing to carry over
        if model_args.unfreeze_at_step is None:
            model_args.unfreeze_at_step = step
            logger.info("Resuming %s: keeping its unfreeze step %d (from %s).", resume, step, SCHEDULE_FILE)
        elif model_args.unfreeze_at_step != step:
            logger.warning("Resuming %s with unfreeze_at_step=%d; the run it continues unfroze at step %d.", resume,
                           model_args.unfreeze_at_step, step)
        return
    if model_args.unfreeze_at_step is not None:
        return
    state = Path(resume) / "trainer_state.json"
    before = json.loads(state.read_text()).get("max_steps") if state.is_file() else None
    if not before:
        return
    old, new = _default_unfreeze_step(int(before)), _default_unfreeze_step(total_steps)
    if old == new:
        return
    raise ValueError(
        f"Resuming {resume} for {total_steps} steps, but the run it continues was planned for {before}: the default "
        f"unfreeze step (30 % of the run) would move from {old} to {new}, and the resumed run would not follow the "
        f"schedule it was trained with. Pass --unfreeze_at_step {old} to keep it (or --unfreeze_at_step {new} to "
        "change it knowingly).")


def _dataset_title(data_args) -> str | None:
    """A readable dataset name: the Hub id, else the data folder (`data/train` -> `data`)."""
    if data_args.dataset_name:  # a Hub id, or a local dataset's folder name (never a local path)
        name = data_args.dataset_name
        local = os.path.expanduser(name)
        return Path(local).resolve().name if os.path.exists(local) else name
    if data_args.train_dir:
        path = Path(data_args.train_dir).resolve()
        return path.parent.name if path.name.lower() in ("train", "training") else path.name
    return None


def _with_stats(processor, transform_args, num_channels: int):
    d = processor.to_dict()
    d.pop("_processor_class", None)
    for key in ("image_mean", "image_std"):
        value = getattr(transform_args, key)
        if value:  # the values the transforms normalised with, one per model input channel
            d[key] = channel_values(value, num_channels, key)
    return type(processor).from_dict(d)


def _checkpoint_step(path: Path) -> int | None:
    name = path.name
    return int(name[len("checkpoint-"):]) if name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit() \
        else None


def _resume_point(training_args, overwrite: bool) -> tuple[str | None, list[Path]]:
    """The checkpoint to resume from. ``resume_from_checkpoint: last`` (or ``true``) means the newest one in
    output_dir. Checkpoints in output_dir that the run would overwrite or rotate away are never touched silently:
    those of an earlier run when starting fresh, and, when resuming a given checkpoint, those after it (an
    abandoned continuation, which `last` would later pick) or of another run. That is refused unless `overwrite`,
    which moves them to an ``overwritten-<time>`` folder. A checkpoint without optimizer state (``save_only_model``)
    is refused: Trainer would restart the LR schedule and the optimizer's moments without a word.

    Returns the checkpoint (or None) and the checkpoints to move aside; `_move_aside` moves them once every other
    check of the run has passed, so a refused run leaves the folder as it was."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(training_args.output_dir)
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    wanted = training_args.resume_from_checkpoint
    existing = sorted((p for p in out.glob("checkpoint-*") if p.is_dir() and _checkpoint_step(p) is not None),
                      key=_checkpoint_step) if out.is_dir() else []
    if isinstance(wanted, str) and wanted.strip().lower() in ("last", "true"):
        if last is None:
            raise ValueError(f"resume_from_checkpoint={wanted!r}: {out} holds no checkpoint-* directory to resume. "
                             "Drop resume_from_checkpoint to start a new run, or point it at a checkpoint directory.")
        _check_resumable(last)
        return last, []
    if wanted:
        path = Path(wanted)
        if not path.is_dir():
            raise ValueError(f"resume_from_checkpoint={wanted!r} is not a directory. Point it at a checkpoint-* "
                             f"directory, or use `last` for the newest one in {out}.")
        _check_resumable(str(path))
        ours = out.is_dir() and path.resolve().parent == out.resolve()
        step = _checkpoint_step(path)
        if step is None and (path / "trainer_state.json").is_file():
            step = json.loads((path / "trainer_state.json").read_text()).get("global_step")
        doomed = [p for p in existing if not ours or step is None or _checkpoint_step(p) > step]
        if not doomed:
            return wanted, []
        if not overwrite:
            why = f"after {path.name} (a continuation the resumed run would overwrite, and `resume last` pick)" \
                if ours else f"of another run than {wanted}"
            raise ValueError(
                f"output_dir {out} holds checkpoints {why}: {', '.join(p.name for p in doomed)}. Resume the newest "
                f"with --resume_from_checkpoint last, choose a new --output_dir, or pass --overwrite_output_dir true "
                f"to move them to an overwritten-<time> folder inside it first.")
        return wanted, doomed
    if last is None:
        return None, []
    if not overwrite:
        raise ValueError(
            f"output_dir {out} already holds checkpoints of an earlier run (latest: {Path(last).name}). "
            f"Continue that run with --resume_from_checkpoint last, choose a new --output_dir, or pass "
            f"--overwrite_output_dir true to start afresh there (its checkpoints are then moved to an "
            f"overwritten-<time> folder inside it).")
    # Trainer would leave them (rotation only runs with save_total_limit, and keeps the highest steps), and
    # `resume_from_checkpoint last` would later pick the old run's: move them aside, never delete them.
    return None, existing


def _move_aside(training_args, checkpoints: list[Path]) -> None:
    if training_args.process_index != 0 or not checkpoints:  # the other ranks wait in main_process_first
        return
    out = Path(training_args.output_dir)
    from datetime import datetime, timezone

    aside = out / f"overwritten-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(exist_ok=True)
    for p in checkpoints:
        p.rename(aside / p.name)
    logger.warning("overwrite_output_dir: %d checkpoint(s) in %s (%s) were moved to %s (delete it when no longer "
                   "needed); the run's other outputs will be replaced.", len(checkpoints), out,
                   ", ".join(p.name for p in checkpoints), aside)


def _check_resumable(checkpoint: str) -> None:
    path = Path(checkpoint)
    if not any(path.glob("optimizer*")) and not any(path.glob("global_step*")):
        raise ValueError(
            f"{checkpoint} holds no optimizer state (saved with save_only_model=True?): resuming from it would "
            "restart the learning-rate schedule and the optimizer's moments, so the run would not continue as it "
            f"was. Resume from a full checkpoint, or start a new run from its weights with --model_name_or_path "
            f"{checkpoint}.")


def run_finetune(model_args: ModelArguments, data_args: DataArguments, transform_args: TransformArguments,
                 training_args) -> dict[str, Any]:
    """Train, evaluate and write the output directory; returns the results written to all_results.json."""
    from transformers import Trainer, set_seed

    from ..hub import HubPushError, TransferReport, push_output_dir, write_model_card
    from ..metrics import compute_metrics_fn, confusion_matrix, per_class_accuracy
    from ..model import TransferModel
    from ..plots import plot_confusion_matrix, plot_training_curves

    t0 = time.time()
    if training_args.remove_unused_columns:
        training_args.remove_unused_columns = False  # images are decoded on the fly from the raw column
    push, training_args.push_to_hub = training_args.push_to_hub, False  # we push the finished folder ourselves
    with training_args.main_process_first(desc="output_dir check"):  # nothing changes there until training starts
        resume, set_aside = _resume_point(training_args, model_args.overwrite_output_dir)
    set_seed(training_args.seed)

    expected = {i: n.strip() for i, n in enumerate(model_args.expected_label_names.split(","))} if model_args.expected_label_names else None
    train_raw, eval_raw, id2label, eval_split = load_image_classification_data(
        data_args, expected_labels=expected, return_eval_split=True)
    if expected is not None and expected != id2label:  # same count (checked by the loader), other names or order
        raise ValueError(f"expected_label_names {list(expected.values())} differ from the data's classes in id order "
                         f"{list(id2label.values())}; fix the names/order, or drop expected_label_names.")
    total = _total_steps(training_args, len(train_raw))
    _keep_resumed_schedule(model_args, resume, total)
    initial, scheduler = build_freeze_plan(model_args, total)
    model = TransferModel.from_pretrained(
        model_args.model_name_or_path, id2label=id2label, num_channels=model_args.num_channels,
        image_size=model_args.image_size, head=model_args.head_spec(), trainable_stages=initial,
        revision=model_args.model_revision, token=model_args.token)
    train_tf, eval_tf = build_transforms(model.image_processor, model.num_input_channels,
                                         image_size=model_args.image_size, **transform_args.to_kwargs())
    if transform_args.image_mean or transform_args.image_std:  # the saved processor must normalise like training
        model.image_processor = _with_stats(model.image_processor, transform_args, model.num_input_channels)
    cols = dict(image_column=data_args.image_column_name, label_column=data_args.label_column_name)
    collator = collate_fn
    if model_args.cache_features:
        if model_args.strategy != "feature_extraction":
            raise ValueError(f"cache_features needs strategy='feature_extraction' (got {model_args.strategy!r}): "
                             "features of stages that train change every step.")
        if transform_args.augment:
            logger.warning("cache_features: caching un-augmented features (the eval preprocessing); random "
                           "augmentation is off for this run. Set augment=false to silence this.")
        from ..features import cache_pooled_features

        bs = training_args.per_device_eval_batch_size
        model.to(training_args.device)
        with training_args.main_process_first(desc="backbone features"):  # one rank writes, the others read
            train_ds = cache_pooled_features(model, train_raw, eval_tf, batch_size=bs, **cols)
            eval_ds = cache_pooled_features(model, eval_raw, eval_tf, batch_size=bs, **cols) \
                if eval_raw is not None else None
        collator = None
    else:
        train_ds = with_transforms(train_raw, train_tf, **cols)
        eval_ds = with_transforms(eval_raw, eval_tf, **cols) if eval_raw is not None else None

    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=collator, compute_metrics=compute_metrics_fn,
                      callbacks=[scheduler] if scheduler is not None else None)
    if scheduler is not None:  # annotate logs before the reporting integrations (TensorBoard, W&B, ...) send them
        trainer.callback_handler.callbacks.remove(scheduler)
        trainer.callback_handler.callbacks.insert(1, scheduler)  # after DefaultFlowCallback
    before = trainer.evaluate(metric_key_prefix="before") if eval_ds is not None and \
        model_args.evaluate_before_training else {}
    with training_args.main_process_first(desc="output_dir"):  # every check passed: now the folder may change
        _move_aside(training_args, set_aside)
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    results: dict[str, Any] = {**train_result.metrics, **before}
    pred = trainer.predict(eval_ds, metric_key_prefix="eval") if eval_ds is not None else None
    if pred is not None:
        results.update(pred.metrics)
    results["train_wall_time_s"] = round(time.time() - t0, 2)
    results["world_size"] = training_args.world_size
    results["train_steps"] = trainer.state.global_step
    # load_best_model_at_end: the saved weights are those of the best checkpoint, trained only up to its step
    best = trainer.state.best_global_step if training_args.load_best_model_at_end and \
        trainer.state.best_model_checkpoint else None
    weights_step = best or trainer.state.global_step
    if best:
        results["best_model_step"] = best

    if not trainer.is_world_process_zero():
        return results
    out = Path(training_args.output_dir)
    names = [id2label[i] for i in range(len(id2label))]
    stage_names = model.stage_names
    if scheduler is not None:
        counts, marks = scheduler.phases_until(weights_step), scheduler.phases_until(trainer.state.global_step)[1:]
    else:
        counts, marks = [(0, len(stage_names) if initial == "all" else int(initial))], []
    phases = [(step, stage_names[len(stage_names) - n:] if n else []) for step, n in counts]
    plots = [plot_training_curves(trainer.state.log_history, out / "training_curves.png", marks=marks)]
    per_class: dict[str, float] = {}
    support: dict[str, int] = {}
    if pred is not None:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        labels = np.asarray(pred.label_ids)
        cm = confusion_matrix(labels, np.asarray(logits).argmax(1), len(names))
        plots.append(plot_confusion_matrix(cm, names, out / "confusion_matrix.png"))
        per_class = {n: float(a) for n, a in zip(names, per_class_accuracy(cm)) if not np.isnan(a)}
        support = {n: int(c) for n, c in zip(names, cm.sum(axis=1))}
        results["per_class_accuracy"] = per_class
    results["num_train_images"], results["num_eval_images"] = len(train_raw), len(eval_raw) if eval_raw is not None else 0
    results["strategy"] = model_args.strategy
    results["phases"] = phases
    with open(out / "all_results.json", "w") as f:
        json.dump(results, f, indent=2, default=str)

    report = TransferReport.from_model(
        model, strategy=model_args.strategy, phases=phases, stage_names=stage_names,
        learning_rate=training_args.learning_rate,
        lr_factor=model_args.lr_factor if model_args.strategy == "gradual" else None,
        stage_lr_decay=model_args.stage_lr_decay, num_train_epochs=training_args.num_train_epochs
        if training_args.max_steps <= 0 else None, train_steps=trainer.state.global_step,
        batch_size=training_args.per_device_train_batch_size * max(training_args.world_size, 1)
        * training_args.gradient_accumulation_steps, eval_split=eval_split or "validation",
        dataset_id=data_args.dataset_name, dataset_dir=data_args.train_dir, dataset_name=_dataset_title(data_args),
        num_train_images=len(train_raw), num_eval_images=results["num_eval_images"],
        metrics={k: results[k] for k in ("eval_accuracy", "eval_top5_accuracy", "eval_macro_f1", "eval_loss")
                 if k in results},
        per_class_accuracy=per_class, per_class_support=support,
        plots=[Path(p).name for p in plots], repo_id=training_args.hub_model_id,
        notes=[f"**Weights:** the best checkpoint by `{training_args.metric_for_best_model}`, step {best} of "
               f"{trainer.state.global_step} (`load_best_model_at_end`); the schedule below is the one it was trained "
               "with, the metrics are its own"] if best else [])
    write_model_card(report, out)
    if push:
        repo = training_args.hub_model_id or out.name
        try:
            results["hub_commit"] = str(push_output_dir(out, repo, token=training_args.hub_token or model_args.token,
                                                        private=bool(training_args.hub_private_repo)))
        except HubPushError as err:
            logger.error("%s", err)
            results["hub_error"] = str(err)
            with open(out / "all_results.json", "w") as f:
                json.dump(results, f, indent=2, default=str)
            raise
    return results
