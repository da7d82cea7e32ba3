"""A run's inputs: the data (with the expected class names checked, and a resumed checkpoint's classes), the model
(its base recorded by a portable name), and the datasets Trainer reads (transformed images, each sample's random
augmentation seeded by (seed, epoch, index); or cached backbone features)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import (DataArguments, TransformArguments, build_transforms, collate_fn, load_image_classification_data,
                    with_transforms)
from ..processing import channel_values
from .args import ModelArguments
from .seeded import SeededAugmentation

logger = logging.getLogger(__name__)

__all__ = ["RunData", "RunDatasets", "load_data", "check_expected_labels", "check_resumed_labels", "load_model",
           "base_is_local", "with_stats", "model_transforms", "build_datasets"]


@dataclass
class RunData:
    """The raw splits and classes of a run."""

    train: Any
    eval: Any | None
    id2label: dict[int, str]
    eval_split: str | None

    @property
    def num_train(self) -> int | None:
        """Training examples (None for a stream, whose length is unknown)."""
        return len(self.train) if hasattr(self.train, "__len__") else None

    @property
    def num_eval(self) -> int:
        return len(self.eval) if self.eval is not None else 0

    def label_names(self) -> list[str]:
        return [self.id2label[i] for i in range(len(self.id2label))]


@dataclass
class RunDatasets:
    """What Trainer reads: the train and eval datasets and their collator (None for cached features); `streaming`
    when train is a stream already split between the processes."""

    train: Any
    eval: Any | None
    collator: Any | None
    streaming: bool = False


def load_data(model_args: ModelArguments, data_args: DataArguments) -> RunData:
    """Load the splits; with `expected_label_names`, the data's classes must be those, in id order."""
    expected = model_args.expected_labels()
    train_raw, eval_raw, id2label, eval_split = load_image_classification_data(
        data_args, expected_labels=expected, return_eval_split=True)
    check_expected_labels(expected, id2label)
    return RunData(train_raw, eval_raw, id2label, eval_split)


def check_expected_labels(expected: dict[int, str] | None, id2label: dict[int, str]) -> None:
    """With `expected_label_names`, the data's classes must be those, in id order."""
    if expected is not None and expected != id2label:
        raise ValueError(f"expected_label_names {list(expected.values())} differ from the data's classes in id order "
                         f"{list(id2label.values())}; fix the names/order, or drop expected_label_names.")


def check_resumed_labels(resume: str | None, id2label: dict[int, str]) -> None:
    """A resumed checkpoint's classes (its config.json id2label, in id order) must be the data's: renamed,
    reordered, added or removed classes would train its head on wrong labels, or fail on its shape."""
    config = Path(resume) / "config.json" if resume else None
    if config is None or not config.is_file():
        return
    saved = json.loads(config.read_text()).get("id2label") or {}
    trained = [str(saved[k]) for k in sorted(saved, key=int)]
    data = [id2label[i] for i in range(len(id2label))]
    if trained and trained != data:
        raise ValueError(
            f"resume_from_checkpoint: {resume} was trained on the classes {trained} (in id order), but the data has "
            f"{data}. Resuming would train its head on other labels. Resume with the data it was trained on, or "
            f"start a new run on this data from its weights with --model_name_or_path {resume} and a new "
            "--output_dir.")


def load_model(model_args: ModelArguments, id2label: dict[int, str], trainable_stages: int | str):
    """The pretrained `TransferModel` with a head for `id2label` and the initial trainable stages; a local base
    checkpoint is recorded in its config by the folder's name (`portable_base_model`), never by its path."""
    from ..hub import portable_base_model
    from ..model import TransferModel

    model = TransferModel.from_pretrained(
        model_args.model_name_or_path, id2label=id2label, num_channels=model_args.num_channels,
        image_size=model_args.image_size, head=model_args.head_spec(), trainable_stages=trainable_stages,
        revision=model_args.model_revision, token=model_args.token)
    recorded = model.meta.base_model
    portable = portable_base_model(recorded)
    if recorded and portable != recorded:
        model.meta.updated(base_model=portable).write(model.config)
        logger.info("config.json records the local base checkpoint by its folder name (hf_transfer_cnn.base_model="
                    "%r), not by its local path.", portable)
    return model


def base_is_local(model_args: ModelArguments, model) -> bool:
    """Whether the base checkpoint `model` records is the local folder it was loaded from (its name is then no Hub
    id). A local fine-tuned model whose record is the Hub checkpoint it started from keeps that record."""
    from ..hub import portable_base_model

    path = model_args.model_name_or_path
    return os.path.isdir(os.path.expanduser(path)) and model.meta.base_model == portable_base_model(path)


def with_stats(processor, transform_args: TransformArguments, num_channels: int):
    """A copy of `processor` normalising with the transforms' image_mean/image_std, one value per input channel."""
    d = processor.to_dict()
    d.pop("_processor_class", None)
    for key in ("image_mean", "image_std"):
        value = getattr(transform_args, key)
        if value:  # the values the transforms normalised with, one per model input channel
            d[key] = channel_values(value, num_channels, key)
    return type(processor).from_dict(d)


def model_transforms(model, model_args: ModelArguments, transform_args: TransformArguments):
    """``(train_tf, eval_tf)`` for `model`; its image processor is made to normalise like them."""
    train_tf, eval_tf = build_transforms(model.image_processor, model.num_input_channels,
                                         image_size=model_args.image_size, **transform_args.to_kwargs())
    if transform_args.image_mean or transform_args.image_std:  # the saved processor must normalise like training
        model.image_processor = with_stats(model.image_processor, transform_args, model.num_input_channels)
    return train_tf, eval_tf


def build_datasets(model, data: RunData, model_args: ModelArguments, data_args: DataArguments,
                   transform_args: TransformArguments, training_args: Any) -> RunDatasets:
    """Transforms for `model` (its saved processor normalising like them), applied on the fly, or, with
    `cache_features`, the backbone's pooled features computed once."""
    train_tf, eval_tf = model_transforms(model, model_args, transform_args)
    cols = dict(image_column=data_args.image_column_name, label_column=data_args.label_column_name)
    if model_args.cache_features:
        return _cached_features(model, data, eval_tf, cols, model_args, transform_args, training_args)
    train = with_transforms(data.train, train_tf, **cols)
    if train_tf is not eval_tf:  # random augmentation: seeded per (seed, epoch, index), so a resumed run repeats it
        train = SeededAugmentation(train, training_args.seed)
    return RunDatasets(train, with_transforms(data.eval, eval_tf, **cols) if data.eval is not None else None,
                       collate_fn)


def _cached_features(model, data: RunData, eval_tf, cols: dict, model_args: ModelArguments,
                     transform_args: TransformArguments, training_args: Any) -> RunDatasets:
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
        train_ds = cache_pooled_features(model, data.train, eval_tf, batch_size=bs, **cols)
        eval_ds = cache_pooled_features(model, data.eval, eval_tf, batch_size=bs, **cols) \
            if data.eval is not None else None
    return RunDatasets(train_ds, eval_ds, None)
