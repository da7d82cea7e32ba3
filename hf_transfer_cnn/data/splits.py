"""Holding out an evaluation set from train (seeded, stratified by label) and seeded subsets."""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["split_off_validation", "subsample"]


def subsample(ds, n: int | None, seed: int):
    """A seeded random subset of at most `n` rows, in their original order (`ds` itself if it is small enough)."""
    if ds is None or n is None or n >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return ds.select(idx.tolist())


def _label_values(ds, col: str) -> np.ndarray:
    return np.asarray(ds.with_format("numpy")[col])


def _per_class_split(train, frac: float, seed: int, label_col: str):
    """Stratified by hand, for what `train_test_split` cannot stratify (a class with one image, fewer held-out rows
    than classes): each class holds out ``round(count * frac)`` rows but keeps at least one in training."""
    classes, inverse = np.unique(_label_values(train, label_col), return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = np.bincount(inverse, minlength=len(classes))
    if counts.max() < 2:
        raise ValueError(f"train_val_split={frac:g}: every class has a single image in the training set "
                         f"({len(classes)} classes), so holding any out would leave its class untrained. Give an "
                         "evaluation split (eval_split_name / validation_dir) or set train_val_split=0.")
    take = np.minimum(counts - 1, np.rint(counts * frac).astype(int))
    if take.sum() == 0:  # too few rows for the fraction: hold out one row of the largest class
        take[int(np.argmax(counts))] = 1
    held = []
    for k in range(len(classes)):
        rows = np.flatnonzero(inverse == k)
        held.extend(rng.permutation(rows)[:take[k]].tolist())
    names = getattr(train.features[label_col], "names", None)  # a ClassLabel's names, else the values themselves
    singles = [names[int(c)] if names else str(c) for c, count in zip(classes, counts) if count == 1]
    if singles:
        logger.warning("Class(es) %s have a single image: kept in training (not in the held-out evaluation set, "
                       "so not evaluated).", singles[:20])
    held_set = set(held)
    kept = [i for i in range(len(train)) if i not in held_set]
    return train.select(kept), train.select(sorted(held))


def split_off_validation(train, frac: float, seed: int, label_col: str):
    """``(train, held_out)``: a seeded, stratified `frac` of `train` held out for evaluation."""
    import datasets

    n = len(train)
    if n * frac < 1 or n - math.ceil(n * frac) < 1:
        raise ValueError(f"The training set has {n} example(s): too few to hold out train_val_split={frac} for "
                         "evaluation. Give an evaluation split/validation_dir, or set train_val_split=0.")
    feature = train.features[label_col]
    try:
        if isinstance(feature, datasets.ClassLabel):
            parts = train.train_test_split(test_size=frac, seed=seed, stratify_by_column=label_col)
            return parts["train"], parts["test"]
        # int or string labels: stratify on an encoded copy, keep the rows
        rows = train.select_columns([label_col]).class_encode_column(label_col).add_column("_row", list(range(n)))
        parts = rows.train_test_split(test_size=frac, seed=seed, stratify_by_column=label_col)
        return train.select(parts["train"]["_row"]), train.select(parts["test"]["_row"])
    except ValueError as err:  # e.g. "The least populated class in label column has only 1 member"
        logger.info("train_test_split cannot stratify (%s); stratifying per class.", err)
    return _per_class_split(train, frac, seed, label_col)
