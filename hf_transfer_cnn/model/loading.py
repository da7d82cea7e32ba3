"""What `TransferModel.from_pretrained` checks and looks up around the weights load.

`TaskRequest` holds the new task's arguments, checked against the checkpoint's config before any weights load;
`split_hub_kwargs` separates the arguments transformers' loader takes; `native_class_for` finds the checkpoint's own
transformers class; `load_image_processor` gives the processor that matches the loaded model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..processing import adapt_image_processor, default_image_processor, timm_image_processor
from ..registry import get_arch
from ..validation import check_positive_int
from .head import HeadSpec
from .labels import normalise_labels

__all__ = ["HUB_KWARGS", "TaskRequest", "check_image_size", "check_num_channels", "load_image_processor",
           "native_class_for", "split_hub_kwargs"]

HUB_KWARGS = frozenset({"revision", "token", "cache_dir", "force_download", "local_files_only", "proxies",
                        "subfolder", "trust_remote_code", "torch_dtype", "dtype", "device_map", "attn_implementation"})
"""The keyword arguments `from_pretrained` passes on to transformers."""


def split_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the transformers loading arguments out of `kwargs`; anything else left there is an error."""
    hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}
    if kwargs:
        raise TypeError(f"Unexpected argument(s) {sorted(kwargs)} for TransferModel.from_pretrained.")
    return hub_kwargs


def check_num_channels(num_channels: Any, *, optional: bool = False) -> int | None:
    """`num_channels` if it is a positive int (or None with `optional`), else a ValueError saying what to give."""
    return check_positive_int("num_channels", num_channels, optional=optional,
                              hint="use a positive integer (1 = grayscale, 3 = RGB)")


def check_image_size(image_size: Any, minimum: int, model_type: str) -> int:
    """`image_size` if it is an int of at least `minimum` (the architecture's), else a ValueError saying so."""
    if not isinstance(image_size, int) or image_size < minimum:
        raise ValueError(
            f"image_size={image_size} is below the minimum of {minimum} px for {model_type!r}; "
            f"use image_size >= {minimum} (upscale small images)."
        )
    return image_size


def native_class_for(config: Any) -> type:
    """The transformers image-classification class of `config` (an unsupported model type is an error first)."""
    from transformers import AutoModelForImageClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    get_arch(config.model_type)  # registry check first: clear error for unsupported types
    if type(config) in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        return MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(config)]
    auto_map = getattr(AutoModelForImageClassification, "_model_mapping", {})
    if type(config) in auto_map:
        return auto_map[type(config)]
    raise ValueError(f"No image-classification model class is registered for model_type {config.model_type!r}.")


@dataclass(frozen=True)
class TaskRequest:
    """The new task `from_pretrained` was asked for, checked against the checkpoint's config."""

    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    names_given: bool = False
    """id2label or label2id was passed (labels equal to the checkpoint's own then keep its trained head)."""
    num_channels: int | None = None
    image_size: int | None = None
    head: HeadSpec | None = None

    @classmethod
    def parse(cls, config: Any, *, num_labels: int | None = None, id2label: dict | None = None,
              label2id: dict | None = None, num_channels: int | None = None, image_size: int | None = None,
              head: HeadSpec | dict | None = None) -> TaskRequest:
        """Check the arguments (unsupported model type, labels, channels, size, head: in that order)."""
        spec = get_arch(config.model_type)
        names_given = id2label is not None or label2id is not None
        num_labels, id2label, label2id = normalise_labels(num_labels, id2label, label2id)
        check_num_channels(num_channels, optional=True)
        if image_size is not None:
            check_image_size(image_size, spec.min_size(config), config.model_type)
        return cls(num_labels, id2label, label2id, names_given, num_channels, image_size, HeadSpec.parse(head))

    def keeps_head(self, own_id2label: dict[int, str], own_head: HeadSpec) -> bool:
        """The request names the checkpoint's own classes (same names, same ids) and its head layout."""
        return self.names_given and self.id2label == own_id2label and (self.head is None or self.head == own_head)

    def replaces_head(self, own_head: HeadSpec) -> bool:
        """New classes, or another head layout."""
        return self.num_labels is not None or (self.head is not None and self.head != own_head)


def load_image_processor(model: Any, name_or_path: Any, hub_kwargs: dict[str, Any]) -> Any:
    """The checkpoint's image processor (a default one when it has none), matched to `model`'s input channels."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(name_or_path, **hub_kwargs)
    except (OSError, ValueError, KeyError):
        size = model.meta.image_size or getattr(model.config, "image_size", None) or 224
        proc = default_image_processor(model.config.model_type, int(size))
    if getattr(proc, "image_mean", None) is None and hasattr(proc, "data_config"):
        proc = timm_image_processor(proc)
    if len(proc.image_mean or ()) != model.num_input_channels:
        proc = adapt_image_processor(proc, num_channels=model.num_input_channels)
    return proc
