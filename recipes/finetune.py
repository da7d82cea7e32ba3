#!/usr/bin/env python
"""Fine-tune a pretrained CNN on an image-classification dataset.

    accelerate launch recipes/finetune.py --config recipes/quickstart.yaml [--any_arg value ...]
    torchrun --nproc_per_node 2 recipes/finetune.py --config recipes/quickstart.yaml --use_cpu
    python recipes/finetune.py --model_name_or_path microsoft/resnet-50 --train_dir data/train --output_dir out

Every field of ModelArguments, DataArguments, TransformArguments (hf_transfer_cnn) and TrainingArguments
(transformers) is an argument; a YAML/JSON --config supplies defaults that the command line overrides.
"""

import json
import logging
import sys

from hf_transfer_cnn.recipe import parse_recipe_args, run_finetune
from hf_transfer_cnn.hub import HubPushError


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, transform_args, training_args = parse_recipe_args(argv)
    try:
        results = run_finetune(model_args, data_args, transform_args, training_args)
    except HubPushError as err:  # training finished and is saved; the message says how to retry the upload
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = {k: results[k] for k in ("before_accuracy", "eval_accuracy", "eval_top5_accuracy", "eval_macro_f1",
                                       "train_runtime", "train_wall_time_s") if k in results}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
