"""Publishing on the Hugging Face Hub: the model card (`card`, its "How to use" code in `usage`) and the upload with
its failure handling (`push`)."""

from .card import (CARD_TAGS, TransferReport, build_model_card, loadable_with_transformers, parse_card_metadata,
                   write_model_card)
from .push import PUSH_IGNORE_PATTERNS, HubPushError, push_output_dir, retry_instructions

__all__ = ["CARD_TAGS", "PUSH_IGNORE_PATTERNS", "HubPushError", "TransferReport", "build_model_card",
           "loadable_with_transformers", "parse_card_metadata", "push_output_dir", "retry_instructions",
           "write_model_card"]
