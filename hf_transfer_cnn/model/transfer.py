"""TransferModel: a pretrained vision checkpoint, re-headed, input-adapted and frozen by stage.

`TransferModel.from_pretrained(...)` returns an instance of the checkpoint's own transformers class
(e.g. `ResNetForImageClassification`) extended with `TransferModel`: it is a real `PreTrainedModel`
with the native parameter names, so Trainer, `save_pretrained`, `push_to_hub` and — with the default
linear head — plain `AutoModelForImageClassification` all work on it unchanged.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from ..fastpath import FastOptions, run_frozen_prefix
from ..freezing import FreezeState, apply_freeze
from ..processing import adapt_image_processor, default_image_processor, timm_image_processor
from ..registry import (ArchSpec, StageUnit, get_arch, get_module, in_transformers, model_class, resolve_arch,
                        set_module, stage_units)
from .batchnorm import fix_tf_bn_momentum
from .channels import adapt_conv_weight, adapter_weight
from .head import ClassificationHead, HeadSpec, last_linear_path
from .labels import normalise_labels
from .meta import TransferMeta

logger = logging.getLogger(__name__)

__all__ = ["TransferModel", "transfer_class_for"]


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


def __getattr__(name: str) -> type:
    """Resolve ``Transfer<NativeClass>`` on demand, so pickled/torch.saved models load in a new process."""
    import transformers

    if name.startswith("Transfer") and name != "TransferModel":
        native = getattr(transformers, name[len("Transfer"):], None) or model_class(name[len("Transfer"):])
        if isinstance(native, type) and issubclass(native, PreTrainedModel):
            return transfer_class_for(native)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _native_class_for(config) -> type:
    from transformers import AutoModelForImageClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    get_arch(config.model_type)  # registry check first: clear error for unsupported types
    if type(config) in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        return MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(config)]
    auto_map = getattr(AutoModelForImageClassification, "_model_mapping", {})
    if type(config) in auto_map:
        return auto_map[type(config)]
    raise ValueError(f"No image-classification model class is registered for model_type {config.model_type!r}.")


class TransferModel(nn.Module):
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
        hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _HUB_KWARGS}
        if kwargs:
            raise TypeError(f"Unexpected argument(s) {sorted(kwargs)} for TransferModel.from_pretrained.")
        config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        spec = get_arch(config.model_type)
        names_given = id2label is not None or label2id is not None
        num_labels, id2label, label2id = normalise_labels(num_labels, id2label, label2id)
        if num_channels is not None and (isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1):
            raise ValueError(f"num_channels={num_channels!r}; use a positive integer (1 = grayscale, 3 = RGB).")
        minimum = spec.min_size(config)
        if image_size is not None and (not isinstance(image_size, int) or image_size < minimum):
            raise ValueError(
                f"image_size={image_size} is below the minimum of {minimum} px for "
                f"{config.model_type!r}; use image_size >= {minimum} (upscale small images)."
            )
        head_spec = HeadSpec.parse(head)

        target_cls = cls if cls is not TransferModel else transfer_class_for(_native_class_for(config))
        try:
            model = super(TransferModel, target_cls).from_pretrained(
                pretrained_model_name_or_path, *model_args, config=config, **hub_kwargs)
        except OSError as err:
            raise OSError(
                f"Could not load weights for {str(pretrained_model_name_or_path)!r}: {err}\nA TransferModel needs a "
                "checkpoint with weights (model.safetensors). Pass a directory written by `save_pretrained`, a "
                "Hub id, or build one with `hf-transfer-cnn init/convert`."
            ) from err

        fix_tf_bn_momentum(model)  # 1 - x, or the momentum `convert_torchvision` recorded in the config
        model.image_processor = model._load_processor(pretrained_model_name_or_path, hub_kwargs)
        if model.meta.base_model is None:
            model._set_meta(base_model=str(pretrained_model_name_or_path))
        own = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
        keep_head = names_given and id2label == own and (head_spec is None or head_spec == model.head_spec)
        if keep_head:  # e.g. continuing to train a fine-tuned model on its own classes
            logger.info("id2label equals the checkpoint's own labels: keeping its trained head "
                        "(model.set_head(...) gives a fresh one).")
        elif num_labels is not None or (head_spec is not None and head_spec != model.head_spec):
            model.set_head(num_labels or model.config.num_labels, id2label=id2label, head=head_spec)
        if num_channels is not None and num_channels != model.num_input_channels:
            model.set_num_channels(num_channels)
        if image_size is not None:
            model.set_image_size(image_size)
        model.freeze(trainable_stages)
        return model

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
        # configs without num_channels (TimmWrapper): the first conv's input channels
        return int(self.meta.input_channels or getattr(self.config, "num_channels", None)
                   or get_module(self, self.arch.first_conv).in_channels)

    @property
    def head_spec(self) -> HeadSpec:
        return HeadSpec.parse(self.meta.head) or HeadSpec()

    @property
    def freeze_state(self) -> FreezeState | None:
        return getattr(self, "hf_transfer_freeze_state", None)

    # -- surgery -----------------------------------------------------------------------------------------

    def _feature_dim(self, pooling: str = "avg") -> int:
        """Width of the pooled features the classifier sees (recorded in the config once known)."""
        if self.meta.feature_dim is None:
            head = get_module(self, self.arch.head)
            first = next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
            if first is None or isinstance(head, ClassificationHead):
                first = None
            self._set_meta(feature_dim=first.in_features if first is not None else self._probe_channels())
        meta = self.meta
        if pooling == "avg":
            return int(meta.feature_dim)
        if meta.channels_dim is None:
            channels = meta.feature_dim if self.arch.head_style != "mlp" else self._probe_channels()
            self._set_meta(channels_dim=channels)
            meta = self.meta
        return int(meta.channels_dim) * (2 if pooling == "concat" else 1)

    def _probe_channels(self) -> int:
        size = max(self.arch.min_size(self.config), int(self.meta.image_size or 0))
        p = next(self.parameters())
        was_training = self.training
        self.eval()
        with torch.no_grad():
            g = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(3, self.num_input_channels, size, size, generator=g).to(device=p.device, dtype=p.dtype)
            channels = self.forward_features(x).shape[1]
        self.train(was_training)
        return int(channels)

    def _install_head(self, spec: HeadSpec, num_labels: int) -> None:
        set_module(self, self.arch.head, ClassificationHead(self._feature_dim(spec.pooling), num_labels, spec))

    def set_head(self, num_labels: int, id2label: dict | None = None, head: HeadSpec | dict | None = None) -> None:
        """Replace the classifier with a freshly initialised one for `num_labels` classes.

        `head=None` keeps the current layout (native, or the custom head the model already has). A plain
        `HeadSpec()` / ``{}`` means the native layout (plain transformers can load the result); for MLP classifiers
        (AlexNet, VGG) that replaces only the last Linear. Any other `HeadSpec` replaces the whole classifier.
        """
        num_labels, id2label, label2id = normalise_labels(num_labels, id2label, None)
        spec = HeadSpec.parse(head) if head is not None else self.head_spec  # None: keep the current layout
        arch = self.arch
        if spec.is_native and isinstance(get_module(self, arch.head), ClassificationHead) and arch.head_style == "mlp":
            raise ValueError(
                f"This {self.config.model_type} model has a custom head; its original classifier MLP cannot be rebuilt. "
                "Pass head=... to replace the custom head, or load the base checkpoint again for the native one."
            )
        ref = next(self.parameters())
        if spec.is_native:
            in_features = self._feature_dim()
            old = get_module(self, arch.head)
            if arch.head_style == "mlp":
                path = last_linear_path(old)
                set_module(old, path, nn.Linear(get_module(old, path).in_features, num_labels))
            elif arch.head_style == "flatten_linear":
                set_module(self, arch.head, nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_labels)))
            else:
                set_module(self, arch.head, nn.Linear(in_features, num_labels))
        else:
            self._install_head(spec, num_labels)
        get_module(self, arch.head).to(device=ref.device, dtype=ref.dtype)
        self.config.num_labels = num_labels
        self.config.id2label = id2label
        self.config.label2id = label2id
        if hasattr(self.config, "label_names"):  # TimmWrapperConfig saves these in place of id2label
            self.config.label_names = [id2label[i] for i in range(num_labels)]
        self.config.problem_type = None  # re-inferred from the new labels (a stale one would pick the wrong loss)
        self.num_labels = num_labels
        self._set_meta(head=None if spec.is_native else spec.to_dict())

    def set_num_channels(self, num_channels: int) -> None:
        """Adapt the stem to `num_channels` input channels (rule: `adapt_conv_weight`)."""
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels={num_channels!r}; use a positive integer (1 = grayscale, 3 = RGB).")
        arch = self.arch
        ref = next(self.parameters())
        if arch.standardized_stem:
            backbone_channels = self.config.num_channels
            if num_channels == backbone_channels:
                self.__dict__.get("_modules", {}).pop("input_adapter", None)
                self._set_meta(input_channels=None)
            else:
                adapter = nn.Conv2d(num_channels, backbone_channels, 1, bias=False).to(device=ref.device, dtype=ref.dtype)
                with torch.no_grad():
                    adapter.weight.copy_(adapter_weight(num_channels, backbone_channels, ref.dtype, ref.device))
                self.input_adapter = adapter
                self._set_meta(input_channels=num_channels)
        else:
            conv = get_module(self, arch.first_conv)
            with torch.no_grad():
                conv.weight = nn.Parameter(adapt_conv_weight(conv.weight.detach(), num_channels),
                                           requires_grad=conv.weight.requires_grad)
            conv.in_channels = num_channels
            for path in arch.stem:
                for m in get_module(self, path).modules():
                    if isinstance(getattr(m, "num_channels", None), int):
                        m.num_channels = num_channels
            self.config.num_channels = num_channels
        if self.image_processor is not None:
            self.image_processor = adapt_image_processor(self.image_processor, num_channels=num_channels)
        if num_channels > 3:
            logger.info("Channels beyond RGB start with zero weights; they carry signal once the stem trains.")
        if self.freeze_state is not None:
            self.freeze(self.freeze_state.trainable_stages)

    def set_image_size(self, image_size: int) -> None:
        """Set the input size (config and image processor); it must be at least the architecture minimum."""
        minimum = self.arch.min_size(self.config)
        if not isinstance(image_size, int) or image_size < minimum:
            raise ValueError(
                f"image_size={image_size} is below the minimum of {minimum} px for {self.config.model_type!r}; "
                f"use image_size >= {minimum} (upscale small images)."
            )
        if hasattr(self.config, "image_size"):
            self.config.image_size = image_size
        self._set_meta(image_size=image_size)
        if self.image_processor is not None:
            self.image_processor = adapt_image_processor(self.image_processor, image_size=image_size)

    def _load_processor(self, name_or_path, hub_kwargs):
        from transformers import AutoImageProcessor

        try:
            proc = AutoImageProcessor.from_pretrained(name_or_path, **hub_kwargs)
        except (OSError, ValueError, KeyError):
            size = self.meta.image_size or getattr(self.config, "image_size", None) or 224
            proc = default_image_processor(self.config.model_type, int(size))
        if getattr(proc, "image_mean", None) is None and hasattr(proc, "data_config"):
            proc = timm_image_processor(proc)
        if len(proc.image_mean or ()) != self.num_input_channels:
            proc = adapt_image_processor(proc, num_channels=self.num_input_channels)
        return proc

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

    # -- forward -------------------------------------------------------------------------------------------

    def _check_input(self, pixel_values: torch.Tensor) -> None:
        if pixel_values is None:
            raise ValueError("pixel_values is required.")
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be [batch, channels, height, width], got shape {tuple(pixel_values.shape)}.")
        c, h, w = pixel_values.shape[1:]
        if c != self.num_input_channels:
            raise ValueError(
                f"pixel_values has {c} channels but the model expects {self.num_input_channels}; convert the images "
                f"(the model's image_processor does) or adapt the model with num_channels={c}."
            )
        minimum = self.arch.min_size(self.config)
        if min(h, w) < minimum:
            raise ValueError(f"Input {h}x{w} is smaller than the minimum {minimum}x{minimum} for {self.config.model_type!r}.")

    def forward_features(self, pixel_values: torch.Tensor, output_hidden_states: bool = False,
                         start: int = 0) -> Any:
        """Run stage units ``start..end`` (and the neck); returns the final feature map.

        `start` > 0 feeds `pixel_values` as the output of unit ``start - 1``. Without hidden states, the frozen
        prefix runs as one inference graph where possible (`freezing.run_frozen_prefix`).
        """
        hidden = []
        x = pixel_values
        units = self.stage_units()
        arch = self.arch
        tail = len(arch.neck) + len(arch.post_pool)
        neck_done = False
        if start == 0 and not output_hidden_states:
            state = self.freeze_state
            n_frozen = len(units) - state.trainable_stages if state is not None else 0
            if n_frozen:
                mods = [m for u in units[:n_frozen] for m in u.modules]
                if n_frozen == len(units):  # everything frozen: the neck too (post-pool modules run after pooling)
                    mods = mods[: len(mods) - len(arch.post_pool)] if arch.post_pool else mods
                out = run_frozen_prefix(self, mods, x)
                if out is not None:
                    x, start, neck_done = out, n_frozen, n_frozen == len(units)
        for unit in units[start:]:
            mods = unit.modules[: len(unit.modules) - tail] if unit is units[-1] and tail else unit.modules
            for m in mods:
                x = m(x)
            if output_hidden_states:
                hidden.append(x)
        if not neck_done:
            for path in arch.neck:
                x = get_module(self, path)(x)
        return (x, tuple(hidden)) if output_hidden_states else x

    def _pool(self, x: torch.Tensor, spec: HeadSpec) -> torch.Tensor:
        arch = self.arch
        if spec.pooling == "avg":
            pooled = get_module(self, arch.pooler)(x).flatten(1) if arch.pooler else x.mean((-2, -1))
            return self._post_pool(pooled)
        mx = x.amax((-2, -1))
        if spec.pooling == "max":
            return self._post_pool(mx)
        return torch.cat([self._post_pool(x.mean((-2, -1))), self._post_pool(mx)], dim=-1)

    def _post_pool(self, pooled: torch.Tensor) -> torch.Tensor:
        for path in self.arch.post_pool:
            pooled = get_module(self, path)(pooled)
        return pooled

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pool a feature map and classify it."""
        return self.classify_pooled(self._pool(features, self.head_spec))

    def pooled_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vector the head sees (after pooling and any post-pool norm), before head dropout."""
        self._check_input(pixel_values)
        return self._pool(self.forward_features(pixel_values), self.head_spec)

    def classify_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Head dropout + classifier on pooled features."""
        arch = self.arch
        if arch.head_dropout:
            pooled = get_module(self, arch.head_dropout)(pooled)
        elif arch.head_dropout_rate:
            pooled = nn.functional.dropout(pooled, arch.head_dropout_rate, self.training)
        return get_module(self, arch.head)(pooled)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        pooled_features: torch.Tensor | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        """Classify `pixel_values`, or precomputed `pooled_features` (see `hf_transfer_cnn.features`)."""
        hidden = None
        if pooled_features is not None:
            if pixel_values is not None:
                raise ValueError("Pass either pixel_values or pooled_features, not both.")
            logits = self.classify_pooled(pooled_features)
        else:
            self._check_input(pixel_values)
            output_hidden_states = bool(output_hidden_states if output_hidden_states is not None
                                        else self.config.output_hidden_states)
            if output_hidden_states:
                features, hidden = self.forward_features(pixel_values, output_hidden_states=True)
            else:
                features = self.forward_features(pixel_values)
            logits = self.forward_head(features)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            out = (logits,) + ((hidden,) if hidden is not None else ())
            return ((loss,) + out) if loss is not None else out
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden)

    # -- saving ---------------------------------------------------------------------------------------------

    def _tell_how_it_loads(self, save_directory) -> None:
        """Log what a saved folder needs outside this package: a warning where plain transformers would give other
        predictions, refuse, or need remote code."""
        meta = self.meta
        if meta.head:
            logger.warning("%s needs hf_transfer_cnn to load (TransferModel.from_pretrained): plain transformers would "
                           "load it with a fresh linear classifier in place of its custom head (other predictions; its "
                           "load report lists the head as UNEXPECTED).", save_directory)
        elif meta.input_channels is not None:
            logger.warning("%s needs hf_transfer_cnn to load (TransferModel.from_pretrained): its input adapter makes "
                           "plain transformers refuse it (a stem size mismatch).", save_directory)
        elif not in_transformers(self.config.model_type):
            logger.info("%s: without hf_transfer_cnn, load it with trust_remote_code=True (%s is defined in this "
                        "package; its modeling file is saved beside the weights).", save_directory,
                        self.config.model_type)

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        state_dict: dict | None = None, push_to_hub: bool = False, **kwargs) -> None:
        """Save weights and config under the native class name, plus the image processor.

        ``push_to_hub=True`` (with transformers' ``repo_id``, ``commit_message``, ``create_pr``, ``private``,
        ``token``) uploads the files this call wrote to `save_directory`, as transformers does, but after all
        of them are written (transformers would upload before the config rename and the processor).
        """
        push = push_to_hub and is_main_process
        if push:
            from huggingface_hub import create_repo

            hub = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "create_pr") if k in kwargs}
            repo_kwargs = {k: kwargs.pop(k) for k in ("private", "repo_type") if k in kwargs}
            token = kwargs.get("token")
            os.makedirs(save_directory, exist_ok=True)
            repo_id = create_repo(hub.pop("repo_id", Path(save_directory).name), token=token, exist_ok=True,
                                  **repo_kwargs).repo_id
            stamps = self._get_files_timestamps(save_directory)
        super().save_pretrained(save_directory, is_main_process, state_dict, False, **kwargs)
        if not is_main_process:
            return
        native = self._native_class.__name__ if self._native_class else type(self).__name__
        self.config.architectures = [native]
        config = self.config
        if self.meta.input_channels is not None:
            # an input adapter (BiT): config.json states the input channels, so that plain transformers refuses the
            # folder (its stem would not match the weights) instead of loading it without the adapter
            config = copy.deepcopy(self.config)
            backbone = {}
            for key in self.arch.channels_keys:
                attr, _, inner = key.partition(".")
                backbone[attr] = getattr(self.config, attr, None)
                value = {**(backbone[attr] or {}), inner: self.meta.input_channels} if inner else \
                    self.meta.input_channels
                setattr(config, attr, value)
            self.meta.updated(backbone_config=backbone).write(config)
        if not self.__dict__.get("_told_not_plain"):  # once per model, not at every Trainer checkpoint
            self.__dict__["_told_not_plain"] = True
            self._tell_how_it_loads(save_directory)
        config.save_pretrained(save_directory)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(save_directory)
        if push:
            from transformers.utils.hub import create_and_tag_model_card

            create_and_tag_model_card(repo_id, self.model_tags, token=token).save(
                os.path.join(save_directory, "README.md"))
            self._upload_modified_files(save_directory, repo_id, stamps, commit_message=hub.get("commit_message"),
                                        token=token, create_pr=hub.get("create_pr", False))


_HUB_KWARGS = {"revision", "token", "cache_dir", "force_download", "local_files_only", "proxies",
               "subfolder", "trust_remote_code", "torch_dtype", "dtype", "device_map", "attn_implementation"}
