"""``--streaming true``: the training data as a `datasets.IterableDataset` (a Hub dataset, a local dataset or file,
an imagefolder), read as training goes, never downloaded, converted or checked up front.

A stream has no length, so a streaming run is step-based: `max_steps` is required, the unfreezing trigger is a
step (`unfreeze_at_epoch` is refused) and backbone features cannot be cached up front (`cache_features` is
refused). Under DDP each process reads its own part of the stream (`datasets.distributed.split_dataset_by_node`),
which Trainer's DataLoader does not shard or dispatch again (`StreamingTrainer`); every process passes over its
part again and again, reshuffled in a buffer each pass, until `max_steps`, so the processes stay in step however
the data divides. Labels come from the stream's ClassLabel feature. Unreadable training images are skipped
(logged) as they come, or raise with ``on_bad_image=error``. The evaluation split is read once into memory
(the first `max_eval_samples` examples when given) and evaluated like a non-streaming one."""

from __future__ import annotations

import functools
import itertools
import logging
import os
from typing import Any

import torch

from ..data import DataArguments, TransformArguments, collate_fn, load_image, to_8bit, with_transforms
from .args import ModelArguments
from .prepare import RunData, RunDatasets, check_expected_labels, model_transforms

logger = logging.getLogger(__name__)

__all__ = ["check_streaming_options", "load_stream", "build_stream_datasets", "streaming_trainer_class"]

EVAL_SPLITS = ("validation", "valid", "val", "dev")
"""Evaluation splits picked when eval_split_name is not given (the first one the stream has)."""
_DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def check_streaming_options(model_args: ModelArguments, training_args: Any) -> None:
    """Refuse what a stream cannot do, saying why; epoch-based evaluation/saving is a warning."""
    if not model_args.streaming:
        return
    if not training_args.max_steps or training_args.max_steps <= 0:
        raise ValueError("streaming needs --max_steps N: a stream has no length, so num_train_epochs cannot be "
                         "turned into a number of optimizer steps.")
    if model_args.unfreeze_at_epoch is not None:
        raise ValueError("streaming: unfreeze_at_epoch cannot be used, because a stream has no length and so an epoch "
                         "has no step; give --unfreeze_at_step N (or a step --schedule) instead.")
    if model_args.cache_features:
        raise ValueError("streaming: cache_features cannot be used, because caching computes the backbone features of "
                         "the whole training set up front, which a stream never holds; drop cache_features (the "
                         "frozen backbone still runs in inference mode).")
    epochs = [n for n in ("eval_strategy", "save_strategy", "logging_strategy")
              if getattr(getattr(training_args, n), "value", getattr(training_args, n)) == "epoch"]
    if epochs:
        logger.warning("streaming: %s 'epoch' acts once, at the end of the run (the stream is repeated until "
                       "max_steps, in one epoch); use 'steps' with *_steps to act during training.", ", ".join(epochs))


def load_stream(model_args: ModelArguments, data_args: DataArguments) -> RunData:
    """The training stream (image and label columns, images undecoded), the evaluation split read into memory (or
    None), the classes from the stream's ClassLabel feature, and the evaluation split's name."""
    splits, desc, train_name, eval_name = _open_stream(data_args)
    if train_name not in splits:
        raise ValueError(f"{desc} has no split {train_name!r} (its splits: {sorted(splits)}); set train_split_name.")
    train = _select_columns(splits[train_name], data_args, desc, train_name)
    names = list(train.features[data_args.label_column_name].names)
    id2label = {i: str(n) for i, n in enumerate(names)}
    check_expected_labels(model_args.expected_labels(), id2label)
    if data_args.max_train_samples:
        train = train.take(data_args.max_train_samples)
    if eval_name is None:
        logger.warning("streaming: %s has no evaluation split (%s), so this run evaluates nothing (a stream cannot "
                       "hold out train_val_split); name one with eval_split_name or validation_dir.", desc,
                       "/".join(EVAL_SPLITS))
        return RunData(train, None, id2label, None)
    evaluation = _read_eval(_select_columns(splits[eval_name], data_args, desc, eval_name), data_args, len(names),
                            eval_name)
    logger.info("Streaming %s: training from split %s, %d evaluation examples (%s), %d classes.", desc, train_name,
                len(evaluation), eval_name, len(names))
    return RunData(train, evaluation, id2label, eval_name)


