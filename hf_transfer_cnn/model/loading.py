"""What `TransferModel.from_pretrained` checks and looks up around the weights load.

`TaskRequest` holds the new task's arguments, checked against the checkpoint's config before any weights load;
`split_hub_kwargs` separates the arguments transformers' loader takes; `check_model_path` and `load_config` read the
checkpoint's config (a typo'd folder, a missing or damaged config.json: an error naming it); `native_class_for` finds
the checkpoint's own transformers class; `check_loading_info` refuses weights that do not fit the config;
`load_image_processor` gives the processor that matches the loaded model (never a silent default for a trained one).

Rule: a checkpoint that cannot be loaded as it was saved is an error that names the file or key and says what to do;
the one default (the family's ImageNet preprocessing, for a base checkpoint that never had a processor) is logged.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..processing import adapt_image_processor, default_image_processor, timm_image_processor
from ..registry import get_arch
from ..validation import check_positive_int
from .head import HeadSpec
from .labels import normalise_labels
from .meta import CONFIG_KEY, TransferMeta

logger = logging.getLogger(__name__)

__all__ = ["HUB_KWARGS", "CONFIG_FILE", "PROCESSOR_FILE", "TaskRequest", "check_image_size", "check_loading_info",
           "check_model_path", "check_num_channels", "load_config", "load_image_processor", "native_class_for",
           "split_hub_kwargs"]

HUB_KWARGS = frozenset({"revision", "token", "cache_dir", "force_download", "local_files_only", "proxies",
                        "subfolder", "trust_remote_code", "torch_dtype", "dtype", "device_map", "attn_implementation"})
"""The keyword arguments `from_pretrained` passes on to transformers."""
_DOWNLOAD_KWARGS = ("revision", "token", "cache_dir", "force_download", "local_files_only", "proxies", "subfolder")
CONFIG_FILE = "config.json"
PROCESSOR_FILE = "preprocessor_config.json"
_PROCESSOR_FILES = (PROCESSOR_FILE, "processor_config.json")  # the second: newer saves nest the processor there


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



# --- the folder and its config ----------------------------------------------------------------------------------

def _looks_like_path(text: str) -> bool:
    """A string that can only be a local path (a Hub id is ``name`` or ``namespace/name``)."""
    return (text in (".", "..") or text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in text
            or text.count("/") > 1 or (len(text) > 2 and text[1] == ":" and text[2] in "/\\"))


def check_model_path(name_or_path: str | os.PathLike) -> None:
    """A local path that names no folder is a FileNotFoundError saying so (not the Hub's "Repo id must be in the
    form ..." for a typo'd path); Hub ids pass."""
    text = os.fspath(name_or_path)
    if os.path.isdir(text):
        return
    if text.startswith("~") and os.path.isdir(os.path.expanduser(text)):
        raise FileNotFoundError(f"no such folder: {text!r} ('~' is not expanded here); give the full path: "
                                f"{os.path.expanduser(text)!r}.")
    if os.path.isfile(text):
        raise FileNotFoundError(f"{text!r} is a file, not a model folder; give the folder that holds {CONFIG_FILE} "
                                "and the weights (or a Hub id).")
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text):
        raise FileNotFoundError(f"no such folder: {text!r}. Check the path (a model folder holds {CONFIG_FILE} and "
                                "model.safetensors); a Hub model is given by its id, 'namespace/name'.")


