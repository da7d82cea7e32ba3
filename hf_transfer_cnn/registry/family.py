"""Families: one registration per model family, holding every fact the package needs about it.

A `Family` names its stage map (`ArchSpec`), the model classes it defines (if any; registered with transformers'
Auto classes), and the checkpoints ``init``/``convert`` can write (`CheckpointSpec`: config values, torchvision
counterpart, state-dict mapping, processor quirk). The rest of the package reads these facts and never names a
family.

Adding a family is one file with one call::

    from hf_transfer_cnn import ArchSpec, Family, register_family

    register_family(Family(
        ArchSpec("my_cnn", stem=("stem",), stages="stages", first_conv="stem.0", pooler="pooler"),
        config_class=MyCNNConfig, model_class=MyCNNForImageClassification,  # only for a model type of your own
    ))

In this package that file is ``families/<name>.py`` (imported with the package); elsewhere it is any module
imported before the checkpoint is loaded. A model type transformers itself defines is never re-registered with the
Auto classes (transformers' own classes keep loading it), so for such types give the stage map only.

This module imports nothing else of the package except its sibling `arch`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any

from .arch import ArchSpec, get_arch, register_arch, supported_model_types

__all__ = ["Family", "CheckpointSpec", "register_family", "get_family", "model_class", "checkpoint_names",
           "get_checkpoint_spec", "UnknownArchError"]

logger = logging.getLogger(__name__)

StateDictMapper = Callable[[Mapping[str, Any], Any], dict[str, Any]]


class UnknownArchError(ValueError):
    """An ARCH name that `convert` / `init` do not know."""


@dataclass(frozen=True)
class CheckpointSpec:
    """One architecture name (as on the ``init``/``convert`` command line) and how to build or convert it."""

    name: str
    model_type: str
    """model_type of the checkpoint written (``resnet``, ``vgg``, ...)."""
    config_kwargs: dict = field(default_factory=dict)
    """Architecture-defining config values (depths, VGG depth/batch norm, ...)."""
    _: KW_ONLY
    head_weight: str | None = None
    """torchvision name of the output layer's weight (its rows = number of classes); None: not convertible."""
    hf_heads: tuple[str, ...] = ()
    """Output Linear layer(s) of the transformers model, replaced when the number of labels changes."""
    map_state_dict: StateDictMapper | None = None
    """torchvision parameter names -> the transformers model's (tensors are not copied)."""
    torchvision_kwargs: dict = field(default_factory=dict)
    """How torchvision builds the network its published weights belong to (GoogLeNet: ``transform_input``...)."""
    image_processor: Callable[[int, int], Any] | None = None
    """(image_size, num_channels) -> the family's processor, where it differs from torchvision's evaluation recipe."""
    default_image_size: int = 224
    default_num_channels: int = 3
    default_num_labels: int = 1000

    @property
    def convertible(self) -> bool:
        return self.head_weight is not None


@dataclass(frozen=True)
class Family:
    """Everything about one model family: its stage map, its classes and the checkpoints it can write."""

    arch: ArchSpec
    _: KW_ONLY
    config_class: type | None = None
    """A config class this package defines (registered with ``AutoConfig`` under ``arch.model_type``)."""
    model_class: type | None = None
    """Its ``*ForImageClassification`` class (registered with ``AutoModelForImageClassification``)."""
    base_model_class: type | None = None
    """Its headless model, registered with ``AutoModel`` when given."""
    checkpoints: tuple[CheckpointSpec, ...] = ()
    extra_classes: tuple[type, ...] = ()
    """Further classes found by name (`model_class`), e.g. torch-pickled models' base classes."""

    @property
    def model_type(self) -> str:
        return self.arch.model_type


_FAMILIES: dict[str, Family] = {}
_CLASSES: dict[str, type] = {}
_CHECKPOINTS: dict[str, CheckpointSpec] = {}


