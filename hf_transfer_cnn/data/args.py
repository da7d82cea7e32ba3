"""Typed arguments of the data layer: where the data comes from (`DataArguments`) and how images are
transformed (`TransformArguments`); `HfArgumentParser` reads both from a command line or a config file."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..validation import check_positive_int, check_probability

# --- arguments ------------------------------------------------------------------------------------

@dataclass
class DataArguments:
    """Where the images come from and how they are split (field names follow the HF examples)."""

    dataset_name: str | None = field(default=None, metadata={"help": (
        "A Hub dataset id, a local dataset directory (parquet/arrow/csv/json files or an imagefolder layout "
        "with train/validation subfolders), a local data file, or a directory written by save_to_disk. "
        "Mutually exclusive with --train_dir.")})
    dataset_config_name: str | None = field(default=None, metadata={
        "help": "The dataset configuration name (Hub datasets)."})
    train_dir: str | None = field(default=None, metadata={"help": (
        "A folder of class subfolders (train_dir/<label>/<image>, labels from folder names) or a "
        "save_to_disk directory. Mutually exclusive with --dataset_name.")})
    validation_dir: str | None = field(default=None, metadata={"help": (
        "Like --train_dir, for the evaluation set (only together with --train_dir).")})
    train_split_name: str = field(default="train", metadata={"help": "Split of the dataset used for training."})
    eval_split_name: str | None = field(default=None, metadata={"help": (
        "Split used for evaluation. Default: 'validation' (or 'valid'/'val'/'dev') when the dataset has one, "
        "else a --train_val_split fraction of train. 'test' is only used when named here.")})
    train_val_split: float | None = field(default=0.15, metadata={"help": (
        "Fraction of train held out for evaluation when there is no evaluation split (seeded, stratified by "
        "label when possible). 0 = no evaluation set.")})
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column holding the class labels."})
    max_train_samples: int | None = field(default=None, metadata={"help": (
        "Keep a seeded random subset of at most this many training examples (debugging / quick runs).")})
    max_eval_samples: int | None = field(default=None, metadata={"help": (
        "Keep a seeded random subset of at most this many evaluation examples.")})
    on_bad_image: Literal["skip", "error"] = field(default="skip", metadata={"help": (
        "What to do with unreadable (corrupt, truncated, or beyond the size limits: see max_aspect_ratio) images: "
        "'skip' drops them before training and logs how many; 'error' stops with the file name.")})
    max_aspect_ratio: float | None = field(default=64.0, metadata={"help": (
        "Images more elongated than this (long side / short side, read from the file header before decoding) "
        "are handled like unreadable ones (see on_bad_image), as are images beyond PIL.Image.MAX_IMAGE_PIXELS. "
        "0 turns the aspect check off.")})
    split_seed: int = field(default=42, metadata={
        "help": "Seed for the validation split and the max_*_samples subsets."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": (
        "Threads used to check that every image decodes (default: up to 4, bounded by the CPU count).")})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "Cache directory for datasets.load_dataset."})

    def __post_init__(self):
        if self.on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image={self.on_bad_image!r}; use 'skip' or 'error'.")
        if self.train_val_split is not None and not 0.0 <= float(self.train_val_split) < 1.0:
            raise ValueError(f"train_val_split={self.train_val_split}; use a fraction in [0, 1) (0 = no eval set).")
        ratio = self.max_aspect_ratio
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                                  or not (ratio == 0 or 1 <= ratio < math.inf)):
            raise ValueError(f"max_aspect_ratio={ratio!r}; use a number >= 1 (long side / short side, e.g. 64), "
                             "or 0 to turn the check off.")
        for name in ("max_train_samples", "max_eval_samples"):
            check_positive_int(name, getattr(self, name), optional=True,
                               hint="use a positive integer or leave it unset")

@dataclass
class TransformArguments:
    """Overrides for the transforms `build_transforms` derives from the model's image processor.

    The input size and channel count are the model's (``TransferModel.from_pretrained(image_size=...,
    num_channels=...)`` adapts its image processor, which these transforms follow).
    """

    image_mean: list[float] | None = field(default=None, metadata={"help": (
        "Normalisation mean (one value, or one per channel); default: the checkpoint's image processor.")})
    image_std: list[float] | None = field(default=None, metadata={"help": (
        "Normalisation std (one value, or one per channel); default: the checkpoint's image processor.")})
    augment: bool = field(default=True, metadata={"help": (
        "Random training augmentation (RandomResizedCrop + horizontal flip). --no_augment makes the training "
        "transform identical to the deterministic evaluation transform.")})
    crop_scale_min: float = field(default=0.08, metadata={"help": (
        "Lower bound of the area fraction RandomResizedCrop keeps (upper bound 1.0).")})
    horizontal_flip: bool = field(default=True, metadata={"help": "Random horizontal flips when augmenting."})
    random_erasing: float = field(default=0.0, metadata={"help": (
        "Probability of erasing one random rectangle (2-33 %% of the image) of each training image to the "
        "channel mean, after normalisation (Zhong et al.'s Random Erasing); 0 = off.")})

    def __post_init__(self):
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"crop_scale_min={self.crop_scale_min}; use a fraction in (0, 1].")
        check_probability("random_erasing", self.random_erasing)

    def to_kwargs(self) -> dict:
        """Keyword arguments for `build_transforms`."""
        return {"mean": self.image_mean, "std": self.image_std, "augment": self.augment,
                "crop_scale": (self.crop_scale_min, 1.0), "horizontal_flip": self.horizontal_flip,
                "random_erasing": self.random_erasing}
