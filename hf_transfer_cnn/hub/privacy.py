"""What never leaves the machine in a message, a log line or an uploaded file: passwords in URLs (``HF_ENDPOINT=
http://user:password@host``), Hub tokens, and local paths (a local base checkpoint is named by its folder).

`redact` hides URL credentials and tokens in any text, `redact_logs` in what is logged (the HTTP clients log every
request's URL, credentials included, at INFO); `portable_base_model` is the provenance recorded for a base checkpoint
(a Hub id as it is, a local folder by its name); `portable_config` rewrites a config.json's record of it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

__all__ = ["REDACTED", "HTTP_LOGGERS", "redact", "redact_logs", "known_tokens", "portable_base_model",
           "portable_config"]

REDACTED = "***"
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"]+)@")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]+")


def known_tokens(*given: str | None) -> list[str]:
    """The Hub tokens a message could hold: `given` ones, ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN`` and the
    logged-in one."""
    tokens = [t for t in (*given, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")) if t]
    try:
        from huggingface_hub import get_token

        tokens.append(get_token() or "")
    except Exception:  # noqa: BLE001 - no token store is not an error here
        pass
    return [t for t in dict.fromkeys(tokens) if len(t) >= 4]


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every URL's credentials (``scheme://user:pw@`` -> ``scheme://***@``), every ``hf_...`` token,
    bearer token and each of `secrets` replaced by ``***``."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", str(text))
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _HF_TOKEN.sub(REDACTED, text)


HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "urllib3.connectionpool", "requests", "huggingface_hub")
"""Loggers whose records can carry a request URL."""


class _RedactingFilter(logging.Filter):
    """Rewrites a record's message with `redact` (URL credentials, tokens, the registered secrets)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's business, not ours
            return True
        clean = redact(message, *self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = _RedactingFilter()


def redact_logs(*secrets: str | None, handlers: bool = False) -> None:
    """From now on, hide URL credentials, tokens and `secrets` in the records of `HTTP_LOGGERS` and, with
    `handlers`, in everything the root logger's handlers write (a script's console)."""
    _FILTER.secrets.update(s for s in secrets if s and len(s) >= 4)
    targets: list = [logging.getLogger(name) for name in HTTP_LOGGERS]
    if handlers:
        targets += logging.getLogger().handlers
    for target in targets:
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)


def portable_base_model(value: str | None) -> str | None:
    """The base checkpoint as a portable record: a Hub id as it is, a local folder (an absolute path, or one that
    exists here) by its name."""
    if not value:
        return value
    local = os.path.expanduser(value)
    if os.path.isabs(local) or os.path.exists(local) or value.startswith((".", "~")):
        return Path(local).resolve().name or value
    return value


def portable_config(config_file: str | os.PathLike) -> tuple[bytes, str, str] | None:
    """``(config.json bytes with hf_transfer_cnn.base_model portable, the local value, the portable one)`` when
    the file records a local path there; None when it records none (or cannot be read)."""
    try:
        config = json.loads(Path(config_file).read_text())
        base = (config.get("hf_transfer_cnn") or {}).get("base_model")
    except (OSError, ValueError, AttributeError):
        return None
    portable = portable_base_model(base) if isinstance(base, str) else base
    if not base or portable == base:
        return None
    section = dict(config.get("hf_transfer_cnn") or {})
    section["base_model"] = portable
    config["hf_transfer_cnn"] = section
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(), base, portable
