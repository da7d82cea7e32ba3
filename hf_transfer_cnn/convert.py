"""torchvision weights -> Hub-ready checkpoints (``convert``), and randomly initialised checkpoints (``init``).

A checkpoint directory holds ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` (plus, for
the families defined in this package, their self-contained modeling file for ``trust_remote_code``). It is written
to a temporary directory and moved into place only when complete, so a failed run leaves nothing behind.
``overwrite`` replaces a previous checkpoint's files only: a directory holding anything else is refused, never
emptied.

Every conversion is checked numerically before it is written: the converted model and torchvision's model,
sharing the same tensors, must give the same logits on a random input.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

from .model import CONFIG_KEY, tf_style_batchnorms
from .processing import torchvision_eval_processor
from .registry import (CheckpointSpec, UnknownArchError, checkpoint_names, get_arch, get_checkpoint_spec, get_module,
                       set_module)
from .validation import check_positive_int

logger = logging.getLogger(__name__)

__all__ = ["ConversionError", "UnknownArchError", "convert_torchvision", "init_checkpoint",
           "load_torchvision_state_dict", "convertible_archs", "init_archs"]

_VERIFY_TOLERANCE = 1e-5


class ConversionError(ValueError):
    """The weights cannot be converted (unreadable file, wrong architecture, inexact result)."""


def convertible_archs() -> list[str]:
    """The ARCH names `convert_torchvision` accepts."""
    return checkpoint_names(convertible=True)


def init_archs() -> list[str]:
    """The ARCH names `init_checkpoint` accepts."""
    return checkpoint_names()


# --- what a checkpoint spec builds ------------------------------------------------------------------------------

def make_config(spec: CheckpointSpec, num_labels: int | None = None, num_channels: int | None = None,
                image_size: int | None = None, **family_kwargs) -> PreTrainedConfig:
    """The transformers config for this architecture (labels ``LABEL_i`` unless given later)."""
    kwargs = dict(spec.config_kwargs, **family_kwargs)
    kwargs.update(num_labels=num_labels or spec.default_num_labels,
                  num_channels=num_channels or spec.default_num_channels,
                  image_size=image_size or spec.default_image_size)
    return AutoConfig.for_model(spec.model_type, **kwargs)


def torchvision_model(spec: CheckpointSpec, num_classes: int = 1000, **kwargs) -> nn.Module:
    """The torchvision network these weights belong to, built as torchvision builds it for its published weights."""
    if not spec.convertible:
        raise UnknownArchError(f"{spec.name!r} has no torchvision counterpart to convert from.")
    import torchvision

    return torchvision.models.get_model(spec.name, weights=None, num_classes=num_classes,
                                        **{**spec.torchvision_kwargs, **kwargs})


def image_processor(spec: CheckpointSpec, image_size: int | None = None, num_channels: int | None = None):
    """The family's processor, else torchvision's evaluation preprocessing (resize to size/0.875, centre crop,
    ImageNet mean/std)."""
    size, channels = image_size or spec.default_image_size, num_channels or spec.default_num_channels
    build = spec.image_processor or torchvision_eval_processor
    return build(size, channels)


def imagenet_labels(spec: CheckpointSpec) -> list[str]:
    """The 1000 ImageNet class names torchvision ships with its weights (no download)."""
    import torchvision

    name = spec.name if spec.convertible else "resnet18"
    return list(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])


# --- reading weights ------------------------------------------------------------------------------------------

def load_torchvision_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torchvision-format state dict (``torch.save(model.state_dict(), path)``) safely (``weights_only``).

    Also accepted: a training checkpoint holding it under ``"state_dict"`` or ``"model"``, and DDP's
    ``module.`` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Weights file {str(path)!r} does not exist (or is not a file).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt/non-torch files
        raise ConversionError(
            f"Could not read {str(path)!r} as PyTorch weights ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "Pass a torchvision-format state dict saved with torch.save(model.state_dict(), path)."
        ) from err
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping) and not isinstance(obj.get(key), torch.Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(
            f"{str(path)!r} does not contain a state dict (a mapping of parameter names to tensors); it holds a "
            f"{type(obj).__name__}. Save the weights with torch.save(model.state_dict(), path)."
        )
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _num_classes(info: CheckpointSpec, sd: Mapping[str, torch.Tensor]) -> int:
    w = sd.get(info.head_weight)
    return int(w.shape[0]) if w is not None and w.dim() == 2 else 1000


def _reference(info: CheckpointSpec, sd: Mapping[str, torch.Tensor], transform_input: bool | None) -> nn.Module:
    """torchvision's model for these weights, on the meta device (no memory, no initialisation)."""
    kwargs = {}
    if info.name == "googlenet":
        kwargs["aux_logits"] = any(k.startswith("aux1.") for k in sd)
        kwargs["transform_input"] = True if transform_input is None else transform_input
    with torch.device("meta"):
        return torchvision_model(info, num_classes=_num_classes(info, sd), **kwargs)


