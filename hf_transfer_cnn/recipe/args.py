"""The recipe's arguments: `ModelArguments`, the YAML/JSON ``--config`` file merged under the command line, and the
checks of freeze options the chosen strategy would not use."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ..data import DataArguments, TransformArguments
from .checks import check_file_values, check_values, load_config_mapping

logger = logging.getLogger(__name__)

__all__ = ["ModelArguments", "STRATEGIES", "TRIGGERS", "GRADUAL_ONLY", "UNSET_VALUES", "RECIPE_HELP",
           "load_config_file", "parse_recipe_args", "check_freeze_options"]

STRATEGIES = ("feature_extraction", "fine_tuning", "gradual", "full")
TRIGGERS = ("unfreeze_at_step", "unfreeze_at_epoch", "schedule")
"""The `gradual` unfreeze triggers; they exclude each other."""
GRADUAL_ONLY = (*TRIGGERS, "lr_factor")
"""Options only `gradual` uses."""
SOURCES = ("dataset_name", "train_dir", "validation_dir")
"""The options that name the data; one on the command line replaces the config file's data source."""
SOURCE_DETAILS = ("dataset_config_name", "image_column_name", "label_column_name", "train_split_name",
                  "eval_split_name")
"""Options that describe a dataset_name dataset: they go with it when the command line names other data."""
UNSET_VALUES = ("none", "null")
"""``--option none`` (or ``null``, any case) sets an option whose default is None to None, e.g. to drop the
config file's value."""
RECIPE_HELP = (
    "A --config YAML/JSON file supplies defaults; the command line overrides them. A data source on the command "
    "line replaces the file's: --train_dir/--validation_dir replace its dataset_name together with that dataset's "
    "dataset_config_name, column and split names (an imagefolder has the columns image and label), and "
    "--dataset_name replaces its train_dir/validation_dir. Any option whose default is None can be unset with "
    "'none' or 'null' (e.g. --dataset_name none, --unfreeze_at_step null). --streaming true reads the training data "
    "as a stream (needs max_steps; step-based unfreezing only; no cache_features). Random augmentation is seeded "
    "per sample by (seed, epoch, index), so a run resumed from any checkpoint (epoch boundaries included) gives the "
    "uninterrupted run's weights, bit for bit on CPU (GPU kernels may be nondeterministic; not with --streaming). "
    "resume_from_checkpoint last skips checkpoints whose save was cut off (moved to an incomplete-<time> folder); a "
    "loss that becomes nan/inf stops the run (exit 1) keeping the checkpoints saved before it.")
"""The recipe's --help epilog."""


