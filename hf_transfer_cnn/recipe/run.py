"""The fine-tuning job behind `recipes/finetune.py`: data → TransferModel → Trainer → metrics, plots, card, Hub.

Arguments are dataclasses parsed by `HfArgumentParser` (`ModelArguments`, `DataArguments`,
`TransformArguments`, `TrainingArguments`), from a YAML/JSON file (``--config``) with command-line overrides; see
`hf_transfer_cnn.recipe.args`. Each step of `run_finetune` lives in the module of its concern.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from ..data import DataArguments, TransformArguments
from .args import STRATEGIES, ModelArguments, parse_recipe_args
from .output import check_writable, move_aside, resume_point
from .plan import build_freeze_plan, keep_resumed_schedule, total_steps
from .prepare import build_datasets, check_resumed_labels, load_data, load_model
from .streaming import build_stream_datasets, check_streaming_options, load_stream
from .publish import build_report
from .publish import push_outputs
from .results import write_results
from .training import build_trainer, evaluate_before, train_and_evaluate

logger = logging.getLogger(__name__)

__all__ = ["ModelArguments", "parse_recipe_args", "run_finetune", "STRATEGIES", "close_process_group",
           "end_process"]


def run_finetune(model_args: ModelArguments, data_args: DataArguments, transform_args: TransformArguments,
                 training_args) -> dict[str, Any]:
    """Train, evaluate and write the output directory; returns the results written to all_results.json."""
    from transformers import set_seed

    from ..hub import redact_logs, write_model_card

    started = time.time()
    redact_logs(model_args.token, training_args.hub_token)  # no password or token in any log line of the run
    check_streaming_options(model_args, training_args)
    push = _take_over_trainer_settings(training_args)
    with training_args.main_process_first(desc="output_dir check"):  # nothing changes there until training starts
        resume, set_aside = resume_point(training_args, model_args.overwrite_output_dir)
    check_writable(training_args.output_dir)  # before anything trains: a run that cannot save would lose its work
    set_seed(training_args.seed)

    data = (load_stream if model_args.streaming else load_data)(model_args, data_args)
    check_resumed_labels(resume, data.id2label)
    total = total_steps(training_args, data.num_train)
    keep_resumed_schedule(model_args, resume, total)
    initial, scheduler = build_freeze_plan(model_args, total)
    model = load_model(model_args, data.id2label, initial)
    build = build_stream_datasets if model_args.streaming else build_datasets
    datasets = build(model, data, model_args, data_args, transform_args, training_args)

    trainer = build_trainer(model, training_args, datasets, scheduler)
    before = evaluate_before(trainer, datasets, model_args)
    with training_args.main_process_first(desc="output_dir"):  # every check passed: now the folder may change
        move_aside(training_args, set_aside)
    trained = train_and_evaluate(trainer, datasets, resume, before, started)
    if not trainer.is_world_process_zero():
        return trained.results

    out = Path(training_args.output_dir)
    summary = write_results(trained, trainer.state.log_history, model, data, model_args, scheduler, initial, out)
    write_model_card(build_report(model, model_args, data_args, training_args, data, trained, summary), out)
    if push:
        push_outputs(trained.results, out, training_args, model_args)
    return trained.results


def _take_over_trainer_settings(training_args) -> bool:
    """Settings the recipe takes over from Trainer; returns whether to push the finished folder to the Hub."""
    if training_args.remove_unused_columns:
        training_args.remove_unused_columns = False  # images are decoded on the fly from the raw column
    if training_args.dataloader_pin_memory and training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False  # nothing to pin for; torch would warn at every DataLoader
    push, training_args.push_to_hub = training_args.push_to_hub, False  # we push the finished folder ourselves
    return push


def close_process_group() -> None:
    """Destroy the process group Trainer opened (torchrun / accelerate launch), as each process ends; never raises.

    Call it from the script that owns the process, not from library code: a caller's own group is the caller's to
    close. Unreachable DDP wrappers (a finished Trainer's) are collected first, so nothing holds the group after."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        try:
            dist.destroy_process_group()
        except Exception as err:  # the run's work is done and saved: closing must not fail it
            logger.warning("Could not close the process group (%s: %s).", type(err).__name__, err)


def end_process(code: int) -> NoReturn:
    """Exit a recipe process with `code`. One of several launched processes (torchrun, accelerate launch) closes its
    process group, runs the exit handlers, flushes, and skips the interpreter's teardown: there, torch's gloo
    threads can abort a process that finished its work (SIGABRT, "terminate called without an active exception",
    twice in about 85 two-process runs here), turning a successful run into a failed launch."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(code)
    close_process_group()
    atexit._run_exitfuncs()  # what a normal exit runs first (logging's flush, datasets' clean-up, ...)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