def _local_folder(name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> Path | None:
    """The checkpoint's folder on disk (with ``subfolder``), or None for a Hub id."""
    text = os.fspath(name_or_path)
    if not os.path.isdir(text):
        return None
    return Path(text) / (hub_kwargs.get("subfolder") or "")


def _read_json(path: Path, what: str) -> dict:
    """`path`'s JSON object; missing, unreadable or not JSON: an error naming the file and what to do."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; the model folder has no {what}. Restore it (copy it from where "
                                "the model was saved, or save the model again).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read as JSON ({err}): the file is damaged (truncated?). Restore it (copy "
                         "it from where the model was saved, or save the model again).") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object: the file is damaged. Restore it "
                         "(copy it from where the model was saved, or save the model again).")
    return data


def load_config(name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> Any:
    """The checkpoint's config: a typo'd folder, a missing or damaged config.json and a malformed
    ``hf_transfer_cnn`` section are errors naming the folder, file or key."""
    from transformers import AutoConfig

    check_model_path(name_or_path)
    folder = _local_folder(name_or_path, hub_kwargs)
    if folder is not None:
        _read_json(folder / CONFIG_FILE, "config")
    config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    try:
        TransferMeta.of(config)
    except ValueError as err:
        where = folder / CONFIG_FILE if folder is not None else f"{name_or_path}'s {CONFIG_FILE}"
        raise ValueError(f"{where}: {err}") from err
    return config


# --- the weights ------------------------------------------------------------------------------------------------

def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def check_loading_info(model: Any, info: dict[str, Any], name_or_path: str | os.PathLike,
                       request: TaskRequest | None = None) -> None:
    """Refuse weights that do not fit the config (transformers' ``output_loading_info``): parameters the file lacks
    would stay randomly initialised, tensors it has beyond the config would be dropped, other shapes would be
    re-initialised. Only the classifier of a model about to get a new one (`request` replaces the head) may be off.
    """
    head = tuple(p for p in (model.arch.head, model.arch.head_dropout) if p)
    new_head = request is not None and request.replaces_head(model.head_spec)

    def ok(key: str) -> bool:
        return new_head and _under(key, head)

    missing = sorted(k for k in info.get("missing_keys") or () if not ok(k))
    unexpected = sorted(k for k in info.get("unexpected_keys") or () if not ok(k))
    mismatched = sorted(f"{k} (file {tuple(a)}, config {tuple(b)})"
                        for k, a, b in info.get("mismatched_keys") or () if not ok(k))
    problems = [f"{len(keys)} key(s) {what}: {_some(keys)}" for what, keys in (
        ("missing from the weights file (they would stay random)", missing),
        ("in the weights file that the config's model lacks (they would be dropped)", unexpected),
        ("with other shapes in the weights file than in the config's model", mismatched)) if keys]
    if not problems:
        return
    only_head = all(_under(k, head) for k in missing) and not unexpected and not mismatched
    hint = ("The file has no trained classifier for these classes: pass num_labels or id2label for a new head."
            if only_head else "The weights do not belong to this config.json (edited config, or files from "
            "different saves): restore the folder as it was saved, or save the model again.")
    raise ValueError(f"{name_or_path}: the weights do not fit its config.json; refusing to load a partly random "
                     "model. " + "; ".join(problems) + ". " + hint)


def _some(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


# --- the image processor ----------------------------------------------------------------------------------------

def _processor_file(name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> str | None:
    """Where the checkpoint's processor file is (downloaded for a Hub id), or None when it has none."""
    folder = _local_folder(name_or_path, hub_kwargs)
    if folder is not None:
        return next((str(folder / name) for name in _PROCESSOR_FILES if (folder / name).exists()), None)
    from transformers.utils import cached_file

    download = {k: hub_kwargs[k] for k in _DOWNLOAD_KWARGS if k in hub_kwargs}
    found = (cached_file(name_or_path, name, _raise_exceptions_for_missing_entries=False, **download)
             for name in _PROCESSOR_FILES)
    return next((path for path in found if path is not None), None)


def _read_processor(name_or_path: str | os.PathLike, path: str, hub_kwargs: dict[str, Any]) -> Any:
    """The processor `path` describes; an unreadable one is an error naming it."""
    from transformers import AutoImageProcessor

    _read_json(Path(path), "image processor")
    kwargs = {k: hub_kwargs[k] for k in (*_DOWNLOAD_KWARGS, "trust_remote_code") if k in hub_kwargs}
    try:  # the file by name: a timm folder's config.json would otherwise be read in its place
        return AutoImageProcessor.from_pretrained(name_or_path, image_processor_filename=PROCESSOR_FILE, **kwargs)
    except Exception as err:
        raise ValueError(f"{path} does not describe an image processor transformers can build ({err}). Restore the "
                         "file (copy it from where the model was saved, or save the model again).") from err


def _default_processor(model: Any, name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> Any:
    """The processor for a checkpoint without preprocessor_config.json: timm's from config.json, or the family's
    ImageNet default (logged); a folder saved by this package without its processor is an error."""
    where = _local_folder(name_or_path, hub_kwargs)
    where = where / PROCESSOR_FILE if where is not None else f"{PROCESSOR_FILE} in {name_or_path}"
    if getattr(model.config, CONFIG_KEY, None) is not None:
        raise FileNotFoundError(f"{where}: no such file, in a model saved by hf_transfer_cnn (its config.json has "
                                f"the {CONFIG_KEY} section): the preprocessing it was trained with (size, mean/std) is "
                                "lost, and defaults would give other predictions. Restore the file (copy it from where "
                                "the model was saved); for a model that never had one, write the one it was trained "
                                "with (`image_processor.save_pretrained(folder)`).")
    if getattr(model.config, "pretrained_cfg", None):  # a timm checkpoint: its preprocessing is in config.json
        from transformers import AutoImageProcessor

        kwargs = {k: hub_kwargs[k] for k in _DOWNLOAD_KWARGS if k in hub_kwargs}
        proc = AutoImageProcessor.from_pretrained(name_or_path, image_processor_filename=CONFIG_FILE, **kwargs)
        return timm_image_processor(proc) if getattr(proc, "image_mean", None) is None else proc
    size = int(model.meta.image_size or getattr(model.config, "image_size", None) or 224)
    logger.warning("%s has no %s: using the default %s preprocessing (ImageNet mean/std, %d px). If the checkpoint was "
                   "trained with other preprocessing, add its %s.", name_or_path, PROCESSOR_FILE,
                   model.config.model_type, size, PROCESSOR_FILE)
    return default_image_processor(model.config.model_type, size)


def _check_channel_stats(proc: Any, path: str, num_channels: int) -> None:
    """The checkpoint's mean/std must have one value per input channel (a single number applies to all)."""
    for name in ("image_mean", "image_std"):
        values = getattr(proc, name, None)
        if _count(values) in (None, num_channels):
            continue
        raise ValueError(f"{path}: {name} has {len(values)} values {list(values)}, but the model takes {num_channels} "
                         f"input channel(s): the processor does not belong to this model. Fix {name} there (one value "
                         "per channel), or restore the folder's own preprocessor_config.json.")


def load_image_processor(model: Any, name_or_path: Any, hub_kwargs: dict[str, Any]) -> Any:
    """The checkpoint's image processor, matched to `model`'s input channels.

    A checkpoint with a preprocessor_config.json gets exactly that: unreadable, or with mean/std for another number
    of channels, is an error naming it. Without one, see `_default_processor` (logged default, or an error for a
    folder this package saved)."""
    path = _processor_file(name_or_path, hub_kwargs)
    if path is None:
        proc = _default_processor(model, name_or_path, hub_kwargs)
    else:
        proc = _read_processor(name_or_path, path, hub_kwargs)
        if getattr(proc, "image_mean", None) is None and hasattr(proc, "data_config"):
            proc = timm_image_processor(proc)
        _check_channel_stats(proc, path, model.num_input_channels)
    if _count(getattr(proc, "image_mean", None)) not in (None, model.num_input_channels):  # a default: RGB values
        proc = adapt_image_processor(proc, num_channels=model.num_input_channels)
    return proc


def _count(values: Any) -> int | None:
    """How many per-channel values `values` holds; None for none or a single number (which applies to all)."""
    return None if values is None or isinstance(values, (int, float)) else len(values)
