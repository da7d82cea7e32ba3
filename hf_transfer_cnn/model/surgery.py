"""Model surgery: a new classifier, another number of input channels, another input size.

`SurgeryMixin` is one of `TransferModel`'s bases; it uses what `TransferModel` defines (``arch``, ``meta``,
``head_spec``, ``num_input_channels``, ``freeze_state``, ``freeze``, ``forward_features``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..processing import adapt_image_processor
from ..registry import forget_resolved_arch, get_arch, get_module, input_size_hint, set_module
from .channels import adapt_conv_weight, adapter_weight
from .head import ClassificationHead, HeadSpec, last_linear_path
from .labels import normalise_labels
from .loading import TaskRequest, check_image_size, check_num_channels
from .positions import resample_position_embeddings

logger = logging.getLogger(__name__)

__all__ = ["SurgeryMixin"]


def _fresh_like(layer: nn.Module, num_labels: int, in_features: int | None = None) -> nn.Module:
    """A new classifier layer of `layer`'s kind (a 1x1 Conv2d, else a Linear; with a bias unless `layer` is a layer
    without one) for `num_labels` outputs; `in_features` where `layer` does not say (a custom head being replaced)."""
    bias = getattr(layer, "bias", True) is not None
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(layer.in_channels, num_labels, 1, bias=bias)
    width = layer.in_features if isinstance(layer, nn.Linear) else in_features
    return nn.Linear(width, num_labels, bias=bias if isinstance(layer, nn.Linear) else True)


class SurgeryMixin:
    """`set_head`, `set_num_channels`, `set_image_size`, and what they need to know (the feature width)."""

    # -- the new task, as from_pretrained was asked --------------------------------------------------------

    def _adapt_to(self, request: TaskRequest) -> None:
        """Re-head, adapt the input channels and set the size as `request` asks (after loading)."""
        own = {int(k): str(v) for k, v in (self.config.id2label or {}).items()}
        if request.keeps_head(own, self.head_spec):  # e.g. continuing to train a fine-tuned model on its classes
            logger.info("id2label equals the checkpoint's own labels: keeping its trained head "
                        "(model.set_head(...) gives a fresh one).")
        elif request.replaces_head(self.head_spec):
            self.set_head(request.num_labels or self.config.num_labels, id2label=request.id2label, head=request.head)
        if request.num_channels is not None and request.num_channels != self.num_input_channels:
            self.set_num_channels(request.num_channels)
        if request.image_size is not None:
            self.set_image_size(request.image_size)

    # -- the classifier ------------------------------------------------------------------------------------

    def _feature_dim(self, pooling: str = "avg") -> int:
        """Width of the pooled features the classifier sees (recorded in the config once known)."""
        if self.meta.feature_dim is None:
            head = get_module(self, self.arch.head)
            first = next((m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
            if first is None or isinstance(head, ClassificationHead):
                first = None
            width = getattr(first, "in_features", None) or getattr(first, "in_channels", None)
            self._set_meta(feature_dim=width if first is not None else self._probe_channels())
        meta = self.meta
        if pooling == "avg":
            return int(meta.feature_dim)
        if meta.channels_dim is None:
            channels = meta.feature_dim if self.arch.head_style != "mlp" else self._probe_channels()
            self._set_meta(channels_dim=channels)
            meta = self.meta
        return int(meta.channels_dim) * (2 if pooling == "concat" else 1)

    def _probe_channels(self) -> int:
        """Channels of the last feature map (for a model running its own forward: the width of what its classifier
        sees), from a forward pass on a fixed random batch."""
        size = max(self.arch.min_size(self.config), int(input_size_hint(self) or 0))
        p = next(self.parameters())
        was_training = self.training
        self.eval()
        with torch.no_grad():
            g = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(3, self.num_input_channels, size, size, generator=g).to(device=p.device, dtype=p.dtype)
            out = self.pooled_features(x) if self.runs_native_forward else self.forward_features(x)
            channels = out.shape[1]
        self.train(was_training)
        return int(channels)

    def _install_head(self, spec: HeadSpec, num_labels: int) -> None:
        if self.arch.head_style == "conv" or self.arch.extra_heads:
            what = ("is a 1x1 conv on the pooled map" if self.arch.head_style == "conv"
                    else f"is {len(self.arch.extra_heads) + 1} classifiers whose logits it averages")
            raise ValueError(f"This {self.config.model_type} model's classifier {what}: only its native head is "
                             "available (head=None or {}).")
        if self.runs_native_forward and spec.pooling != "avg":
            raise ValueError(
                f"head pooling={spec.pooling!r} is not available for this {self.config.model_type} model: it runs its "
                "own forward, whose pooling is part of the architecture (a ViT's class token, a Swin's mean). Use "
                "pooling='avg' (= the model's own pooling); hidden_sizes, dropout and activation work."
            )
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
                f"This {self.config.model_type} model has a custom head; its original classifier MLP cannot be "
                "rebuilt. Pass head=... to replace the custom head, or load the base checkpoint again for the native "
                "one."
            )
        ref = next(self.parameters())
        if spec.is_native:
            self._install_native_classifier(num_labels)
        else:
            self._install_head(spec, num_labels)
        for path in (arch.head, *arch.extra_heads):
            get_module(self, path).to(device=ref.device, dtype=ref.dtype)
        self._reset_unusable_dropout()
        self._set_labels(num_labels, id2label, label2id)
        self._set_meta(head=None if spec.is_native else spec.to_dict())

    def _install_native_classifier(self, num_labels: int) -> None:
        """The architecture's own classifier layout, freshly initialised (only the last Linear of an MLP)."""
        arch = self.arch
        in_features = self._feature_dim()
        old = get_module(self, arch.head)
        if arch.head_style == "mlp":
            path = last_linear_path(old)
            set_module(old, path, nn.Linear(get_module(old, path).in_features, num_labels))
        elif arch.head_style == "flatten_linear":
            set_module(self, arch.head, nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_labels)))
        else:  # a Linear (or a 1x1 conv), with a bias where the old one had one; distillation heads alike
            set_module(self, arch.head, _fresh_like(old, num_labels, in_features))
            for path in arch.extra_heads:
                set_module(self, path, _fresh_like(get_module(self, path), num_labels))

    def _reset_unusable_dropout(self) -> None:
        """A head dropout above 0.5 keeps a new head from learning (transformers' MobileNetV1 config says 0.999: the
        TensorFlow *keep* probability, stored as a drop rate): reset to ``1 - p``, logged, and in the config too."""
        arch = self.arch
        drop = get_module(self, arch.head_dropout) if arch.head_dropout else None
        rate = getattr(drop, "p", None)
        if not isinstance(drop, nn.Dropout) or rate is None or rate <= 0.5:
            return
        new = round(1.0 - float(rate), 6)
        key = arch.head_dropout_config
        logger.warning("Head dropout %s=%g would zero almost all of the new classifier's input, so it could not train "
                       "(ported TensorFlow configs store the keep probability there): using %g instead.",
                       f"config.{key}" if key else arch.head_dropout, rate, new)
        drop.p = new
        if key and hasattr(self.config, key):
            setattr(self.config, key, new)

    def _set_labels(self, num_labels: int, id2label: dict[int, str], label2id: dict[str, int]) -> None:
        config = self.config
        config.num_labels = num_labels
        config.id2label = id2label
        config.label2id = label2id
        if hasattr(config, "label_names"):  # TimmWrapperConfig saves these in place of id2label
            config.label_names = [id2label[i] for i in range(num_labels)]
        config.problem_type = None  # re-inferred from the new labels (a stale one would pick the wrong loss)
        self.num_labels = num_labels

    # -- the input -----------------------------------------------------------------------------------------

    def set_num_channels(self, num_channels: int) -> None:
        """Adapt the stem to `num_channels` input channels (rule: `adapt_conv_weight`)."""
        check_num_channels(num_channels)
        if self.arch.standardized_stem:
            self._set_input_adapter(num_channels)
        else:
            self._adapt_first_conv(num_channels)
        if self.image_processor is not None:
            self.image_processor = adapt_image_processor(self.image_processor, num_channels=num_channels)
        if num_channels > 3:
            logger.info("Channels beyond RGB start with zero weights; they carry signal once the stem trains.")
        if self.freeze_state is not None:
            self.freeze(self.freeze_state.trainable_stages)

    def _set_input_adapter(self, num_channels: int) -> None:
        """Stems that can't absorb a channel change (weight standardisation): a 1×1 conv in front, or none."""
        backbone_channels = self.config.num_channels
        if num_channels == backbone_channels:
            if "input_adapter" in self._modules:
                del self.input_adapter
            self._set_meta(input_channels=None)
            return
        ref = next(self.parameters())
        adapter = nn.Conv2d(num_channels, backbone_channels, 1, bias=False).to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            adapter.weight.copy_(adapter_weight(num_channels, backbone_channels, ref.dtype, ref.device))
        self.input_adapter = adapter
        self._set_meta(input_channels=num_channels)

    def _adapt_first_conv(self, num_channels: int) -> None:
        arch = self.arch
        conv = get_module(self, arch.first_conv)
        with torch.no_grad():
            conv.weight = nn.Parameter(adapt_conv_weight(conv.weight.detach(), num_channels),
                                       requires_grad=conv.weight.requires_grad)
        conv.in_channels = num_channels
        for path in arch.stem:
            stem = get_module(self, path)
            for m in stem.modules() if stem is not None else ():
                if isinstance(getattr(m, "num_channels", None), int):
                    m.num_channels = num_channels
        self.config.num_channels = num_channels

    def set_image_size(self, image_size: int) -> None:
        """Set the input size (config and image processor); it must be at least the architecture minimum.

        Models running their own forward keep ``config.image_size`` where it fixes parameter shapes (they interpolate
        position embeddings / biases at run time), except that absolute position embeddings the family names are
        resampled to the new grid (then the config follows). A layout read off the model (timm) is read again at
        the new size."""
        arch = self.arch
        check_image_size(image_size, arch.min_size(self.config), self.config.model_type)
        before, recorded = input_size_hint(self), self.meta.image_size
        if arch.position_embeddings:
            self._resample_position_embeddings(image_size)
        elif hasattr(self.config, "image_size") and not self.runs_native_forward:
            self.config.image_size = image_size
        self._set_meta(image_size=image_size)
        if before != image_size and get_arch(self.config.model_type).resolver is not None:
            self._resolve_again(image_size, recorded)
        if self.image_processor is not None:
            self.image_processor = adapt_image_processor(self.image_processor, image_size=image_size)

    def _resolve_again(self, image_size: int, recorded: int | None) -> None:
        """Read a per-instance layout (timm's) again at the new size; a size it refuses restores the old one."""
        forget_resolved_arch(self)
        try:
            check_image_size(image_size, self.arch.min_size(self.config), self.config.model_type)
        except Exception:
            self._set_meta(image_size=recorded)
            forget_resolved_arch(self)
            raise
        if self.freeze_state is not None:
            self.freeze(self.freeze_state.trainable_stages, self.freeze_state.keep_requires_grad)

    def _resample_position_embeddings(self, image_size: int) -> None:
        """The family's absolute position embeddings on the patch grid of `image_size` (as the model interpolates
        them), and ``config.image_size`` (the patch embedding's too) set to it."""
        arch = self.arch
        owner_path, _, name = arch.position_embeddings.rpartition(".")
        owner = get_module(self, owner_path)
        old = getattr(owner, name)
        grid = image_size // int(self.config.patch_size)
        new = resample_position_embeddings(old.detach(), arch.prefix_tokens, grid)
        setattr(owner, name, nn.Parameter(new, requires_grad=old.requires_grad))
        patch_embeddings = get_module(self, arch.first_conv.rpartition(".")[0])
        if hasattr(patch_embeddings, "image_size"):
            patch_embeddings.image_size = (image_size, image_size)
            patch_embeddings.num_patches = grid * grid
        self.config.image_size = image_size
