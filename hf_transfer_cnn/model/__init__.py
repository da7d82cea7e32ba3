"""TransferModel and its parts: heads, input adaptation, BatchNorm conventions, the typed config section."""

from .batchnorm import fix_tf_bn_momentum, tf_style_batchnorms
from .channels import adapt_conv_weight
from .head import ClassificationHead, HeadSpec
from .meta import CONFIG_KEY, TransferMeta
from .transfer import TransferModel, transfer_class_for

__all__ = ["TransferModel", "transfer_class_for", "HeadSpec", "ClassificationHead", "adapt_conv_weight",
           "fix_tf_bn_momentum", "tf_style_batchnorms", "TransferMeta", "CONFIG_KEY"]
