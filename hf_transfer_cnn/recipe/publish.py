"""A finished run published: its model card (README.md) and, with push_to_hub, the output_dir uploaded."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..data import DataArguments
from .args import ModelArguments
from .prepare import RunData, base_is_local
from .results import RunSummary, save_results
from .training import TrainedRun

logger = logging.getLogger(__name__)

__all__ = ["CARD_METRICS", "dataset_title", "build_report", "push_outputs"]

CARD_METRICS = ("eval_accuracy", "eval_top5_accuracy", "eval_macro_f1", "eval_loss")
"""The results the card's metrics table shows (those the run has)."""


def dataset_title(data_args: DataArguments) -> str | None:
    """A readable dataset name: the Hub id, else the data folder (`data/train` -> `data`)."""
    if data_args.dataset_name:  # a Hub id, or a local dataset's folder name (never a local path)
        name = data_args.dataset_name
        local = os.path.expanduser(name)
        return Path(local).resolve().name if os.path.exists(local) else name
    if data_args.train_dir:
        path = Path(data_args.train_dir).resolve()
        return path.parent.name if path.name.lower() in ("train", "training") else path.name
    return None


def build_report(model, model_args: ModelArguments, data_args: DataArguments, training_args: Any, data: RunData,
                 trained: TrainedRun, summary: RunSummary):
    """The `TransferReport` the model card is written from."""
    from ..hub import TransferReport

    results, best, t = trained.results, trained.best_step, training_args
    notes = [f"**Weights:** the best checkpoint by `{t.metric_for_best_model}`, step {best} of "
             f"{trained.final_step} (`load_best_model_at_end`); the schedule below is the one it was trained "
             "with, the metrics are its own"] if best else []
    return TransferReport.from_model(
        model, strategy=model_args.strategy, phases=summary.phases, stage_names=model.stage_names,
        learning_rate=t.learning_rate,
        lr_factor=model_args.lr_factor if model_args.strategy == "gradual" else None,
        stage_lr_decay=model_args.stage_lr_decay,
        num_train_epochs=t.num_train_epochs if t.max_steps <= 0 else None, train_steps=trained.final_step,
        batch_size=t.per_device_train_batch_size * max(t.world_size, 1) * t.gradient_accumulation_steps,
        eval_split=data.eval_split or "validation",
        dataset_id=data_args.dataset_name, dataset_dir=data_args.train_dir, dataset_name=dataset_title(data_args),
        num_train_images=data.num_train, num_eval_images=results["num_eval_images"],
        metrics={k: results[k] for k in CARD_METRICS if k in results},
        per_class_accuracy=summary.per_class, per_class_support=summary.support,
        plots=[Path(p).name for p in summary.plots], repo_id=t.hub_model_id, notes=notes,
        base_model_local=base_is_local(model_args, model))


def push_outputs(results: dict[str, Any], out: Path, training_args: Any, model_args: ModelArguments) -> None:
    """Upload `out` to the Hub (`hub_model_id`, else the folder's name) and record the commit in `results`; a failed
    upload is recorded in ``all_results.json`` (what failed, without local paths or secrets) and raised as
    `HubPushError`, whose message names that file as the one local change."""
    from ..hub import HubPushError, push_output_dir, redact

    repo = training_args.hub_model_id or out.name
    token = training_args.hub_token or model_args.token
    try:
        commit = push_output_dir(out, repo, token=token, private=bool(training_args.hub_private_repo))
        results["hub_commit"] = redact(str(commit), token)
    except HubPushError as err:
        results["hub_error"] = redact(err.detail or err.reason, token)
        save_results(results, out)
        told = err.with_local_change(f"{out.name}/all_results.json records this failure (hub_error)")
        logger.error("%s", told)
        raise told from None