@dataclass
class ModelArguments:
    """What to fine-tune and how."""

    model_name_or_path: str = field(metadata={"help": "Hub id or local directory of the pretrained checkpoint."})
    strategy: Literal["feature_extraction", "fine_tuning", "gradual", "full"] = field(default="gradual", metadata={
        "help": "feature_extraction: train the head only; fine_tuning: the top num_stages stages train from the "
                "start; gradual: head first, then the top num_stages stages from unfreeze_at_step (FreezeScheduler); "
                "full: everything trains."})
    num_stages: str = field(default="2", metadata={
        "help": "Top stages to train (fine_tuning/gradual): an int or 'all'."})
    unfreeze_at_step: int | None = field(default=None, metadata={
        "help": "gradual: optimizer step of the unfreeze (default: 30%% of the training steps)."})
    unfreeze_at_epoch: float | None = field(default=None, metadata={"help": "gradual: unfreeze at this epoch instead."})
    schedule: str | None = field(default=None, metadata={
        "help": "gradual: multi-phase schedule 'step:stages,...', e.g. '0:0,300:2,900:all' (instead of the above; "
                "one given on the command line replaces the config file's)."})
    lr_factor: float = field(default=0.1, metadata={
        "help": "gradual: every learning rate is multiplied by this from the first unfreeze on."})
    stage_lr_decay: float | None = field(default=None, metadata={
        "help": "Discriminative LR: top trainable stage gets this times the head's LR, each lower stage this times "
                "the one above."})
    num_channels: int | None = field(default=None, metadata={
        "help": "Input channels (1 = grayscale); adapts the stem."})
    image_size: int | None = field(default=None, metadata={"help": "Square input size (default: the checkpoint's)."})
    head_hidden_sizes: str | None = field(default=None, metadata={
        "help": "Hidden layers of a custom head, e.g. '512,256'."})
    head_dropout: float = field(default=0.0, metadata={"help": "Dropout in a custom head."})
    head_pooling: Literal["avg", "max", "concat"] = field(default="avg", metadata={"help": "Pooling before the head."})
    cache_features: bool = field(default=False, metadata={
        "help": "feature_extraction: compute backbone features once and train the head on them (needs augment=False)."})
    streaming: bool = field(default=False, metadata={
        "help": "Read the training data as a stream (datasets' IterableDataset; Hub or local data, nothing downloaded "
                "or converted up front), split between DDP processes, shuffled in a buffer and repeated until "
                "max_steps, which is required: a stream has no length, so unfreezing is by step only (no "
                "unfreeze_at_epoch) and cache_features is refused. The evaluation split is read once into memory "
                "(cap it with max_eval_samples); without one there is no evaluation (train_val_split is not used). "
                "max_train_samples/max_eval_samples take the first examples of a stream. Labels must be a "
                "ClassLabel column (an imagefolder's are)."})
    shuffle_buffer_size: int = field(default=1000, metadata={
        "help": "streaming: examples held in the shuffle buffer (0 = no shuffling)."})
    expected_label_names: str | None = field(default=None, metadata={
        "help": "Comma-separated class names the data must have, in id order (e.g. to continue training a fine-tuned "
                "model, whose trained head is kept when its labels are these); other names, order or count are an "
                "error."})
    evaluate_before_training: bool = field(default=True, metadata={
        "help": "Evaluate once before training (the 'before' column of the results)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start afresh in an output_dir that holds an earlier run's checkpoints (they are moved to an "
                "overwritten-<time> folder in it, and its outputs replaced). Without it such a run is refused: "
                "resume it (resume_from_checkpoint: last) or pick a new output_dir."})
    model_revision: str = field(default="main", metadata={"help": "Checkpoint revision (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one / HF_TOKEN)."})

    def head_spec(self) -> dict | None:
        """The custom head for `TransferModel.from_pretrained`, or None for the default one."""
        hidden = [int(h) for h in self.head_hidden_sizes.split(",") if h.strip()] if self.head_hidden_sizes else []
        if not hidden and not self.head_dropout and self.head_pooling == "avg":
            return None
        return {"hidden_sizes": hidden, "dropout": self.head_dropout, "pooling": self.head_pooling}

    def stages(self) -> int | str:
        """`num_stages` as an int, or ``"all"``."""
        value = str(self.num_stages).strip()
        return "all" if value.lower() == "all" else int(value)

    def expected_labels(self) -> dict[int, str] | None:
        """`expected_label_names` as ``{id: name}``, or None when not given."""
        if not self.expected_label_names:
            return None
        return {i: n.strip() for i, n in enumerate(self.expected_label_names.split(","))}


def load_config_file(path: str) -> dict:
    """The argument mapping of a YAML (``.yaml``/``.yml``) or JSON config file; a key given twice is an error."""
    return load_config_mapping(path)


def parse_recipe_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TransformArguments, Any]:
    """(model_args, data_args, transform_args, training_args) from ``--config FILE`` plus CLI overrides."""
    from transformers import HfArgumentParser, TrainingArguments

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, TransformArguments, TrainingArguments),
                              epilog=RECIPE_HELP.replace("%", "%%"))
    rest, unset = _take_unset_options(parser, rest)
    values = _cli_values(rest)
    cli = set(values)
    cfg = _config_defaults(parser, known.config, values) if known.config else {}
    for name in unset:
        cfg[name] = None
    parser.set_defaults(**dict.fromkeys(unset))
    model_args, data_args, transform_args, training_args = parser.parse_args_into_dataclasses(args=rest)
    if model_args.strategy not in STRATEGIES:
        raise ValueError(f"strategy={model_args.strategy!r}; use one of {', '.join(STRATEGIES)}.")
    check_freeze_options(model_args, cli, {k for k, v in cfg.items() if v is not None}, known.config)
    check_values(model_args, transform_args, training_args)
    return model_args, data_args, transform_args, training_args


def _cli_values(args: list[str]) -> dict[str, str | None]:
    """``{option: its first value (None for a bare flag)}`` of the command line."""
    values: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            nxt = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
            values[name.replace("-", "_")] = value if eq else nxt
    return values


def _take_unset_options(parser, args: list[str]) -> tuple[list[str], set[str]]:
    """`args` without ``--option none``/``null`` (options whose default is None), and the names of those. An option
    given more than once takes its last value(s), as argparse does: ``--x 5 --x none`` unsets x; ``--x none --x 5``
    is 5; ``--image_mean 0.5 0.5 0.5 --image_mean none`` unsets it."""
    optional = {f.name for dc in parser.dataclass_types for f in fields(dc) if f.default is None}
    items: list[tuple[str, list[str]]] = []  # (option name or "", its tokens), in order
    unset, i = set(), 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        name = name.replace("-", "_")
        if name not in optional:
            items.append(("", [arg]))
            i += 1
            continue
        end = i + 1
        while not eq and end < len(args) and not args[end].startswith("--"):  # its value(s), lists included
            end += 1
        values = [value] if eq else args[i + 1:end]
        items = [item for item in items if item[0] != name]  # an earlier value of this option is overridden
        if len(values) == 1 and values[0].strip().lower() in UNSET_VALUES:
            unset.add(name)
        else:
            unset.discard(name)
            items.append((name, args[i:end]))
        i = end
    return [token for _, tokens in items for token in tokens], unset


