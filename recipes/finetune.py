#!/usr/bin/env python
"""Fine-tune a pretrained CNN on an image-classification dataset.

    accelerate launch recipes/finetune.py --config recipes/quickstart.yaml [--any_arg value ...]
    torchrun --nproc_per_node 2 recipes/finetune.py --config recipes/quickstart.yaml --use_cpu
    python recipes/finetune.py --model_name_or_path microsoft/resnet-50 --train_dir data/train --output_dir out
    python recipes/finetune.py --config recipes/gradual.yaml --train_dir data/train --validation_dir data/val
    python recipes/finetune.py --config recipes/gradual.yaml --streaming true --max_steps 2000

Every field of ModelArguments, DataArguments, TransformArguments (hf_transfer_cnn) and TrainingArguments
(transformers) is an argument; a YAML/JSON --config supplies defaults that the command line overrides. A data
source on the command line replaces the file's (--train_dir/--validation_dir its dataset_name with that dataset's
column and split names; --dataset_name its train_dir/validation_dir), and `none`/`null` unsets an option whose
default is None (--dataset_name none). Only the main process prints the JSON summary.
"""

import json
import logging
import sys

from hf_transfer_cnn.recipe import TrainingDiverged, end_process, parse_recipe_args, run_finetune
from hf_transfer_cnn.hub import HubPushError, redact_logs


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    redact_logs(handlers=True)  # no URL password or token on the console (HTTP clients log request URLs)
    model_args, data_args, transform_args, training_args = parse_recipe_args(argv)
    try:
        results = run_finetune(model_args, data_args, transform_args, training_args)
    except (HubPushError, TrainingDiverged) as err:  # a failed upload (training is saved) or a diverged run (its
        print(f"error: {err}", file=sys.stderr)  # good checkpoints are kept): the message says what to do
        return 1
    if training_args.process_index != 0:  # under DDP every process returns; one summary is enough
        return 0
    summary = {k: results[k] for k in ("before_accuracy", "eval_accuracy", "eval_top5_accuracy", "eval_macro_f1",
                                       "train_runtime", "train_wall_time_s") if k in results}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    end_process(main())  # a DDP process closes its group and skips teardown (an unexpected error propagates instead)
