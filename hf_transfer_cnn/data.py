"""Image-classification data: sources, robust decoding, transforms and collation for `Trainer`.

Typical use::

    train_ds, eval_ds, id2label = load_image_classification_data(DataArguments(train_dir="data/train"))
    model = TransferModel.from_pretrained(checkpoint, id2label=id2label)
    train_tf, eval_tf = build_transforms(model.image_processor, model.num_input_channels)
    train_ds = with_transforms(train_ds, train_tf)
    eval_ds = with_transforms(eval_ds, eval_tf)
    Trainer(model, args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collate_fn)

(`TrainingArguments(remove_unused_columns=False)` is required: the transform reads the image column,
which Trainer would otherwise drop before the transform runs.)

Policies
--------
* Sources. Exactly one of ``dataset_name`` (a Hub id, a local dataset directory or data file, or a
  `save_to_disk` directory) and ``train_dir`` (an imagefolder ``train_dir/<class>/<image>`` or a
  `save_to_disk` directory) must be given; giving both is an error (no silent precedence).
  ``validation_dir`` only goes with ``train_dir``.
* Evaluation split. ``eval_split_name`` if given, else the first of validation/valid/val/dev that
  exists, else a seeded (stratified when possible) ``train_val_split`` fraction of train; with
  ``train_val_split=0`` there is no eval set (``None``). A "test" split is never picked
  automatically (it stays untouched unless named).
* Unreadable images (corrupt, truncated, unsupported mode) are found before training by a pass that
  decodes every image once (after ``max_*_samples`` selection) and are dropped, with a warning like
  ``skipped 2 unreadable image(s) of 120 in train: [...]``; ``on_bad_image="error"`` raises instead,
  naming the file. Datasets never change length during an epoch. Images are loaded with the
  ``Image`` feature's ``decode=False`` and decoded here with PIL; ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``
  is not touched (if your own code sets it to True, truncated files decode partially and are kept).
* Modes (see `to_8bit`): every image becomes 8-bit ``L`` or ``RGB``. RGBA/LA/PA (and palette images
  with transparency) are alpha-composited on **white** (not alpha-dropped, which would expose whatever
  colour sits under transparent pixels). ``I;16*`` maps 0..65535 linearly to 0..255; ``I`` (32-bit, e.g.
  a numpy int64 array in a dataset) is taken as 8-bit when its values fit in 0..255, as 16-bit when they fit
  in 0..65535, else min-max stretched (per image);
  ``F`` is taken as 0..1 (x255) or 0..255 when it fits one of them, else min-max stretched. CMYK,
  YCbCr, HSV, RGBX ... go through PIL's ``convert("RGB")``. EXIF orientation is applied.
* Channels (see `convert_image`): 1 channel = ``L`` (ITU-R 601 luma), 3 = ``RGB``; 2 = ``L`` plus one
  extra channel, N > 3 = ``RGB`` plus N-3 extra channels. Extra channels are **zero in the final
  normalised tensor** (i.e. they carry no signal; with the model's zero-initialised extra stem
  weights the network starts out exactly as the RGB/gray model).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import math
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DataArguments", "TransformArguments", "load_image_classification_data", "build_transforms",
    "with_transforms", "collate_fn", "processor_sizes", "load_image", "to_8bit", "convert_image",
    "ImageTransform", "write_imagefolder", "read_idx", "write_idx", "load_fashion_mnist_idx",
    "fashion_mnist_to_imagefolder", "FASHION_MNIST_LABELS", "FASHION_MNIST_DIR",
]

EVAL_SPLIT_CANDIDATES = ("validation", "valid", "val", "dev")
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                        "Bag", "Ankle boot")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist installs it
_DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}


# --- arguments ------------------------------------------------------------------------------------

@dataclass
class DataArguments:
    """Where the images come from and how they are split (field names follow the HF examples)."""

    dataset_name: str | None = field(default=None, metadata={"help": (
        "A Hub dataset id, a local dataset directory (parquet/arrow/csv/json files or an imagefolder layout "
        "with train/validation subfolders), a local data file, or a directory written by save_to_disk. "
        "Mutually exclusive with --train_dir.")})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset configuration name (Hub datasets)."})
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
        "What to do with unreadable (corrupt, truncated) images: 'skip' drops them before training and logs "
        "how many; 'error' stops with the file name.")})
    split_seed: int = field(default=42, metadata={"help": "Seed for the validation split and the max_*_samples subsets."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": (
        "Threads used to check that every image decodes (default: up to 4, bounded by the CPU count).")})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "Cache directory for datasets.load_dataset."})

    def __post_init__(self):
        if self.on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image={self.on_bad_image!r}; use 'skip' or 'error'.")
        if self.train_val_split is not None and not 0.0 <= float(self.train_val_split) < 1.0:
            raise ValueError(f"train_val_split={self.train_val_split}; use a fraction in [0, 1) (0 = no eval set).")
        for name in ("max_train_samples", "max_eval_samples"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}={v!r}; use a positive integer or leave it unset.")


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
        _check_probability("random_erasing", self.random_erasing)

    def to_kwargs(self) -> dict:
        """Keyword arguments for `build_transforms`."""
        return {"mean": self.image_mean, "std": self.image_std, "augment": self.augment,
                "crop_scale": (self.crop_scale_min, 1.0), "horizontal_flip": self.horizontal_flip,
                "random_erasing": self.random_erasing}


def _check_probability(name: str, p: Any) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p!r}; use a probability in [0, 1] (0 turns it off).")


# --- decoding ---------------------------------------------------------------------------------------

def load_image(value: Any):
    """Fully decode one dataset cell into a PIL image.

    Accepts what the ``Image(decode=False)`` feature stores (``{"bytes": ..., "path": ...}``), a path, raw
    bytes, a numpy array or a PIL image. Raises on corrupt or truncated data (the pixels are loaded here).
    """
    from PIL import Image, ImageOps

    if isinstance(value, Image.Image):
        img = value
        img.load()
    elif isinstance(value, np.ndarray):
        img = Image.fromarray(value)
    else:
        if value is None:
            raise ValueError("the image cell is empty (None)")
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and path is None:
                raise ValueError("the image cell has neither bytes nor a path")
            if data is None and not os.path.exists(path):
                import datasets  # remote/relative paths: let datasets resolve them

                img = datasets.Image(decode=True).decode_example(value)
                img.load()
                return _exif_upright(img, ImageOps)
            src = io.BytesIO(data) if data is not None else path
        elif isinstance(value, (bytes, bytearray, memoryview)):
            src = io.BytesIO(bytes(value))
        elif isinstance(value, (str, os.PathLike)):
            src = value
        else:
            raise TypeError(f"cannot read an image from a {type(value).__name__}")
        with Image.open(src) as opened:
            opened.load()  # decodes all pixels: raises on truncated/corrupt data
            img = opened
    return _exif_upright(img, ImageOps)


def _exif_upright(img, image_ops):
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # unparsable EXIF is not worth dropping the image for
        return img
    return image_ops.exif_transpose(img) if orientation not in (None, 1) else img


def _scale_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    arr = np.nan_to_num(arr.astype(np.float64), nan=lo, posinf=hi, neginf=lo)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.rint((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_8bit(img):
    """Convert a PIL image of any mode to 8-bit ``L`` (gray sources) or ``RGB`` (everything else).

    Alpha is composited on white. 16-bit and float data are rescaled to 0..255 (see the module docstring),
    never clipped.
    """
    from PIL import Image

    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        elif mode == "I":  # 32-bit ints: 8-bit values (numpy int arrays), 16-bit ones, or anything else
            amin, amax = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
            lo, hi = (0.0, 255.0) if amin >= 0 and amax <= 255 else (0.0, 65535.0) if amin >= 0 and amax <= 65535 \
                else (float(amin), float(amax))
        else:
            finite = arr[np.isfinite(arr)]
            amin, amax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            if amin >= 0 and amax <= 1:
                lo, hi = 0.0, 1.0
            elif amin >= 0 and amax <= 255:
                lo, hi = 0.0, 255.0
            else:
                lo, hi = amin, amax
        return Image.fromarray(_scale_to_uint8(arr, lo, hi), mode="L")
    if mode == "P":
        if "transparency" not in img.info:
            return img.convert("RGB")
        mode, img = "RGBA", img.convert("RGBA")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        gray = mode in ("LA", "La")
        rgba = img.convert("RGBA")
        out = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return out.convert("L") if gray else out
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ValueError(f"unsupported image mode {mode!r}: {err}") from err


def convert_image(image: Any, num_channels: int):
    """Decode (if needed) and convert an image to what a `num_channels` model is fed, before extra channels.

    Returns an 8-bit PIL image: ``L`` for 1 or 2 channels, ``RGB`` for 3 or more. The channels beyond those
    (2 -> 1 extra, N > 3 -> N - 3 extra) are added as zeros by `ImageTransform`.
    """
    if num_channels < 1:
        raise ValueError(f"num_channels={num_channels}; it must be at least 1.")
    from PIL import Image

    img = to_8bit(image if isinstance(image, Image.Image) else load_image(image))
    target = "L" if num_channels < 3 else "RGB"
    return img if img.mode == target else img.convert(target)


def _cell_path(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("path")
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else None


def _describe_cell(value: Any, index: int) -> str:
    path = _cell_path(value)
    return f"{path} (index {index})" if path else f"index {index}"


# --- transforms --------------------------------------------------------------------------------------

def _size_get(size: Any, key: str):
    if size is None:
        return None
    if isinstance(size, int):
        return size if key == "shortest_edge" else None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def processor_sizes(image_processor: Any, image_size: int | None = None) -> tuple[tuple[int, int], int | tuple[int, int]]:
    """``(crop_hw, resize)`` the evaluation transform uses: Resize(resize) then CenterCrop(crop_hw).

    `resize` is an int (shortest edge, aspect kept) or ``(h, w)``. Follows the processor: ``shortest_edge`` S
    with ``crop_pct`` p resizes to int(S / p) and crops S (S >= 384: resize to S x S, no crop, as
    transformers' ConvNeXt processor does); a ``crop_size`` with centre-cropping crops it after resizing to
    ``size``; ``height``/``width`` alone resizes to exactly that. `image_size` replaces the crop by a square
    of that side and scales the resize by the same factor (the resize/crop ratio is kept).
    """
    size = getattr(image_processor, "size", None)
    crop = getattr(image_processor, "crop_size", None)
    crop_pct = getattr(image_processor, "crop_pct", None)
    do_crop = getattr(image_processor, "do_center_crop", None)
    se = _size_get(size, "shortest_edge")
    h, w = _size_get(size, "height"), _size_get(size, "width")
    ch, cw = _size_get(crop, "height"), _size_get(crop, "width")
    if se and crop_pct:
        crop_hw, resize = (se, se), (int(se / crop_pct) if se < 384 else (se, se))
    elif ch and cw and do_crop is not False:
        crop_hw = (ch, cw)
        resize = se if se else (h, w) if (h and w) else crop_hw
    elif h and w:
        crop_hw, resize = (h, w), (h, w)
    elif se:
        crop_hw, resize = (se, se), se
    else:
        longest = _size_get(size, "longest_edge") or 224
        crop_hw, resize = (longest, longest), (longest, longest)
    if image_size is not None:
        image_size = int(image_size)
        if image_size < 1:
            raise ValueError(f"image_size={image_size}; use a positive integer.")
        fy, fx = image_size / crop_hw[0], image_size / crop_hw[1]
        resize = max(image_size, round(resize * fy)) if isinstance(resize, int) else \
            (max(image_size, round(resize[0] * fy)), max(image_size, round(resize[1] * fx)))
        crop_hw = (image_size, image_size)
    return (int(crop_hw[0]), int(crop_hw[1])), resize


def _channel_values(values: Sequence[float], num_channels: int, what: str) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{what} is empty; give one value or one per channel.")
    if len(values) == num_channels:
        return values
    if len(values) == 1:
        return values * num_channels
    if len(values) != 3:
        raise ValueError(f"{what} has {len(values)} values for a {num_channels}-channel model; give one value, one "
                         f"per channel ({num_channels}), or RGB statistics (3 values: averaged for gray input, "
                         "their average used for channels beyond RGB).")
    avg = sum(values) / len(values)
    if num_channels < len(values):  # e.g. RGB stats for a gray model: their average
        return [avg] * num_channels
    return values + [avg] * (num_channels - len(values))


# PIL's resampling filters (the codes image processors store as `resample`) -> torchvision's name for each
_RESAMPLE_MODES = {0: "NEAREST_EXACT", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}
_PIL_ONLY_MODES = {"LANCZOS", "BOX", "HAMMING"}


def resize_interpolation(image_processor: Any):
    """(torchvision InterpolationMode, PIL-only?) for the processor's `resample` filter (bilinear when unset)."""
    from torchvision.transforms import InterpolationMode

    resample = getattr(image_processor, "resample", None)
    if isinstance(resample, InterpolationMode):  # transformers' torchvision backend also takes these
        return resample, resample.name in _PIL_ONLY_MODES
    code = 2 if resample is None else getattr(resample, "value", resample)
    if isinstance(code, bool) or not isinstance(code, int) or code not in _RESAMPLE_MODES:
        raise ValueError(f"image processor resample={resample!r} is not a PIL filter code (0-5); set it to one, "
                         "e.g. 2 (bilinear) or 3 (bicubic).")
    name = _RESAMPLE_MODES[code]
    return InterpolationMode[name], name in _PIL_ONLY_MODES


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

    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(f"num_channels={num_channels!r}; use a positive integer (1 = grayscale, 3 = RGB).")
    crop_hw, resize = processor_sizes(image_processor, image_size)
    base = 1 if num_channels < 3 else 3
    normalizing = not (getattr(image_processor, "do_normalize", True) is False and mean is None and std is None)
    if not normalizing:
        mean_v, std_v = [0.0] * num_channels, [1.0] * num_channels
    else:
        mean_src = mean if mean is not None else (getattr(image_processor, "image_mean", None) or [0.5])
        std_src = std if std is not None else (getattr(image_processor, "image_std", None) or [0.5])
        mean_v = _channel_values(mean_src, num_channels, "mean")
        std_v = _channel_values(std_src, num_channels, "std")
    if any(s <= 0 for s in std_v):
        raise ValueError(f"std={std_v} must be positive.")
    factor = float(getattr(image_processor, "rescale_factor", None) or 1 / 255)
    offset = 0.0
    if getattr(image_processor, "do_rescale", True) is False:
        factor = 1.0
    elif getattr(image_processor, "rescale_offset", False) is True:  # EfficientNet: x * factor - 1
        offset = 1.0
    if getattr(image_processor, "include_top", False) is True:  # EfficientNet: divides by image_std once more
        again = std_v if normalizing else _channel_values(getattr(image_processor, "image_std", None) or [0.5],
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
    _check_probability("random_erasing", random_erasing)
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
                where = _cell_path(value) or "(in-memory image)"
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


def _load_sources(args: DataArguments) -> tuple[dict, str]:
    """``(splits, description)``: split name -> Dataset, and the source for messages."""
    import datasets

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
    separate: dict = {}
    if args.dataset_name:
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
    train_dir = os.path.expanduser(args.train_dir)
    val_dir = os.path.expanduser(args.validation_dir) if args.validation_dir else None
    folders: dict[str, str] = {}
    splits: dict = {}
    if _is_saved_dataset_dir(train_dir):
        splits = _load_saved(train_dir)
    else:
        folders[args.train_split_name] = train_dir
    if val_dir:
        if _is_saved_dataset_dir(val_dir):
            saved = _load_saved(val_dir)
            pick = next((s for s in (args.eval_split_name, *EVAL_SPLIT_CANDIDATES) if s and s in saved), None)
            if pick is None and len(saved) == 1:
                pick = next(iter(saved))
            if pick is None:
                raise ValueError(f"validation_dir={val_dir!r} holds splits {list(saved)}; set eval_split_name to the "
                                 "one to evaluate on.")
            separate["validation"] = saved[pick]
        elif folders:  # two image folders: load together so both get the same class list
            folders["validation"] = val_dir
        else:
            separate["validation"] = _load_imagefolder({"validation": val_dir}, args.dataset_cache_dir)["validation"]
    if folders:
        splits.update(_load_imagefolder(folders, args.dataset_cache_dir))
    splits.update(separate)
    desc = f"train_dir {train_dir!r}" + (f" / validation_dir {val_dir!r}" if val_dir else "")
    return splits, desc


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
        if feat.dtype.startswith(("int", "uint")) or feat.dtype == "bool":
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


def _subsample(ds, n: int | None, seed: int):
    if ds is None or n is None or n >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return ds.select(idx.tolist())


def _split_off_validation(train, frac: float, seed: int, label_col: str):
    import datasets

    n = len(train)
    if n * frac < 1 or n - math.ceil(n * frac) < 1:
        raise ValueError(f"The training set has {n} example(s): too few to hold out train_val_split={frac} for "
                         "evaluation. Give an evaluation split/validation_dir, or set train_val_split=0.")
    feature = train.features[label_col]
    if isinstance(feature, datasets.ClassLabel):
        try:
            parts = train.train_test_split(test_size=frac, seed=seed, stratify_by_column=label_col)
            return parts["train"], parts["test"]
        except ValueError as err:
            logger.info("Stratified validation split not possible (%s); using a plain random split.", err)
    elif isinstance(feature, datasets.Value):  # int or string labels: stratify on an encoded copy, keep the rows
        try:
            rows = train.select_columns([label_col]).class_encode_column(label_col).add_column("_row", list(range(n)))
            parts = rows.train_test_split(test_size=frac, seed=seed, stratify_by_column=label_col)
            return train.select(parts["train"]["_row"]), train.select(parts["test"]["_row"])
        except ValueError as err:
            logger.info("Stratified validation split not possible (%s); using a plain random split.", err)
    parts = train.train_test_split(test_size=frac, seed=seed)
    return parts["train"], parts["test"]


def _check_decodable(value: Any) -> None:
    to_8bit(load_image(value))


def _drop_unreadable(ds, image_col: str, split: str, on_bad_image: str, workers: int | None):
    """Decode every image once; drop (or raise on) those that fail. The result never changes length later."""
    n = len(ds)
    if n == 0:
        return ds

    def check(item):
        index, value = item
        try:
            _check_decodable(value)
            return None
        except Exception as err:  # any decoder failure means "unreadable"
            return index, _describe_cell(value, index), f"{type(err).__name__}: {err}"

    workers = workers or max(1, min(4, os.cpu_count() or 1))
    bad: list[tuple[int, str, str]] = []
    start = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in ds.select_columns([image_col]).iter(batch_size=256):
            cells = batch[image_col]
            for result in pool.map(check, zip(range(start, start + len(cells)), cells)):
                if result is None:
                    continue
                if on_bad_image == "error":
                    raise ValueError(f"Unreadable image in {split}: {result[1]}: {result[2]}. Fix or remove the file, "
                                     "or use on_bad_image='skip' to drop unreadable images.")
                bad.append(result)
            start += len(cells)
    if not bad:
        return ds
    shown = [f"{where}: {why}" for _, where, why in bad[:20]] + (["..."] if len(bad) > 20 else [])
    logger.warning("skipped %d unreadable image(s) of %d in %s: %s", len(bad), n, split, shown)
    if len(bad) == n:
        raise ValueError(f"The {split} set is empty after dropping unreadable images: all {n} images were "
                         f"unreadable (first: {shown[0]}). Check the files/format.")
    bad_idx = {i for i, _, _ in bad}
    return ds.select([i for i in range(n) if i not in bad_idx])


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
    id2label = {i: str(n) for i, n in enumerate(names)}
    if len(id2label) < 2:
        logger.warning("The data has %d class(es) (%s); classification needs at least 2.", len(id2label), names)
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
        train, evaluation = _split_off_validation(train, float(args.train_val_split), args.split_seed, col)
        eval_name = f"{args.train_split_name}[held-out {args.train_val_split:g}]"
    train = _subsample(train, args.max_train_samples, args.split_seed)
    evaluation = _subsample(evaluation, args.max_eval_samples, args.split_seed)
    img = args.image_column_name
    train = _drop_unreadable(train, img, args.train_split_name, args.on_bad_image, args.preprocessing_num_workers)
    if evaluation is not None:
        evaluation = _drop_unreadable(evaluation, img, eval_name, args.on_bad_image, args.preprocessing_num_workers)
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


# --- writing image folders; IDX (MNIST-style) files ---------------------------------------------------

def _safe_dirname(name: str) -> str:
    safe = re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", str(name)).strip().lstrip(".")
    return safe or "_"


def write_imagefolder(root: str | os.PathLike, images: Any, labels: Sequence[int], label_names: Sequence[str] | None = None,
                      split: str | None = "train", fmt: str = "png") -> str:
    """Write images as ``root/<split>/<label name>/<index>.<fmt>``; returns the split folder.

    `images`: an array ``[N, H, W]`` / ``[N, H, W, C]`` (uint8, or anything PIL's ``fromarray`` takes) or a
    sequence of PIL images/arrays. Folder names are the label names with path-unsafe characters replaced
    by "_" (e.g. "T-shirt/top" -> "T-shirt_top"); note that an image folder loads classes in sorted
    folder-name order, so the ids it assigns are the alphabetical ones.
    """
    from PIL import Image

    labels = [int(v) for v in labels]
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    if label_names is None:
        label_names = [str(i) for i in range(max(labels) + 1 if labels else 0)]
    dirnames = [_safe_dirname(n) for n in label_names]
    if len(set(dirnames)) != len(dirnames):
        raise ValueError(f"Label names {list(label_names)} collide as folder names {dirnames}.")
    out = os.path.join(os.fspath(root), split) if split else os.fspath(root)
    for i, (image, label) in enumerate(zip(images, labels)):
        if not 0 <= label < len(dirnames):
            raise ValueError(f"label {label} of image {i} is outside 0..{len(dirnames) - 1}.")
        folder = os.path.join(out, dirnames[label])
        os.makedirs(folder, exist_ok=True)
        img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        img.save(os.path.join(folder, f"{i:06d}.{fmt}"))
    return out


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzip-compressed or not (detected from the bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{os.fspath(path)!r} is not an IDX file (bad magic number {data[:4].hex()}).")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    count = int(np.prod(shape)) if ndim else 1
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f"{os.fspath(path)!r}: header says shape {shape} ({count * dtype.itemsize} bytes of data) "
                         f"but the file has {len(data) - offset}; it is truncated or corrupt.")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
    return arr.astype(dtype.newbyteorder("=")) if dtype.byteorder == ">" else arr.copy()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as an IDX file (gzip-compressed when `path` ends with .gz)."""
    arr = np.asarray(array)
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C,
            np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}.")
    payload = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + \
        arr.astype(np.dtype(_IDX_DTYPES[code])).tobytes()
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def _find_idx(directory: str, stem: str, kind: str) -> str:
    candidates = [f"{stem}-{kind}", f"{stem}.{kind}".replace("-idx", ".idx")]
    for base in candidates:
        for name in (base, base + ".gz"):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(
        f"No {stem}-{kind}[.gz] in {directory!r}. Fashion-MNIST IDX files: train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (optionally .gz); on Debian/Ubuntu "
        f"`apt-get install dataset-fashion-mnist` puts them in {FASHION_MNIST_DIR}.")


def load_fashion_mnist_idx(directory: str | os.PathLike = FASHION_MNIST_DIR):
    """``(train_images [N,28,28] uint8, train_labels [N], test_images, test_labels)`` from a Fashion-MNIST (or
    MNIST) IDX directory. Class names: `FASHION_MNIST_LABELS`."""
    directory = os.fspath(directory)
    out = []
    for stem in ("train", "t10k"):
        images = read_idx(_find_idx(directory, f"{stem}-images", "idx3-ubyte"))
        labels = read_idx(_find_idx(directory, f"{stem}-labels", "idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{stem} files in {directory!r} disagree: images {images.shape}, labels {labels.shape}.")
        out += [images, labels]
    return tuple(out)


def fashion_mnist_to_imagefolder(directory: str | os.PathLike, root: str | os.PathLike, max_train: int | None = None,
                                 max_test: int | None = None, seed: int = 0) -> dict[str, str]:
    """Export Fashion-MNIST IDX files to PNG image folders ``root/train`` and ``root/test`` (seeded subsets if
    `max_train`/`max_test` are given); returns ``{"train": dir, "test": dir}``."""
    train_x, train_y, test_x, test_y = load_fashion_mnist_idx(directory)
    rng = np.random.default_rng(seed)
    out = {}
    for split, x, y, cap in (("train", train_x, train_y, max_train), ("test", test_x, test_y, max_test)):
        if cap is not None and cap < len(x):
            idx = np.sort(rng.choice(len(x), size=cap, replace=False))
            x, y = x[idx], y[idx]
        out[split] = write_imagefolder(root, x, y, FASHION_MNIST_LABELS, split=split)
    return out
