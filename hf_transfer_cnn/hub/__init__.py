"""Publishing on the Hugging Face Hub: the model card (`card`, its "How to use" code in `usage`), the upload with
its failure handling (`push`), and what never leaves the machine: URL passwords, tokens, local paths (`privacy`)."""

from .card import (CARD_TAGS, TransferReport, build_model_card, loadable_with_transformers, parse_card_metadata,
                   write_model_card)
from .privacy import portable_base_model, redact, redact_logs
from .push import PUSH_IGNORE_PATTERNS, HubPushError, push_output_dir, retry_instructions

__all__ = ["CARD_TAGS", "PUSH_IGNORE_PATTERNS", "HubPushError", "TransferReport", "build_model_card",
           "loadable_with_transformers", "parse_card_metadata", "portable_base_model", "push_output_dir", "redact",
           "redact_logs", "retry_instructions", "write_model_card"]