def register_family(family: Family, *, overwrite: bool = False) -> Family:
    """Register a family's stage map, classes (with transformers' Auto classes) and checkpoints.

    Registering the same family again (a module imported twice: equal facts, classes of the same names) refreshes
    it. Another family for a model type already registered is refused unless `overwrite` — a plugin never replaces
    a built-in family (or another plugin's) by accident.
    """
    current = _FAMILIES.get(family.model_type)
    if current is not None and not overwrite and _fingerprint(current) != _fingerprint(family):
        raise ValueError(f"model_type {family.model_type!r} is already registered ({_describe(current)}); "
                         f"register_family(..., overwrite=True) replaces it with {_describe(family)}.")
    arch_only = current is None and family.model_type in supported_model_types()  # by register_arch alone
    same_arch = arch_only and _arch_fingerprint(get_arch(family.model_type)) == _arch_fingerprint(family.arch)
    register_arch(family.arch, overwrite=overwrite or current is not None or same_arch)
    _FAMILIES[family.model_type] = family
    for cls in (family.config_class, family.model_class, family.base_model_class, *family.extra_classes):
        if cls is not None:
            _CLASSES[cls.__name__] = cls
    for spec in family.checkpoints:
        _CHECKPOINTS[spec.name] = spec
    if family.config_class is not None and family.model_class is not None:
        _register_auto_classes(family)
    return family


def _qualified(value: Any) -> Any:
    """A class or function by its qualified name (a module imported twice, or as a trust_remote_code copy under
    another module name, makes new objects of the same names); anything else as it is."""
    if callable(value) and hasattr(value, "__qualname__"):
        return value.__qualname__
    return value


def _arch_fingerprint(arch: ArchSpec) -> tuple:
    return tuple((f.name, _qualified(getattr(arch, f.name))) for f in fields(arch))


def _fingerprint(family: Family) -> tuple:
    """What tells two registrations of a model type apart: the stage map's facts, the classes' and the checkpoints'
    names."""
    classes = (family.config_class, family.model_class, family.base_model_class, *family.extra_classes)
    return (_arch_fingerprint(family.arch), tuple(_qualified(c) for c in classes),
            tuple(spec.name for spec in family.checkpoints))


def _describe(family: Family) -> str:
    cls = family.model_class or family.config_class
    if cls is not None:
        return f"model class {_qualified(cls)}"
    return f"a stage map with stem={family.arch.stem!r}, stages={family.arch.stages!r}"


def _register_auto_classes(family: Family) -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type, config_cls = family.model_type, family.config_class
    if model_type in CONFIG_MAPPING_NAMES:  # never shadow a model type transformers itself defines
        logger.warning("transformers defines a model type %r; hf-transfer-cnn's %s is not registered with the "
                       "Auto classes (load it with trust_remote_code=True).", model_type, config_cls.__name__)
        return
    # exist_ok: re-importing (or a remote-code copy registered first) must not fail
    AutoConfig.register(model_type, config_cls, exist_ok=True)
    AutoModelForImageClassification.register(config_cls, family.model_class, exist_ok=True)
    if family.base_model_class is not None:
        AutoModel.register(config_cls, family.base_model_class, exist_ok=True)
    # save_pretrained copies the (self-contained) defining module next to the weights, for trust_remote_code
    config_cls.register_for_auto_class("AutoConfig")


def get_family(model_type: str) -> Family | None:
    return _FAMILIES.get(model_type)


def model_class(name: str) -> type | None:
    """A class defined by a registered family, by class name (None if there is none)."""
    return _CLASSES.get(name)


def checkpoint_names(*, convertible: bool = False) -> list[str]:
    """The ARCH names ``init`` (or, with `convertible`, ``convert``) accepts, in registration order."""
    return [name for name, spec in _CHECKPOINTS.items() if spec.convertible or not convertible]


def get_checkpoint_spec(name: str, *, convertible: bool = False) -> CheckpointSpec:
    """The checkpoint entry for ARCH `name`, or an error listing the supported names."""
    spec = _CHECKPOINTS.get(name)
    if spec is None or (convertible and not spec.convertible):
        what = "convert from torchvision weights" if convertible else "initialise"
        hint = (f" ({name} has no torchvision weights; use `init {name}`.)"
                if spec is not None and convertible else "")
        raise UnknownArchError(f"Unknown ARCH {name!r}: hf-transfer-cnn can {what}: "
                               f"{', '.join(checkpoint_names(convertible=convertible))}.{hint}")
    return spec