def _mismatch(expected: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> list[str]:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs expected {tuple(expected[k].shape)}"
              for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    return problems


def _matching_archs(sd: Mapping[str, torch.Tensor]) -> list[str]:
    found = []
    for name in convertible_archs():
        info = get_checkpoint_spec(name)
        if not _mismatch(_reference(info, sd, None).state_dict(), sd):
            found.append(info.name)
    return found


def _check_weights(info: CheckpointSpec, sd: Mapping[str, torch.Tensor], ref: nn.Module, source: str) -> None:
    problems = _mismatch(ref.state_dict(), sd)
    if problems:
        guess = [a for a in _matching_archs(sd) if a != info.name]
        hint = (f" These weights match {' / '.join(guess)}: run `hf-transfer-cnn convert {guess[0]} ...`."
                if guess else " Check that ARCH names the architecture the weights were trained with.")
        raise ConversionError(f"{source} does not hold torchvision {info.name} weights: {'; '.join(problems)}.{hint}")


# --- conversion ------------------------------------------------------------------------------------------------

def _verify(info: CheckpointSpec, hf_model: nn.Module, ref: nn.Module) -> None:
    """Both models (sharing their tensors) must give the same logits on a random 64-px batch, or nothing is written."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref.eval()(x)
        got = hf_model.eval()(pixel_values=x).logits
    diff = (got - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    if not diff <= _VERIFY_TOLERANCE * scale:
        raise ConversionError(f"The converted {info.name} does not reproduce torchvision's logits (max difference "
                              f"{diff:.3g}); nothing was written. Please report this as a bug.")


def _reset_heads(info: CheckpointSpec, model: PreTrainedModel, num_labels: int) -> None:
    """Fresh output layer(s) for `num_labels` classes (the model's own initialisation); the rest is untouched."""
    paths = list(info.hf_heads)
    if info.model_type == "googlenet" and model.config.aux_logits:
        paths += ["googlenet.aux1.fc2", "googlenet.aux2.fc2"]
        model.config.aux_num_labels = num_labels
    for path in paths:
        old = get_module(model, path)
        new = nn.Linear(old.in_features, num_labels)
        model._init_weights(new)
        set_module(model, path, new)
    model.config.num_labels = num_labels
    model.num_labels = num_labels


def _set_labels(model: PreTrainedModel, labels: list[str] | None) -> None:
    n = model.config.num_labels
    names = labels if labels is not None and len(labels) == n else [f"LABEL_{i}" for i in range(n)]
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)} if len(set(names)) == n else None


