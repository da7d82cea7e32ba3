"""The application layer: the fine-tuning recipe (arguments, run steps, output_dir policy) and its data helpers.

Modules by concern: `args` (ModelArguments, config file, option checks), `plan` (strategy → freezing schedule),
`output` (resume / overwrite policy of output_dir), `prepare` (data, model, datasets), `training` (Trainer),
`results` (plots, all_results.json), `publish` (model card, Hub push), `streaming` (``--streaming``: the data as
an IterableDataset), `checks` (option values: types, ranges, duplicate keys), `divergence` (a nan/inf loss stops
the run), `seeded` (augmentation seeded per sample, so a resumed run repeats it), `run` (`run_finetune`, the steps
in order),
`fashion_mnist` (the demo's and benchmarks' dataset). The core package never imports this one."""

from .args import STRATEGIES, ModelArguments, parse_recipe_args
from .divergence import TrainingDiverged
from .run import close_process_group, end_process, run_finetune

__all__ = ["ModelArguments", "STRATEGIES", "TrainingDiverged", "close_process_group", "end_process",
           "parse_recipe_args", "run_finetune"]
