"""Transforms and collation for `Trainer`: the evaluation transform equals the model's image processor."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from ..processing import channel_values, processor_sizes, resize_interpolation
from ..validation import check_positive_int, check_probability
from .images import cell_path, convert_image

logger = logging.getLogger(__name__)


# --- transforms --------------------------------------------------------------------------------------

class ImageTransform:
    """Callable: any image cell -> normalised float tensor ``[num_channels, H, W]`` (see `build_transforms`)."""

    def __init__(self, num_channels: int, pipeline, train: bool):
        self.num_channels = num_channels
        self.pipeline = pipeline
        self.train = train
        self.base_channels = 1 if num_channels < 3 else 3

    def __call__(self, image: Any) -> torch.Tensor:
        x = self.pipeline(convert_image(image, self.num_channels))
        extra = self.num_channels - self.base_channels
        if extra > 0:
            x = torch.cat([x, x.new_zeros((extra, *x.shape[1:]))], dim=0)
        return x

    def __repr__(self) -> str:
        return f"ImageTransform(num_channels={self.num_channels}, train={self.train}, pipeline={self.pipeline})"


def build_transforms(
    image_processor: Any,
    num_channels: int,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = True,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    horizontal_flip: bool = True,
    random_erasing: float = 0.0,
) -> tuple[ImageTransform, ImageTransform]:
    """``(train_tf, eval_tf)`` for a model's image processor (e.g. ``model.image_processor``).

    eval: Resize + CenterCrop as `processor_sizes` describes, with the processor's ``resample`` filter (like the
    processor itself); train: RandomResizedCrop(crop, crop_scale, same filter) +
    RandomHorizontalFlip (+ RandomErasing with probability `random_erasing`, after normalising, so an erased
    rectangle holds the channel mean). Both then scale to the processor's rescale factor (1/255) and normalise with its
    mean/std adapted to `num_channels` (RGB stats averaged for gray) unless `mean`/`std` are given, honouring
    EfficientNet's ``rescale_offset`` and ``include_top`` as its processor does, so eval pixels equal the processor's.
    ``augment=False`` returns the eval transform for training too (deterministic; for feature caching).
    """
    from torchvision.transforms import v2

    check_positive_int("num_channels", num_channels, hint="use a positive integer (1 = grayscale, 3 = RGB)")
    crop_hw, resize = processor_sizes(image_processor, image_size)
    base = 1 if num_channels < 3 else 3
    normalizing = not (getattr(image_processor, "do_normalize", True) is False and mean is None and std is None)
    if not normalizing:
        mean_v, std_v = [0.0] * num_channels, [1.0] * num_channels
    else:
        mean_src = mean if mean is not None else (getattr(image_processor, "image_mean", None) or [0.5])
        std_src = std if std is not None else (getattr(image_processor, "image_std", None) or [0.5])
        mean_v = channel_values(mean_src, num_channels, "mean")
        std_v = channel_values(std_src, num_channels, "std")
    if any(s <= 0 for s in std_v):
        raise ValueError(f"std={std_v} must be positive.")
    factor = float(getattr(image_processor, "rescale_factor", None) or 1 / 255)
    offset = 0.0
    if getattr(image_processor, "do_rescale", True) is False:
        factor = 1.0
    elif getattr(image_processor, "rescale_offset", False) is True:  # EfficientNet: x * factor - 1
        offset = 1.0
    if getattr(image_processor, "include_top", False) is True:  # EfficientNet: divides by image_std once more
        again = std_v if normalizing else channel_values(getattr(image_processor, "image_std", None) or [0.5],
                                                          num_channels, "std")
        std_v = [s * t for s, t in zip(std_v, again)]
    # ((x * factor - offset) - m) / s == (x - (m + offset) / factor) / (s / factor): one Normalize on 0..255 values
    normalize = [v2.ToDtype(torch.float32, scale=False),
                 v2.Normalize([(m + offset) / factor for m in mean_v[:base]], [s / factor for s in std_v[:base]])]
    mode, pil_only = resize_interpolation(image_processor)

    def on_image(steps: list) -> list:  # PIL-only filters resize the PIL image, the rest the uint8 tensor
        return [*steps, v2.ToImage()] if pil_only else [v2.ToImage(), *steps]

    eval_tf = ImageTransform(num_channels, v2.Compose(
        [*on_image([v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(crop_hw)]), *normalize]),
        train=False)
    if not augment:
        return eval_tf, eval_tf
    check_probability("random_erasing", random_erasing)
    lo, hi = crop_scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop_scale={crop_scale}; use 0 < min <= max <= 1.")
    train_steps = on_image([v2.RandomResizedCrop(crop_hw, scale=(lo, hi), interpolation=mode, antialias=True)])
    if horizontal_flip:
        train_steps.append(v2.RandomHorizontalFlip())
    erase = [v2.RandomErasing(p=random_erasing, value=0.0)] if random_erasing > 0 else []
    return ImageTransform(num_channels, v2.Compose([*train_steps, *normalize, *erase]), train=True), eval_tf


class _BatchTransform:
    """`Dataset.with_transform` function (a class, so DataLoader workers can pickle it)."""

    def __init__(self, tf, image_column: str, label_column: str | None):
        self.tf, self.image_column, self.label_column = tf, image_column, label_column

    def __call__(self, batch: dict) -> dict:
        pixels = []
        for value in batch[self.image_column]:
            try:
                pixels.append(self.tf(value))
            except Exception as err:
                where = cell_path(value) or "(in-memory image)"
                raise ValueError(
                    f"Could not read image {where}: {type(err).__name__}: {err}. Load the data with "
                    "load_image_classification_data, which drops unreadable images before training."
                ) from err
        out = {"pixel_values": pixels}
        if self.label_column is not None and self.label_column in batch:
            out["labels"] = [int(v) for v in batch[self.label_column]]
        return out


def with_transforms(dataset, tf, image_column: str = "image", label_column: str | None = "label"):
    """A view of `dataset` whose rows are ``{"pixel_values": float tensor CxHxW, "labels": int}``.

    Uses `Dataset.with_transform` (the input dataset is not modified); decoding happens lazily per row.
    """
    if dataset is None:
        return None
    columns = list(dataset.column_names)
    if image_column not in columns:
        raise ValueError(f"Image column {image_column!r} not found; the dataset has columns {columns}.")
    if label_column is not None and label_column not in columns:
        raise ValueError(f"Label column {label_column!r} not found; the dataset has columns {columns}.")
    used = [image_column] + ([label_column] if label_column is not None else [])
    return dataset.with_transform(_BatchTransform(tf, image_column, label_column), columns=used,
                                  output_all_columns=False)


def collate_fn(examples: Sequence[dict]) -> dict:
    """Stack rows from `with_transforms` into ``{"pixel_values": [B,C,H,W], "labels": [B] long}``."""
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
    if examples and "labels" in examples[0]:
        batch["labels"] = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
    return batch