def _open_stream(args: DataArguments) -> tuple[dict, str, str, str | None]:
    """``(splits as IterableDatasets, description, train split, eval split or None)`` of the one data source."""
    import datasets

    if args.dataset_name and (args.train_dir or args.validation_dir):
        raise ValueError(f"Both dataset_name={args.dataset_name!r} and train_dir/validation_dir were given; use one "
                         "source (on the command line, either replaces the config file's).")
    if args.validation_dir and not args.train_dir:
        raise ValueError("validation_dir was given without train_dir; give train_dir too (or use dataset_name).")
    if args.train_dir:
        dirs = {"train": args.train_dir, **({"validation": args.validation_dir} if args.validation_dir else {})}
        for split, folder in dirs.items():
            if not os.path.isdir(folder):
                raise ValueError(f"{split}_dir={folder!r} is not a directory; give a folder of class subfolders "
                                 "(<dir>/<label>/<image>) or a save_to_disk directory.")
        if _is_saved(args.train_dir):
            splits = {s: _saved_stream(d)["train"] for s, d in dirs.items()}
        else:
            splits = dict(datasets.load_dataset("imagefolder", streaming=True, cache_dir=args.dataset_cache_dir,
                                                data_files={s: os.path.join(d, "**") for s, d in dirs.items()}))
        return splits, f"image folder {args.train_dir!r}", "train", "validation" if args.validation_dir else None
    if not args.dataset_name:
        raise ValueError("No data source given: set dataset_name (a Hub id, a local dataset directory or file, or a "
                         "save_to_disk directory) or train_dir (a folder of class subfolders).")
    splits, desc = _open_named(args)
    eval_name = args.eval_split_name or next((s for s in EVAL_SPLITS if s in splits), None)
    if eval_name is not None and eval_name not in splits:
        raise ValueError(f"{desc} has no split {eval_name!r} (its splits: {sorted(splits)}); fix eval_split_name.")
    return splits, desc, args.train_split_name, eval_name


def _open_named(args: DataArguments) -> tuple[dict, str]:
    import datasets

    name = os.path.expanduser(args.dataset_name)
    if _is_saved(name):
        return _saved_stream(name), f"saved dataset {name!r}"
    ext = os.path.splitext(name)[1].lower()
    if os.path.isfile(name) and ext in _DATA_FILE_BUILDERS:
        return dict(datasets.load_dataset(_DATA_FILE_BUILDERS[ext], data_files={args.train_split_name: name},
                                          streaming=True, cache_dir=args.dataset_cache_dir)), f"data file {name!r}"
    try:
        loaded = datasets.load_dataset(name if os.path.exists(name) else args.dataset_name, args.dataset_config_name,
                                       streaming=True, cache_dir=args.dataset_cache_dir)
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise ValueError(f"Could not stream dataset {args.dataset_name!r}: {err}\nGive an existing local path or a "
                         "Hub dataset id (Hub access needs network; HF_DATASETS_OFFLINE=1 blocks it).") from err
    return dict(loaded), f"dataset {args.dataset_name!r}"


def _is_saved(path: str) -> bool:
    """A `save_to_disk` directory (a DatasetDict or a Dataset)."""
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(
        os.path.join(path, "state.json")))


def _saved_stream(path: str) -> dict:
    import datasets

    loaded = datasets.load_from_disk(path)
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    return {split: ds.to_iterable_dataset() for split, ds in parts.items()}


def _select_columns(ds, args: DataArguments, desc: str, split: str):
    """The image and label columns, images undecoded; the label must be a ClassLabel (the classes of a stream
    have to be known before it is read)."""
    import datasets

    img, lab = args.image_column_name, args.label_column_name
    features = ds.features
    if features is None:
        raise ValueError(f"The {split} split of {desc} does not declare its features, so its classes are unknown "
                         "before it is read; train without --streaming.")
    missing = [f"{kind} column {c!r}" for kind, c in (("image", img), ("label", lab)) if c not in features]
    if missing:
        raise ValueError(f"The {split} split of {desc} has no {' and no '.join(missing)}; its columns are "
                         f"{list(features)}. Set image_column_name/label_column_name.")
    if not isinstance(features[lab], datasets.ClassLabel):
        raise ValueError(f"Label column {lab!r} of {desc} is {features[lab]}, not a ClassLabel: a stream's classes "
                         "must be declared up front. Train without --streaming (which collects the labels).")
    ds = ds.select_columns([img, lab])
    if isinstance(features[img], datasets.Image):
        ds = ds.cast_column(img, datasets.Image(decode=False))
    return ds


def _check_label(label: Any, num_classes: int, split: str) -> int:
    if label is None or not 0 <= int(label) < num_classes:
        raise ValueError(f"A row of {split} has label {label!r}, outside 0..{num_classes - 1} (-1 usually marks "
                         "unlabelled rows, e.g. a Hub test split): use a labelled split.")
    return int(label)


def _read_eval(stream, args: DataArguments, num_classes: int, split: str):
    """The evaluation split as an in-memory `datasets.Dataset` (undecoded images), unreadable images dropped."""
    import datasets

    img, lab = args.image_column_name, args.label_column_name
    if args.max_eval_samples:
        stream = stream.take(args.max_eval_samples)
    rows, bad = [], []
    for row in stream:
        _check_label(row[lab], num_classes, split)
        try:
            to_8bit(load_image(row[img], max_aspect_ratio=getattr(args, "max_aspect_ratio", None)))
        except Exception as err:  # any decoder failure means "unreadable"
            if args.on_bad_image == "error":
                raise ValueError(f"Unreadable image in {split}: {_where(row[img])}: {type(err).__name__}: {err}. Fix "
                                 "or remove the file, or use on_bad_image='skip'.") from err
            bad.append(_where(row[img]))
            continue
        rows.append(row)
    if bad:
        logger.warning("skipped %d unreadable image(s) of %d in %s: %s", len(bad), len(bad) + len(rows), split,
                       bad[:20])
    if not rows:
        raise ValueError(f"The evaluation split {split} has no readable example.")
    return datasets.Dataset.from_list(rows, features=stream.features)


