"""Model surgery: a new classifier, another number of input channels, another input size.

`SurgeryMixin` is one of `TransferModel`'s bases; it uses what `TransferModel` defines (``arch``, ``meta``,
``head_spec``, ``num_input_channels``, ``freeze_state``, ``freeze``, ``forward_features``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..processing import adapt_image_processor
from ..registry import get_module, set_module
from .channels import adapt_conv_weight, adapter_weight
from .head import ClassificationHead, HeadSpec, last_linear_path
from .labels import normalise_labels
from .loading import TaskRequest, check_image_size, check_num_channels

logger = logging.getLogger(__name__)

__all__ = ["SurgeryMixin"]


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
        """Channels of the last feature map, from a forward pass on a fixed random batch."""
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
                f"This {self.config.model_type} model has a custom head; its original classifier MLP cannot be "
                "rebuilt. Pass head=... to replace the custom head, or load the base checkpoint again for the native "
                "one."
            )
        ref = next(self.parameters())
        if spec.is_native:
            self._install_native_classifier(num_labels)
        else:
            self._install_head(spec, num_labels)
        get_module(self, arch.head).to(device=ref.device, dtype=ref.dtype)
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
        else:
            set_module(self, arch.head, nn.Linear(in_features, num_labels))

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
            for m in get_module(self, path).modules():
                if isinstance(getattr(m, "num_channels", None), int):
                    m.num_channels = num_channels
        self.config.num_channels = num_channels

    def set_image_size(self, image_size: int) -> None:
        """Set the input size (config and image processor); it must be at least the architecture minimum."""
        check_image_size(image_size, self.arch.min_size(self.config), self.config.model_type)
        if hasattr(self.config, "image_size"):
            self.config.image_size = image_size
        self._set_meta(image_size=image_size)
        if self.image_processor is not None:
            self.image_processor = adapt_image_processor(self.image_processor, image_size=image_size)
