"""Image processors and normalisation: every rule about how pixels are sized and normalised, in one place.

* `channel_values`: the one rule for per-channel statistics (one value, one per channel, or RGB's three: averaged
  for gray input, their average for channels beyond RGB);
* `adapt_image_processor`: a processor for another channel count or image size;
* `default_image_processor`, `torchvision_eval_processor`, `timm_image_processor`: the processors used where a
  checkpoint brings none (or brings timm's); all resize then centre-crop with torchvision's 0.875 ratio;
* `processor_sizes`, `resize_interpolation`: what an image processor does, for building equal transforms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "channel_values", "adapt_image_processor", "default_image_processor",
           "torchvision_eval_processor", "timm_image_processor", "processor_sizes", "resize_interpolation"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = 0.875
"""torchvision's (and timm's default) evaluation crop: resize the shortest edge to size / 0.875, crop size."""
_BILINEAR, _BICUBIC = 2, 3  # PIL.Image.Resampling values


def channel_values(values: Sequence[float], num_channels: int, what: str = "values") -> list[float]:
    """`values` for a `num_channels` model: one per channel as given, one value repeated, or RGB's three (their
    average for gray input and for each channel beyond RGB); any other count is an error naming `what`."""
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


def _base_stats(values: Sequence[float]) -> list[float]:
    """The colour part of a processor's per-channel statistics: RGB's three, or gray's one."""
    values = list(values)
    return values[:3] if len(values) >= 3 else values[:1]


def adapt_image_processor(processor: Any, num_channels: int | None = None, image_size: int | None = None) -> Any:
    """A copy of `processor` that produces `num_channels` × `image_size`² pixel values.

    Mean/std: RGB values for 3 channels; their average for 1 (or for each channel beyond 3).
    Sizes: the output is `image_size`²; a resize-then-crop processor keeps its resize/crop ratio.
    """
    d = processor.to_dict()
    d.pop("_processor_class", None)
    if num_channels is not None:
        for key in ("image_mean", "image_std"):
            if d.get(key) is not None:
                d[key] = channel_values(_base_stats(d[key]), num_channels, key)
    if image_size is not None:
        size = dict(d.get("size") or {})
        size = {k: v for k, v in size.items() if v is not None}
        crop = d.get("crop_size") or {}
        if "shortest_edge" in size and d.get("do_center_crop") and crop.get("height"):
            # resize then centre-crop (BiT, MobileNet, ...): keep the resize/crop ratio
            ratio = size["shortest_edge"] / crop["height"]
            size = {"shortest_edge": int(round(image_size * ratio))}
        elif "shortest_edge" in size:
            size = {"shortest_edge": int(image_size)}  # ConvNeXt-style: crop_pct holds the ratio
        else:
            size = {"height": int(image_size), "width": int(image_size)}
        d["size"] = size
        if d.get("crop_size") is not None:
            d["crop_size"] = {"height": int(image_size), "width": int(image_size)}
    return type(processor).from_dict(d)


def default_image_processor(model_type: str, image_size: int = 224) -> Any:
    """The checkpoint family's image processor class with its defaults (used when a checkpoint has none)."""
    from transformers.models.auto.image_processing_auto import (IMAGE_PROCESSOR_MAPPING_NAMES,
                                                                 get_image_processor_class_from_name)

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    name = (names.get("torchvision") or names.get("pil")) if isinstance(names, dict) else names
    if name:  # the family's processor with ImageNet statistics (what its pretrained checkpoints use)
        cls = get_image_processor_class_from_name(name)
        extra = {"include_top": False} if hasattr(cls, "include_top") else {}  # EfficientNet: no second /std
        proc = cls(image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), **extra)
        return adapt_image_processor(proc, image_size=image_size)
    return _resize_crop(image_size, int(image_size / CROP_RATIO), IMAGENET_MEAN, IMAGENET_STD)


def _resize_crop(image_size: int, shortest_edge: int, mean: Sequence[float], std: Sequence[float],
                 resample: int | None = None) -> Any:
    """Resize the shortest edge, then centre-crop `image_size` square (at every size: ConvNeXt's processor, which
    holds the same ratio as crop_pct, warps the whole image from 384 px on)."""
    from transformers import MobileNetV2ImageProcessor

    extra = {} if resample is None else {"resample": resample}
    return MobileNetV2ImageProcessor(size={"shortest_edge": shortest_edge},
                                     crop_size={"height": image_size, "width": image_size},
                                     image_mean=list(mean), image_std=list(std), **extra)


def torchvision_eval_processor(image_size: int = 224, num_channels: int = 3, *, crop_always: bool = False) -> Any:
    """torchvision's evaluation preprocessing: resize to size/0.875, centre-crop to size, ImageNet mean/std, bilinear.

    Below 384 px it is written as ConvNeXt's processor (``crop_pct``) unless `crop_always`; from 384 px on as a
    resize + crop (ConvNeXt's would warp)."""
    if crop_always or image_size >= 384:
        proc = _resize_crop(image_size, int(image_size / CROP_RATIO), IMAGENET_MEAN, IMAGENET_STD, _BILINEAR)
    else:
        from transformers import ConvNextImageProcessor

        proc = ConvNextImageProcessor(size={"shortest_edge": image_size}, crop_pct=CROP_RATIO, resample=_BILINEAR,
                                      image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    return adapt_image_processor(proc, num_channels=num_channels) if num_channels != 3 else proc


_TIMM_RESAMPLE = {"nearest": 0, "bilinear": _BILINEAR, "bicubic": _BICUBIC, "lanczos": 1}


def timm_image_processor(processor: Any) -> Any:
    """A transformers image processor equivalent to a ``TimmWrapperImageProcessor``'s evaluation transform
    (resize to size / crop_pct, centre crop, timm's mean/std), which TransferModel can adapt to other channel
    counts and sizes. timm's non-centre crop modes are approximated by a centre crop."""
    dc = processor.data_config
    size = int(dc["input_size"][-1])
    crop_pct = float(dc.get("crop_pct") or CROP_RATIO)
    return _resize_crop(size, int(math.floor(size / crop_pct)), dc["mean"], dc["std"],
                        _TIMM_RESAMPLE.get(str(dc.get("interpolation")), _BICUBIC))




def _size_get(size: Any, key: str):
    if size is None:
        return None
    if isinstance(size, int):
        return size if key == "shortest_edge" else None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def processor_sizes(image_processor: Any,
                    image_size: int | None = None) -> tuple[tuple[int, int], int | tuple[int, int]]:
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