def convert_torchvision(
    arch: str,
    weights_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_labels: int | None = None,
    *,
    transform_input: bool | None = None,
    drop_aux_classifiers: bool = False,
    overwrite: bool = False,
    push_to_hub: str | None = None,
) -> Path:
    """Convert a torchvision state dict (``.pth``) of `arch` into a checkpoint directory; returns its path.

    Args:
        arch: one of `CONVERTIBLE_ARCHS` (alexnet, googlenet, vgg11 ... vgg19_bn, resnet18 ... resnet152,
            mobilenet_v2).
        num_labels: None keeps the weights' classifier (1000 classes -> ImageNet label names). A different
            number keeps the backbone and gives a freshly initialised classifier with ``LABEL_i`` names.
        transform_input: GoogLeNet only: whether the weights expect torchvision's input transform (default True,
            as torchvision's published weights do).
        drop_aux_classifiers: GoogLeNet only: leave out the auxiliary classifiers even if the file has them.
        overwrite: replace the checkpoint in a non-empty `output_dir` (refused if it holds other files).
        push_to_hub: also upload the directory to this Hub repo id.
    """
    info = get_checkpoint_spec(arch, convertible=True)
    if info.name != "googlenet" and (transform_input is not None or drop_aux_classifiers):
        raise ValueError("transform_input / drop_aux_classifiers apply to googlenet only.")
    output_dir = _check_output(output_dir, overwrite)
    check_positive_int("num_labels", num_labels, optional=True)
    sd = load_torchvision_state_dict(weights_path)
    ref = _reference(info, sd, transform_input)
    _check_weights(info, sd, ref, repr(str(weights_path)))
    sd = {k: sd[k] for k in ref.state_dict()}  # torchvision's order (MobileNetV2 maps in order)
    ref.load_state_dict(sd, assign=True)

    file_classes = _num_classes(info, sd)
    family = {}
    if info.name == "googlenet":
        family = dict(aux_logits=bool(ref.aux_logits), transform_input=bool(ref.transform_input))
    config = make_config(info, num_labels=file_classes, **family)
    cls = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(config)]
    with torch.device("meta"):
        model = cls(config)
    try:
        model.load_state_dict(info.map_state_dict(sd, model), strict=True, assign=True)
    except (RuntimeError, ValueError) as err:
        raise ConversionError(f"Could not map {info.name} weights onto {cls.__name__}: {err}") from err
    _verify(info, model, ref)

    if info.name == "googlenet" and drop_aux_classifiers and config.aux_logits:
        model.googlenet.aux1 = model.googlenet.aux2 = None
        model.googlenet.aux_logits = False
        config.aux_logits, config.aux_num_labels = False, None
    if num_labels is not None and num_labels != file_classes:
        _reset_heads(info, model, num_labels)
        logger.info("%s: new %d-label classifier (the weights have %d classes).", info.name, num_labels, file_classes)
    _set_labels(model, imagenet_labels(info) if model.config.num_labels == 1000 == file_classes else None)
    if tf_style_batchnorms(model):  # a TensorFlow-style port (MobileNetV2) of weights trained with PyTorch's 0.1
        model.config.update({CONFIG_KEY: {"batch_norm_momentum": 0.1}})
    processor = image_processor(info)
    _write(output_dir, model, processor, overwrite)
    if push_to_hub:
        _push(output_dir, push_to_hub)
    return output_dir


def init_checkpoint(
    arch: str,
    output_dir: str | os.PathLike,
    num_labels: int | None = None,
    num_channels: int | None = None,
    image_size: int | None = None,
    *,
    seed: int | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
) -> Path:
    """Write a randomly initialised checkpoint of `arch` (any of `INIT_ARCHS`, lenet5 included); returns its path.

    Defaults: 1000 labels, 3 channels, 224 px (LeNet-5: 10 labels, 1 channel, 32 px).
    """
    info = get_checkpoint_spec(arch)
    output_dir = _check_output(output_dir, overwrite)
    for name, value in (("num_labels", num_labels), ("num_channels", num_channels), ("image_size", image_size)):
        check_positive_int(name, value, optional=True)
    minimum = get_arch(info.model_type).min_image_size
    if image_size is not None and image_size < minimum:
        raise ValueError(f"image_size={image_size} is below the minimum of {minimum} px for {arch}.")
    config = make_config(info, num_labels=num_labels, num_channels=num_channels, image_size=image_size)
    if seed is not None:
        torch.manual_seed(seed)
    model = AutoModelForImageClassification.from_config(config)
    _set_labels(model, None)
    processor = image_processor(info, image_size=image_size, num_channels=num_channels)
    _write(output_dir, model, processor, overwrite)
    if push_to_hub:
        _push(output_dir, push_to_hub)
    return output_dir


def _push(output_dir: Path, repo_id: str) -> None:
    from .hub import push_output_dir  # HubPushError on failure: the written directory stays, with a retry hint

    push_output_dir(output_dir, repo_id, commit_message="Upload checkpoint written by hf-transfer-cnn")


# --- writing -----------------------------------------------------------------------------------------------------