def _where(cell: Any) -> str:
    return (cell.get("path") if isinstance(cell, dict) else None) or "(in-memory image)"


class _StreamTransform:
    """Batched `IterableDataset.map` function: rows ``{"pixel_values", "labels"}``; an unreadable image is skipped
    (logged once per file) or raises with ``on_bad_image=error``."""

    def __init__(self, tf, image_column: str, label_column: str, num_classes: int, on_bad_image: str):
        self.tf, self.image_column, self.label_column = tf, image_column, label_column
        self.num_classes, self.on_bad_image = num_classes, on_bad_image
        self.skipped: set[str] = set()

    def __call__(self, batch: dict) -> dict:
        pixels, labels = [], []
        for cell, label in zip(batch[self.image_column], batch[self.label_column]):
            label = _check_label(label, self.num_classes, "the training stream")
            try:
                pixels.append(self.tf(cell))
            except Exception as err:  # any decoder failure means "unreadable"
                where = _where(cell)
                if self.on_bad_image == "error":
                    raise ValueError(f"Unreadable image in the training stream: {where}: {type(err).__name__}: "
                                     f"{err}. Fix or remove the file, or use on_bad_image='skip'.") from err
                if where not in self.skipped:
                    self.skipped.add(where)
                    logger.warning("skipped an unreadable image in the training stream: %s: %s: %s", where,
                                   type(err).__name__, err)
                continue
            labels.append(label)
        return {"pixel_values": pixels, "labels": labels}


class _Endless(torch.utils.data.IterableDataset):
    """Passes over `stream` until the consumer stops (Trainer, at max_steps), reshuffled each pass (`set_epoch`).
    A pass that yields nothing is an error rather than an endless wait (in a DataLoader worker that got no part of
    the stream, it just ends)."""

    def __init__(self, stream):
        self.stream = stream

    def __iter__(self):
        for n in itertools.count():
            self.stream.set_epoch(n)
            empty = True
            for row in self.stream:
                empty = False
                yield row
            if empty:
                if torch.utils.data.get_worker_info() is not None:
                    return
                raise ValueError("The training stream gave this process no readable example: the data is empty, "
                                 "unreadable, or smaller than the number of processes.")


def build_stream_datasets(model, data: RunData, model_args: ModelArguments, data_args: DataArguments,
                          transform_args: TransformArguments, training_args: Any) -> RunDatasets:
    """This process's part of the training stream (`split_dataset_by_node` under DDP), shuffled in a buffer,
    transformed as it is read and repeated until max_steps; the evaluation split transformed as usual."""
    from datasets.distributed import split_dataset_by_node

    train_tf, eval_tf = model_transforms(model, model_args, transform_args)
    img, lab = data_args.image_column_name, data_args.label_column_name
    train = data.train
    if training_args.world_size > 1:
        train = split_dataset_by_node(train, rank=training_args.process_index, world_size=training_args.world_size)
    if model_args.shuffle_buffer_size > 0:
        train = train.shuffle(seed=training_args.seed, buffer_size=model_args.shuffle_buffer_size)
    train = train.map(_StreamTransform(train_tf, img, lab, len(data.id2label), data_args.on_bad_image),
                      batched=True, batch_size=training_args.per_device_train_batch_size, remove_columns=[img, lab])
    evaluation = with_transforms(data.eval, eval_tf, image_column=img, label_column=lab) \
        if data.eval is not None else None
    return RunDatasets(_Endless(train), evaluation, collate_fn, streaming=True)


@functools.cache
def streaming_trainer_class():
    """`StreamingTrainer`: a `Trainer` whose training stream is already this process's part, so its DataLoader is
    not sharded or dispatched again by Accelerate (which would split it a second time, or read only rank 0's)."""
    from accelerate.data_loader import prepare_data_loader
    from transformers import Trainer

    class StreamingTrainer(Trainer):
        def get_train_dataloader(self):
            args, workers = self.args, self.args.dataloader_num_workers
            loader = torch.utils.data.DataLoader(
                self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
                num_workers=workers, pin_memory=args.dataloader_pin_memory, drop_last=args.dataloader_drop_last,
                persistent_workers=args.dataloader_persistent_workers and workers > 0,
                prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None)
            # one process's view: batches moved to the device, no sharding, no dispatching from rank 0
            return prepare_data_loader(loader, args.device, num_processes=1, process_index=0, put_on_device=True,
                                       dispatch_batches=False)

    return StreamingTrainer
