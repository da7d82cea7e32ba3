"""Loading an image-classification dataset: sources, evaluation split, labels, unreadable images."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np

from .args import DataArguments
from .screening import drop_unreadable
from .splits import split_off_validation, subsample

logger = logging.getLogger(__name__)


EVAL_SPLIT_CANDIDATES = ("validation", "valid", "val", "dev")
_DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}


# --- loading ------------------------------------------------------------------------------------------

def _as_data_args(args: Any, overrides: dict) -> DataArguments:
    names = [f.name for f in dataclasses.fields(DataArguments)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"Unknown data argument(s) {unknown}; known: {names}.")
    if args is None:
        return DataArguments(**overrides)
    if isinstance(args, DataArguments):
        return dataclasses.replace(args, **overrides) if overrides else args
    if isinstance(args, dict):
        source = dict(args)
    else:  # any DataArguments-like object (e.g. the CLI's own dataclass or a namespace)
        source = {n: getattr(args, n) for n in names if hasattr(args, n)}
    source.update(overrides)
    unknown = sorted(set(source) - set(names))
    if unknown:
        raise TypeError(f"Unknown data argument(s) {unknown}; known: {names}.")
    return DataArguments(**source)


def _is_saved_dataset_dir(path: str | None) -> bool:
    if not path or not os.path.isdir(path):
        return False
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json")))


def _load_saved(path: str) -> dict:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except (IndexError, ValueError, OSError) as err:  # e.g. datasets cannot reload a saved dataset with 0 rows
        raise ValueError(f"Could not load the saved dataset at {path!r} ({type(err).__name__}: {err}). Is it empty? "
                         "A dataset needs at least one example per split.") from err
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    return {"train": loaded}


def _load_imagefolder(files: dict[str, str], cache_dir: str | None) -> dict:
    import datasets

    for split, folder in files.items():
        if not os.path.isdir(folder):
            arg = "validation_dir" if split == "validation" else "train_dir"
            raise ValueError(f"{arg}={folder!r} is not a directory; give a folder of class subfolders "
                             "(<dir>/<label>/<image>) or a save_to_disk directory.")
    try:
        loaded = datasets.load_dataset("imagefolder", data_files={s: os.path.join(d, "**") for s, d in files.items()},
                                       cache_dir=cache_dir)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"Could not read an image folder from {files}: {err}\nExpected image files laid out as "
                         "<dir>/<label>/<image> (png, jpg, ...).") from err
    return dict(loaded)


def _check_source_args(args: DataArguments) -> None:
    """Exactly one source: dataset_name, or train_dir (+ validation_dir)."""
    if args.dataset_name and (args.train_dir or args.validation_dir):
        raise ValueError(
            f"Both dataset_name={args.dataset_name!r} and train_dir/validation_dir were given; use one source: "
            "dataset_name (a Hub id, a local dataset directory/file or a save_to_disk directory) or train_dir "
            "(+ validation_dir).")
    if args.validation_dir and not args.train_dir:
        raise ValueError("validation_dir was given without train_dir; give train_dir too (or use dataset_name).")
    if not args.dataset_name and not args.train_dir:
        raise ValueError("No data source given: set dataset_name (a Hub id, a local dataset directory or file, or a "
                         "save_to_disk directory) or train_dir (a folder of class subfolders).")


def _load_named(args: DataArguments) -> tuple[dict, str]:
    """``dataset_name``: a save_to_disk directory, a data file, a local dataset or a Hub id."""
    import datasets

    name = os.path.expanduser(args.dataset_name)
    if _is_saved_dataset_dir(name):
        return _load_saved(name), f"saved dataset {name!r}"
    ext = os.path.splitext(name)[1].lower()
    if os.path.isfile(name) and ext in _DATA_FILE_BUILDERS:
        loaded = datasets.load_dataset(_DATA_FILE_BUILDERS[ext], data_files={args.train_split_name: name},
                                       cache_dir=args.dataset_cache_dir)
        return dict(loaded), f"data file {name!r}"
    try:
        loaded = datasets.load_dataset(name if os.path.exists(name) else args.dataset_name,
                                       args.dataset_config_name, cache_dir=args.dataset_cache_dir)
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise ValueError(f"Could not load dataset {args.dataset_name!r}: {err}\nGive an existing local path or a "
                         "Hub dataset id (Hub access needs network; HF_DATASETS_OFFLINE=1 blocks it).") from err
    except ValueError as err:  # e.g. a missing config name, or 'Instruction "train" corresponds to no data!'
        hint = " (a split is empty: every split needs at least one example)" if "no data" in str(err) else ""
        raise ValueError(f"Could not load dataset {args.dataset_name!r}: {err}{hint}") from err
    if not isinstance(loaded, (datasets.DatasetDict, datasets.Dataset)):
        raise ValueError(f"dataset {args.dataset_name!r} loaded as {type(loaded).__name__}; streaming/iterable "
                         "datasets are not supported.")
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    return splits, f"dataset {args.dataset_name!r}"


def _saved_eval_split(val_dir: str, args: DataArguments):
    """The evaluation split of a save_to_disk `validation_dir`: eval_split_name, a usual name, or its only split."""
    saved = _load_saved(val_dir)
    pick = next((s for s in (args.eval_split_name, *EVAL_SPLIT_CANDIDATES) if s and s in saved), None)
    if pick is None and len(saved) == 1:
        pick = next(iter(saved))
    if pick is None:
        raise ValueError(f"validation_dir={val_dir!r} holds splits {list(saved)}; set eval_split_name to the "
                         "one to evaluate on.")
    return saved[pick]


def _load_dirs(args: DataArguments) -> tuple[dict, str]:
    """``train_dir`` (+ ``validation_dir``): image folders or save_to_disk directories, in any combination."""
    train_dir = os.path.expanduser(args.train_dir)
    val_dir = os.path.expanduser(args.validation_dir) if args.validation_dir else None
    folders: dict[str, str] = {}
    splits: dict = {}
    separate: dict = {}
    if _is_saved_dataset_dir(train_dir):
        splits = _load_saved(train_dir)
    else:
        folders[args.train_split_name] = train_dir
    if val_dir:
        if _is_saved_dataset_dir(val_dir):
            separate["validation"] = _saved_eval_split(val_dir, args)
        elif folders:  # two image folders: load together so both get the same class list
            folders["validation"] = val_dir
        else:
            separate["validation"] = _load_imagefolder({"validation": val_dir}, args.dataset_cache_dir)["validation"]
    if folders:
        splits.update(_load_imagefolder(folders, args.dataset_cache_dir))
    splits.update(separate)
    desc = f"train_dir {train_dir!r}" + (f" / validation_dir {val_dir!r}" if val_dir else "")
    return splits, desc


def _load_sources(args: DataArguments) -> tuple[dict, str]:
    """``(splits, description)``: split name -> Dataset, and the source for messages."""
    _check_source_args(args)
    return _load_named(args) if args.dataset_name else _load_dirs(args)


def _pick_splits(splits: dict, args: DataArguments, desc: str, from_val_dir: bool) -> tuple[Any, Any, str | None]:
    names = list(splits)
    if args.train_split_name not in splits:
        raise ValueError(f"{desc} has no split {args.train_split_name!r}; its splits are {names}. Set "
                         "train_split_name to one of them.")
    eval_name = "validation" if from_val_dir else args.eval_split_name
    if eval_name is not None and eval_name not in splits:
        raise ValueError(f"{desc} has no split {eval_name!r} (eval_split_name); its splits are {names}.")
    if eval_name is None:
        eval_name = next((s for s in EVAL_SPLIT_CANDIDATES if s in splits and s != args.train_split_name), None)
    if eval_name == args.train_split_name:
        raise ValueError(f"eval_split_name and train_split_name are both {eval_name!r}; use different splits "
                         "(or leave eval_split_name unset to hold out train_val_split of train).")
    return splits[args.train_split_name], (splits[eval_name] if eval_name else None), eval_name


def _first_feature(features, kind) -> str | None:
    return next((name for name, feat in features.items() if isinstance(feat, kind)), None)


def _check_columns(ds, args: DataArguments, desc: str, split: str, imagefolder: bool) -> None:
    import datasets

    columns = list(ds.column_names)
    if args.image_column_name not in columns:
        guess = _first_feature(ds.features, datasets.Image)
        hint = f" The image column looks like {guess!r}: pass image_column_name={guess!r}." if guess else \
            " Pass image_column_name=<the column holding the images>."
        raise ValueError(f"Image column {args.image_column_name!r} not found in the {split} split of {desc}; the "
                         f"columns are {columns}.{hint}")
    if args.label_column_name not in columns:
        guess = _first_feature(ds.features, datasets.ClassLabel)
        if guess:
            hint = f" The label column looks like {guess!r}: pass label_column_name={guess!r}."
        elif imagefolder:
            _check_not_one_class_folder(args.train_dir if split == args.train_split_name else args.validation_dir)
            hint = (" An image folder gets a 'label' column only when the images sit in one subfolder per class "
                    "(<dir>/<label>/<image>), all at the same depth, with at least two classes.")
        else:
            hint = " Pass label_column_name=<the column holding the class labels>."
        raise ValueError(f"Label column {args.label_column_name!r} not found in the {split} split of {desc}; the "
                         f"columns are {columns}.{hint}")
    feat = ds.features[args.image_column_name]
    ok_value = isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string", "binary", "large_binary")
    if not isinstance(feat, datasets.Image) and not ok_value:
        raise ValueError(f"Column {args.image_column_name!r} has type {feat}; expected images (an Image feature, "
                         "file paths or encoded bytes). Check image_column_name; the columns are "
                         f"{columns}.")


def _check_not_one_class_folder(folder: str | None) -> None:
    """An image folder with a single class subfolder gets no label column from datasets: say why."""
    folder = os.path.expanduser(folder) if folder else None
    if not folder or not os.path.isdir(folder):
        return
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if len(classes) == 1:
        raise ValueError(f"{folder!r} has one class ({classes[0]!r}): classification needs two or more classes. Put "
                         "the images in one subfolder per class (<dir>/<label>/<image>), with at least two class "
                         "subfolders.")


def _check_two_classes(names: list, col: str, desc: str) -> None:
    """One class would make a one-label model, which transformers trains as a regression (accuracy 1.0 always)."""
    if len(names) < 2:
        raise ValueError(f"The labels of {desc} (column {col!r}) have {len(names)} class "
                         f"({[str(n) for n in names][:20]}): classification needs two or more classes (a one-label "
                         "model would be trained as a regression). Check label_column_name and the data, and give "
                         "images of at least two classes.")


def _prepare_columns(ds, args: DataArguments):
    import datasets

    ds = ds.select_columns([args.image_column_name, args.label_column_name])
    if isinstance(ds.features[args.image_column_name], datasets.Image):
        ds = ds.cast_column(args.image_column_name, datasets.Image(decode=False))
    return ds


def _label_kind(feat) -> str:
    import datasets

    if isinstance(feat, datasets.ClassLabel):
        return "classlabel"
    if isinstance(feat, datasets.Value):
        if feat.dtype == "bool":
            return "bool"
        if feat.dtype.startswith(("int", "uint")):
            return "int"
        if feat.dtype in ("string", "large_string"):
            return "string"
    return "other"


def _column_values(ds, column: str) -> np.ndarray:
    return np.asarray(ds.with_format("numpy")[column])


def _resolve_labels(train, evaluation, args: DataArguments):
    """Make the label column a ClassLabel (or checked ints); returns (train, eval, names)."""
    import datasets

    col = args.label_column_name
    feat = train.features[col]
    kind = _label_kind(feat)
    if kind == "other":
        raise ValueError(f"Label column {col!r} has type {feat}; expected one class per image (a ClassLabel, integer "
                         "or string column). Multi-label and regression targets are not supported.")
    if evaluation is not None and _label_kind(evaluation.features[col]) != kind:
        raise ValueError(f"Label column {col!r} is {feat} in train but {evaluation.features[col]} in the evaluation "
                         "set; both need the same kind of labels.")
    if kind == "classlabel":
        names = list(feat.names)
        if evaluation is not None:
            eval_names = list(evaluation.features[col].names)
            if eval_names != names:
                unknown = [n for n in eval_names if n not in names]
                if unknown:
                    raise ValueError(f"The evaluation set has classes {unknown} that the training set lacks "
                                     f"(train classes: {names}); give both the same classes.")
                evaluation = evaluation.align_labels_with_mapping({n: i for i, n in enumerate(names)}, col)
        return train, evaluation, names
    if kind == "bool":  # two classes, False = 0 and True = 1
        feature = datasets.ClassLabel(names=["False", "True"])
        train = train.cast_column(col, feature)
        evaluation = evaluation.cast_column(col, feature) if evaluation is not None else None
        return train, evaluation, list(feature.names)
    if kind == "string":
        values = set(_column_values(train, col).tolist())
        if None in values:
            raise ValueError(f"Label column {col!r} has empty (None) labels in train; every image needs a label.")
        names = sorted(values)
        if evaluation is not None:
            extra = sorted(set(_column_values(evaluation, col).tolist()) - values)
            if extra:
                raise ValueError(f"The evaluation set has labels {extra[:20]} that the training set lacks "
                                 f"(train labels: {names[:20]}); give both the same classes.")
        feature = datasets.ClassLabel(names=names)
        train = train.cast_column(col, feature)
        evaluation = evaluation.cast_column(col, feature) if evaluation is not None else None
        return train, evaluation, names
    # integers without names: classes 0..max
    maxima = [int(_column_values(d, col).max()) for d in (train, evaluation) if d is not None and len(d)]
    num = max(maxima) + 1 if maxima else 0
    return train, evaluation, [str(i) for i in range(num)]


def _check_label_values(ds, col: str, num_classes: int, split: str) -> None:
    if ds is None or not len(ds):
        return
    values = _column_values(ds, col)
    if values.dtype == object:
        raise ValueError(f"Label column {col!r} has empty (None) labels in {split}; every image needs a label.")
    bad = (values < 0) | (values >= num_classes)
    if bad.any():
        shown = sorted(set(values[bad].tolist()))[:10]
        raise ValueError(f"{int(bad.sum())} row(s) of {split} have label(s) {shown} outside 0..{num_classes - 1} "
                         "(-1 usually marks unlabelled rows, e.g. a Hub test split): use a labelled split.")


def load_image_classification_data(args: Any = None, *, expected_labels: dict | None = None,
                                   return_eval_split: bool = False, **kwargs):
    """Load, split and clean an image-classification dataset: ``(train_ds, eval_ds, id2label)``
    (``return_eval_split=True`` appends the evaluation split's name, e.g. ``"test"`` or ``"train[held-out 0.15]"``).

    `args` is a `DataArguments` (or any object/dict with its field names); keyword arguments override fields.
    The datasets keep only the image and label columns, with the image column undecoded
    (``Image(decode=False)``: ``{"bytes", "path"}``) and every image checked to decode; apply
    `with_transforms` to feed a model. `eval_ds` is None when there is no eval split and
    ``train_val_split`` is 0. `id2label` maps class ids to names (ClassLabel names, sorted string labels or
    "0".."N-1"). `expected_labels` (e.g. a model's id2label) must have the same number of classes.
    """
    args = _as_data_args(args, kwargs)
    splits, desc = _load_sources(args)
    imagefolder = bool(args.train_dir) and not _is_saved_dataset_dir(args.train_dir)
    train, evaluation, eval_name = _pick_splits(splits, args, desc, from_val_dir=bool(args.validation_dir))
    _check_columns(train, args, desc, args.train_split_name, imagefolder)
    if evaluation is not None:
        _check_columns(evaluation, args, desc, eval_name, imagefolder)
    train = _prepare_columns(train, args)
    evaluation = _prepare_columns(evaluation, args) if evaluation is not None else None
    if len(train) == 0:
        raise ValueError(f"The {args.train_split_name} split of {desc} is empty (0 examples).")
    if evaluation is not None and len(evaluation) == 0:
        raise ValueError(f"The {eval_name} split of {desc} is empty (0 examples); give a non-empty evaluation set "
                         "or leave eval_split_name unset.")
    train, evaluation, names = _resolve_labels(train, evaluation, args)
    _check_two_classes(names, args.label_column_name, desc)
    id2label = {i: str(n) for i, n in enumerate(names)}
    if expected_labels is not None:
        expected = {int(k): str(v) for k, v in dict(expected_labels).items()}
        if len(expected) != len(id2label):
            raise ValueError(
                f"The data has {len(id2label)} classes ({names[:20]}) but {len(expected)} were expected "
                f"({list(expected.values())[:20]}). Build the model with the data's labels (id2label from this "
                "function) or use data with the expected classes.")
        defaults = all(v == f"LABEL_{k}" for k, v in expected.items())
        if not defaults and expected != id2label:
            logger.warning("The data's labels %s differ from the expected labels %s (same count); ids are used as-is.",
                           id2label, expected)
    col = args.label_column_name
    _check_label_values(train, col, len(id2label), args.train_split_name)
    _check_label_values(evaluation, col, len(id2label), eval_name)
    if evaluation is None and args.train_val_split:
        train, evaluation = split_off_validation(train, float(args.train_val_split), args.split_seed, col)
        eval_name = f"{args.train_split_name}[held-out {args.train_val_split:g}]"
    train = subsample(train, args.max_train_samples, args.split_seed)
    evaluation = subsample(evaluation, args.max_eval_samples, args.split_seed)
    screen = dict(image_col=args.image_column_name, on_bad_image=args.on_bad_image,
                  workers=args.preprocessing_num_workers, max_aspect_ratio=args.max_aspect_ratio)
    train = drop_unreadable(train, split=args.train_split_name, **screen)
    if evaluation is not None:
        evaluation = drop_unreadable(evaluation, split=eval_name, **screen)
    _check_class_coverage(train, evaluation, col, id2label, eval_name)
    logger.info("Loaded %s: %d training and %s evaluation examples, %d classes.", desc, len(train),
                len(evaluation) if evaluation is not None else "no", len(id2label))
    if return_eval_split:
        return train, evaluation, id2label, (eval_name if evaluation is not None else None)
    return train, evaluation, id2label


def _check_class_coverage(train, evaluation, col: str, id2label: dict, eval_name: str | None) -> None:
    """Every evaluated class needs training images (else its accuracy is 0 by construction: typically a class
    folder only in validation_dir, or a training subsample too small); classes with none at all get a warning."""
    counts = np.bincount(_column_values(train, col), minlength=len(id2label))
    trained = [id2label[i] for i in range(len(id2label)) if counts[i] > 0]
    if len(trained) < 2:
        raise ValueError(f"Only class {trained[0]!r} has training images (per class, after dropping unreadable "
                         f"images and max_train_samples: {dict(zip(id2label.values(), counts.tolist()))}); "
                         "classification needs two or more classes with training images. Give the other classes "
                         "training images: fix their unreadable files (see the warning above), use a larger "
                         "max_train_samples, or check the labels.")
    seen = set(np.unique(_column_values(evaluation, col)).tolist()) if evaluation is not None else set()
    untrained = [id2label[i] for i in sorted(seen) if counts[i] == 0]
    if untrained:
        raise ValueError(f"The evaluation set ({eval_name}) has class(es) {untrained[:20]} with no training images "
                         f"(training images per class: {dict(zip(id2label.values(), counts.tolist()))}). Give every "
                         "evaluated class training images (e.g. a larger max_train_samples), or drop those classes "
                         "from the evaluation data.")
    empty = [id2label[i] for i in range(len(id2label)) if counts[i] == 0]
    if empty:
        logger.warning("%d class(es) have no training images: %s (the head still predicts them; integer labels "
                       "that start at 1 leave class 0 empty).", len(empty), empty[:20])