_TMP_PREFIX = ".hf-transfer-cnn-tmp-"
_CHECKPOINT_FILES = frozenset({
    "config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "pytorch_model.bin.index.json", "preprocessor_config.json", "README.md", ".gitattributes"})
_CHECKPOINT_PATTERNS = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")


def _checkpoint_file_names(out: Path) -> frozenset[str]:
    """What a checkpoint directory holds: transformers' files, a model card, our families' modeling files, and the
    code files its own config.json names in ``auto_map`` (e.g. a plugin family's modeling file)."""
    from .families import modeling

    family_code = {p.name for p in Path(modeling.__file__).parent.glob("*.py") if p.name != "__init__.py"}
    try:
        auto_map = json.loads((out / "config.json").read_text()).get("auto_map") or {}
        refs = [r for v in auto_map.values() for r in (v if isinstance(v, (list, tuple)) else [v])]
    except (OSError, ValueError, AttributeError):  # no (readable) config.json: nothing more is a checkpoint's
        refs = []
    named = {r.split("--")[-1].rsplit(".", 1)[0] + ".py" for r in refs if isinstance(r, str) and "." in r}
    return _CHECKPOINT_FILES | family_code | named


def _is_checkpoint_file(entry: Path, names: frozenset[str]) -> bool:
    if entry.name.startswith(_TMP_PREFIX):  # left behind by an interrupted run of ours
        return entry.is_dir()
    return entry.is_file() and (entry.name in names or any(fnmatch.fnmatch(entry.name, p)
                                                           for p in _CHECKPOINT_PATTERNS))


def _check_output(output_dir: str | os.PathLike, overwrite: bool, own: Path | None = None) -> Path:
    """The absolute output path, checked: a new or empty directory, or with `overwrite` one that holds nothing but
    a previous checkpoint's files (anything else is refused, never deleted). `own`: our temporary directory in it."""
    out = Path(os.path.abspath(os.path.expanduser(os.fspath(output_dir))))
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"Output {str(out)!r} exists and is not a directory.")
    if not out.is_dir() or not any(p != own for p in out.iterdir()):
        return out
    if not overwrite:
        raise FileExistsError(f"Output directory {str(out)!r} is not empty; choose another one or pass "
                              "overwrite=True (--overwrite) to replace the checkpoint in it.")
    names = _checkpoint_file_names(out)
    unexpected = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()
                        if p != own and not _is_checkpoint_file(p, names))
    if unexpected:
        more = f" (+{len(unexpected) - 20} more)" if len(unexpected) > 20 else ""
        raise FileExistsError(
            f"Output directory {str(out)!r} holds files that are not part of a checkpoint: {unexpected[:20]}{more}. "
            f"--overwrite only replaces a previous checkpoint's files ({', '.join(sorted(_CHECKPOINT_FILES))}, the "
            "family's modeling .py); nothing was changed. Choose another (new or empty) directory, or move those "
            "files away.")
    return out


def _umask_mode(mode: int) -> int:
    """`mode` less the process umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _write(output_dir: Path, model: PreTrainedModel, processor, overwrite: bool) -> None:
    """Save into a temporary directory, then move it into place (nothing half-written on failure).

    A new directory is renamed into place whole; into an existing one (possibly the current directory, which is
    never renamed) the new files are moved one by one, then the previous checkpoint's other files are removed.
    """
    existing = output_dir.is_dir()
    parent = output_dir if existing else output_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX if existing else f".{output_dir.name}.tmp-", dir=parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tmp.chmod(_umask_mode(0o777))  # mkdtemp makes it 0700: the folder follows the umask, as mkdir would
        if not existing:
            if output_dir.exists():
                raise FileExistsError(f"Output directory {str(output_dir)!r} appeared while converting; not "
                                      "replaced.")
            tmp.rename(output_dir)
            return
        _check_output(output_dir, overwrite, own=tmp)  # again: files may have appeared meanwhile
        written = sorted(p.name for p in tmp.iterdir())
        for name in written:
            os.replace(tmp / name, output_dir / name)
        for old in output_dir.iterdir():  # only a previous checkpoint's files can be left (checked above)
            if old.name in written or old == tmp:
                continue
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