def _config_defaults(parser, config: str, cli: dict[str, str | None]) -> dict:
    """Load `config` and make its values the parser's defaults (the command line still overrides them); returns
    the file's mapping, less any unfreeze trigger or data source that one on the command line replaces."""
    cfg = load_config_file(config)
    valid = {f.name for dc in parser.dataclass_types for f in fields(dc)}
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise ValueError(f"Unknown argument(s) {unknown} in {config}. Valid names are the fields of "
                         "ModelArguments, DataArguments, TransformArguments and TrainingArguments.")
    check_file_values(parser, cfg, config)
    if set(cli) & set(TRIGGERS):  # an unfreeze trigger on the command line replaces the file's (they exclude)
        for name in set(TRIGGERS) - set(cli):
            if cfg.get(name) is not None:
                logger.info("--%s on the command line replaces %s from %s.", sorted(set(cli) & set(TRIGGERS))[0],
                            name, config)
                cfg[name] = None
    _replace_file_source(cfg, cli, config)
    for action in parser._actions:
        if action.dest in cfg:
            action.required = False
    parser.set_defaults(**cfg)
    return cfg


def _replace_file_source(cfg: dict, cli: dict[str, str | None], config: str) -> None:
    """A data source on the command line replaces the file's: train_dir/validation_dir its dataset_name (with
    that dataset's config, column and split names; train_dir also its validation_dir), dataset_name its
    train_dir/validation_dir (and the details of another dataset_name)."""
    given = [s for s in SOURCES if s in cli]
    if not given:
        return
    if "dataset_name" in given:
        drop = ["train_dir", "validation_dir"]
        if cfg.get("dataset_name") != cli["dataset_name"]:
            drop += SOURCE_DETAILS
    else:
        drop = ["dataset_name", *SOURCE_DETAILS] + (["validation_dir"] if "train_dir" in given else [])
    dropped = [name for name in drop if name not in cli and cfg.get(name) is not None]
    if dropped:
        logger.info("%s on the command line %s %s from %s.", ", ".join("--" + s for s in given),
                    "replace" if len(given) > 1 else "replaces", ", ".join(dropped), config)
    for name in dropped:
        del cfg[name]


def check_freeze_options(model_args: ModelArguments, cli: set[str], in_file: set[str], config: str | None) -> None:
    """Options the chosen strategy would not use are an error when given on the command line, a logged warning
    when they come from the config file (a shared recipe run with another --strategy); so are two triggers."""
    unused = _unused_freeze_options(model_args, cli | in_file)
    on_cli = [o for o in unused if o in cli]
    if on_cli:
        them = "them" if len(on_cli) > 1 else "it"
        raise ValueError(f"{', '.join('--' + o for o in on_cli)}: {_why_unused(model_args.strategy, on_cli)}. "
                         f"Drop {them}, or pick a strategy that uses {them}.")
    if unused:
        logger.warning("Ignoring %s from %s: %s.", ", ".join(unused), config, _why_unused(model_args.strategy, unused))
        if "stage_lr_decay" in unused:  # dropped for this run, so that the card does not report it
            model_args.stage_lr_decay = None


def _unused_freeze_options(model_args: ModelArguments, given: set[str]) -> list[str]:
    """The `given` options the strategy would not use (two `gradual` triggers are an error)."""
    s = model_args.strategy
    if s == "gradual":
        triggers = [t for t in TRIGGERS if getattr(model_args, t) is not None]
        if len(triggers) > 1:
            raise ValueError(f"strategy=gradual takes one of unfreeze_at_step, unfreeze_at_epoch, schedule; got "
                             f"{', '.join(f'{t}={getattr(model_args, t)!r}' for t in triggers)}. Keep one.")
        return ["num_stages"] if triggers == ["schedule"] and "num_stages" in given else []
    unused = [o for o in GRADUAL_ONLY if o in given]
    if s in ("feature_extraction", "full") and "num_stages" in given:
        unused.append("num_stages")
    if s == "feature_extraction" and model_args.stage_lr_decay is not None:
        unused.append("stage_lr_decay")
    return unused


def _why_unused(strategy: str, names: list[str]) -> str:
    if strategy == "gradual":
        return "schedule sets the stage counts"
    them = "them" if len(names) > 1 else "it"
    return f"strategy={strategy} does not use {them}" + (
        "; unfreeze_at_step, unfreeze_at_epoch, schedule and lr_factor belong to strategy=gradual"
        if set(names) & set(GRADUAL_ONLY) else "") + (
        "; stage_lr_decay sets backbone stages' learning rates, and feature_extraction trains none"
        if "stage_lr_decay" in names else "")
