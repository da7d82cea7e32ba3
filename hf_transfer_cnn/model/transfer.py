"""TransferModel: a pretrained vision checkpoint, re-headed, input-adapted and frozen by stage.

`TransferModel.from_pretrained(...)` returns an instance of the checkpoint's own transformers class
(e.g. `ResNetForImageClassification`) extended with `TransferModel`: it is a real `PreTrainedModel`
with the native parameter names, so Trainer, `save_pretrained`, `push_to_hub` and — with the default
linear head — plain `AutoModelForImageClassification` all work on it unchanged.

`TransferModel` gathers its parts by concern: `SurgeryMixin` (surgery.py: head, channels, size), `ForwardMixin`
(forward.py) and `SavingMixin` (saving.py); loading's checks and look-ups are in loading.py. The ``Transfer<Native>``
classes are made here, and this module resolves them by name for unpickling.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from ..fastpath import FastOptions
from ..freezing import FreezeState, apply_freeze
from ..registry import ArchSpec, StageUnit, get_module, model_class, resolve_arch, stage_units
from .batchnorm import fix_tf_bn_momentum
from .forward import ForwardMixin
from .head import HeadSpec
from .loading import (TaskRequest, check_loading_info, load_config, load_image_processor, native_class_for,
                      split_hub_kwargs)
from .meta import TransferMeta
from .saving import SavingMixin
from .surgery import SurgeryMixin

logger = logging.getLogger(__name__)

__all__ = ["TransferModel", "transfer_class_for", "pick_native_class"]

# --- the model --------------------------------------------------------------------------------------

_CLASS_CACHE: dict[type, type] = {}


def transfer_class_for(native_cls: type) -> type:
    """``Transfer<Native>`` = TransferModel mixed into a transformers image-classification class."""
    if issubclass(native_cls, TransferModel):
        return native_cls
    if native_cls not in _CLASS_CACHE:
        _CLASS_CACHE[native_cls] = type(f"Transfer{native_cls.__name__}", (TransferModel, native_cls),
                                        {"__module__": __name__, "_native_class": native_cls})
    return _CLASS_CACHE[native_cls]


def pick_native_class(found: type | tuple[type, ...], config: PretrainedConfig) -> type:
    """One class where transformers maps a model type to several (DeiT: with and without its distillation head): the
    one ``config.architectures`` names, else the first (the plain classifier)."""
    if not isinstance(found, tuple):
        return found
    named = set(getattr(config, "architectures", None) or ())
    return next((c for c in found if c.__name__ in named), found[0])


def __getattr__(name: str) -> type:
    """Resolve ``Transfer<NativeClass>`` on demand, so pickled/torch.saved models load in a new process."""
    import transformers

    if name.startswith("Transfer") and name != "TransferModel":
        native = getattr(transformers, name[len("Transfer"):], None) or model_class(name[len("Transfer"):])
        if isinstance(native, type) and issubclass(native, PreTrainedModel):
            return transfer_class_for(native)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TransferModel(SurgeryMixin, ForwardMixin, SavingMixin, nn.Module):
    """Mixin (and factory) that turns a transformers vision classifier into a transfer-learning model.

    Use `TransferModel.from_pretrained(...)`; the result is an instance of ``Transfer<NativeClass>``.
    """

    _native_class: type | None = None
    accepts_loss_kwargs = False
    """Our loss is a per-batch mean: Trainer must scale it for gradient accumulation and DDP itself (without this,
    a forward with ``**kwargs`` makes Trainer 5.x skip that scaling)."""

    # -- construction ------------------------------------------------------------------------------

    def __init__(self, config, *args, **kwargs):
        meta = TransferMeta.of(config)
        if meta.backbone_config is not None:  # a saved adapter model: its config stated the input channels
            config.update(meta.backbone_config)
            meta = meta.updated(backbone_config=None)
            meta.write(config)
        super().__init__(config, *args, **kwargs)
        in_channels = meta.input_channels
        if in_channels is not None:  # stems that can't absorb a channel change keep a 1×1 adapter
            self.input_adapter = nn.Conv2d(in_channels, config.num_channels, 1, bias=False)
        head = HeadSpec.parse(meta.head)
        if head is not None and not head.is_native:
            self._install_head(head, config.num_labels)
        self.image_processor = None

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args,
        num_labels: int | None = None,
        id2label: dict | None = None,
        label2id: dict | None = None,
        num_channels: int | None = None,
        image_size: int | None = None,
        head: HeadSpec | dict | None = None,
        trainable_stages: int | str = 0,
        **kwargs,
    ) -> TransferModel:
        """Load a Hub id or local directory and adapt it for transfer learning.

        Args:
            num_labels / id2label / label2id: the new task's classes (id2label alone is enough). Giving any
                of them replaces the classifier with a freshly initialised one; the backbone is untouched. Labels
                equal to the checkpoint's own (same names, same ids) keep its trained classifier.
            num_channels: input channels (1 = grayscale); the first conv is adapted (see `adapt_conv_weight`).
            image_size: square input size; must be at least the architecture's minimum.
            head: `HeadSpec` / dict for a custom head (hidden_sizes, dropout, pooling avg|max|concat).
            trainable_stages: 0 = feature extraction, N = top-N stages train, "all" = everything trains.
            **kwargs: passed to transformers' `from_pretrained` (revision, token, cache_dir, ...).
        """
        hub_kwargs = split_hub_kwargs(kwargs)
        config = load_config(pretrained_model_name_or_path, hub_kwargs)
        request = TaskRequest.parse(config, num_labels=num_labels, id2label=id2label, label2id=label2id,
                                    num_channels=num_channels, image_size=image_size, head=head)
        target_cls = cls if cls is not TransferModel else transfer_class_for(pick_native_class(native_class_for(config),
                                                                                                config))
        model = target_cls._load_weights(pretrained_model_name_or_path, model_args, config, hub_kwargs, request)
        model._finish_loading(pretrained_model_name_or_path, hub_kwargs)
        model._adapt_to(request)
        model.freeze(trainable_stages)
        return model

    @classmethod
    def _load_weights(cls, name_or_path: str | os.PathLike, model_args: tuple, config: PretrainedConfig,
                      hub_kwargs: dict, request: TaskRequest) -> TransferModel:
        """The native class's loader, building this class; a checkpoint without weights, or with weights that do not
        fit its config, is an error saying what to do instead."""
        try:
            model, info = super().from_pretrained(name_or_path, *model_args, config=config, output_loading_info=True,
                                                  ignore_mismatched_sizes=True, **hub_kwargs)
        except OSError as err:
            raise OSError(
                f"Could not load weights for {str(name_or_path)!r}: {err}\nA TransferModel needs a checkpoint with "
                "weights (model.safetensors). Pass a directory written by `save_pretrained`, a Hub id, or build one "
                "with `hf-transfer-cnn init/convert`."
            ) from err
        check_loading_info(model, info, name_or_path, request)
        return model

    def _finish_loading(self, name_or_path: str | os.PathLike, hub_kwargs: dict) -> None:
        """BatchNorm momentum in PyTorch's convention, the image processor, and where the model came from."""
        fix_tf_bn_momentum(self)  # 1 - x, or the momentum `convert_torchvision` recorded in the config
        self.image_processor = load_image_processor(self, name_or_path, hub_kwargs)
        if self.meta.base_model is None:
            self._set_meta(base_model=str(name_or_path))

    # -- facts -----------------------------------------------------------------------------------------

    @property
    def arch(self) -> ArchSpec:
        return resolve_arch(self)  # per-instance for model types with a resolver (timm)

    @property
    def meta(self) -> TransferMeta:
        """What this model records about itself (the config's ``hf_transfer_cnn`` section)."""
        return TransferMeta.of(self.config)

    def _set_meta(self, **updates) -> None:
        self.meta.updated(**updates).write(self.config)

    def stage_units(self) -> list[StageUnit]:
        return stage_units(self, self.arch)

    @property
    def stage_names(self) -> list[str]:
        """Freezable stages, input to output: ``["stem", "stage1", ...]``."""
        return [u.name for u in self.stage_units()]

    @property
    def num_input_channels(self) -> int:
        arch = self.arch  # resolving a per-instance layout (timm) records num_channels in the config
        return int(self.meta.input_channels or getattr(self.config, "num_channels", None)
                   or get_module(self, arch.first_conv).in_channels)

    @property
    def head_spec(self) -> HeadSpec:
        return HeadSpec.parse(self.meta.head) or HeadSpec()

    @property
    def freeze_state(self) -> FreezeState | None:
        """What `freeze` last applied (None before the first freeze); it also holds the `FastOptions` in use.

        `freezing.apply_freeze` stores it on the model as ``hf_transfer_freeze_state``; read it here."""
        return getattr(self, "hf_transfer_freeze_state", None)

    # -- freezing ------------------------------------------------------------------------------------------

    def freeze(self, trainable_stages: int | str = 0, keep_requires_grad: Iterable[str] = (),
               fast: FastOptions | None = None) -> FreezeState:
        """Keras-style: freeze the backbone except the top `trainable_stages` stages (or "all").

        `keep_requires_grad` (used by FreezeScheduler) names frozen stages whose parameters stay registered with
        autograd for a later unfreeze; they still get no gradient while frozen. `fast` chooses how frozen
        stages execute (`FastOptions`; by default BN-folded channels_last inference copies).
        """
        state = apply_freeze(self, self.stage_units(), trainable_stages, keep_requires_grad, fast)
        self._set_meta(trainable_stages=state.trainable_stages)
        return state

    def unfreeze(self) -> FreezeState:
        """Make every stage trainable (same as ``freeze("all")``)."""
        return self.freeze("all")
