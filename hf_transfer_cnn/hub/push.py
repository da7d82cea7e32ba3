"""Uploading a finished output folder to a Hub model repo.

`push_output_dir` uploads everything but training leftovers (`PUSH_IGNORE_PATTERNS`). Any failure raises
`HubPushError`, whose message says what failed, that the local folder is untouched, and how to retry
(`retry_instructions`). Local files are only ever read.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from huggingface_hub.errors import HfHubHTTPError

__all__ = ["PUSH_IGNORE_PATTERNS", "HubPushError", "retry_instructions", "push_output_dir"]

logger = logging.getLogger(__name__)

# Left out of a push: training checkpoints (also an overwritten run's, moved aside by the recipe), TensorBoard runs,
# resume-only optimizer state, and Trainer's pickled TrainingArguments (training_args.bin holds hub_token; the model
# card and all_results.json record the settings).
PUSH_IGNORE_PATTERNS = [
    "training_args.bin",
    "*/training_args.bin",
    "checkpoints/",
    "checkpoint-*/",
    "*/checkpoint-[0-9]*/",
    "overwritten-*/",
    "runs/",
    ".ipynb_checkpoints/",
    "__pycache__/",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
]

_DEFAULT_ENDPOINT = "https://huggingface.co"

_HINTS = {
    "auth": "Log in with `hf auth login` (or export HF_TOKEN=...) using a token with write access to the "
            "repository's namespace, then retry.",
    "connection": "Check the network connection (and HF_ENDPOINT / proxy settings), then retry.",
    "offline": "Unset HF_HUB_OFFLINE (offline mode blocks every Hub request), then retry.",
    "server": "This is usually temporary on the Hub's side; retry in a few minutes.",
    "not_found": "Check the repo id (OWNER/NAME, where OWNER is your user name or an organization you can write "
                 "to) and that your token can see it, then retry.",
    "rejected": "Fix what the Hub objected to (shown above), then retry.",
    "other": "Retry once the cause above is fixed.",
}


class HubPushError(RuntimeError):
    """A push to the Hub failed. The local output folder was not changed; the message says how to retry."""

    def __init__(self, message: str, *, output_dir: str, repo_id: str, reason: str, retry_command: str,
                 status_code: int | None = None):
        super().__init__(message)
        self.output_dir = output_dir
        self.repo_id = repo_id
        self.reason = reason
        """"auth", "connection", "offline", "server", "not_found", "rejected" or "other"."""
        self.retry_command = retry_command
        self.status_code = status_code


def retry_instructions(output_dir: str | os.PathLike, repo_id: str, *, private: bool = False,
                       endpoint: str | None = None) -> tuple[str, str]:
    """(shell command, python call) that push `output_dir` to `repo_id` again (token from login / HF_TOKEN)."""
    out = str(Path(output_dir).resolve())
    custom = endpoint.rstrip("/") if endpoint and endpoint.rstrip("/") != _DEFAULT_ENDPOINT else None
    env = f"HF_ENDPOINT={shlex.quote(custom)} " if custom else ""
    cmd = (f"{env}hf-transfer-cnn push {shlex.quote(out)} --repo-id {shlex.quote(repo_id)}"
           + (" --private" if private else ""))
    py = (f"from hf_transfer_cnn.hub import push_output_dir; push_output_dir({out!r}, {repo_id!r}"
          + (", private=True" if private else "") + (f", endpoint={custom!r}" if custom else "") + ")")
    return cmd, py


# --- what went wrong ------------------------------------------------------------------------------------

def _classify(err: BaseException) -> tuple[str, int | None, str]:
    """(reason, HTTP status, short description) for an exception raised while pushing."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return "offline", None, "huggingface_hub is in offline mode (HF_HUB_OFFLINE=1)"
    if isinstance(err, LocalTokenNotFoundError):
        return "auth", None, "no Hugging Face token was found"
    if isinstance(err, HfHubHTTPError):
        return _classify_http(err)
    if isinstance(err, (*_transport_errors(), ConnectionError, TimeoutError)):
        return "connection", None, f"could not reach the Hub ({type(err).__name__}: {err})"
    if isinstance(err, ValueError) and "metadata" in str(err).lower():
        return "rejected", None, f"the Hub rejected README.md ({err})"
    return "other", None, f"{type(err).__name__}: {err}"


def _classify_http(err: HfHubHTTPError) -> tuple[str, int | None, str]:
    """`_classify` for an HTTP error answer of the Hub, by status code."""
    status = err.response.status_code if getattr(err, "response", None) is not None else None
    server = (getattr(err, "server_message", None) or "").strip().splitlines()
    detail = f"HTTP {status}" + (f": {server[0]}" if server else "")
    if status in (401, 403):
        return "auth", status, f"the Hub refused the credentials ({detail})"
    if status == 404:
        return "not_found", status, f"the repository or its namespace was not found ({detail})"
    if status is not None and status >= 500:
        return "server", status, f"the Hub answered with a server error ({detail})"
    return "rejected", status, f"the Hub rejected the request ({detail})"


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network-level exception types of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    import importlib

    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _push_error(err: BaseException, folder: Path, repo_id: str, *, stage: str, private: bool, endpoint: str,
                token_given: bool) -> HubPushError:
    """The `HubPushError` for `err`, raised while `stage`: cause, hint, and the commands that retry the push."""
    reason, status, what = _classify(err)
    cmd, py = retry_instructions(folder, repo_id, private=private, endpoint=endpoint)
    hint = _HINTS[reason]
    if reason == "auth" and token_given:
        hint = "The token passed to push_output_dir was refused. " + hint
    message = (
        f"Pushing {str(folder.resolve())!r} to the Hub repo {repo_id!r} failed while {stage}: {what}.\n"
        f"Nothing local was changed: the output at {str(folder.resolve())!r} is intact.\n"
        f"{hint}\n"
        f"Retry with:\n    {cmd}\n"
        f"or from Python:\n    {py}\n"
        "Files that already reached the Hub unchanged are skipped on retry."
    )
    return HubPushError(message, output_dir=str(folder.resolve()), repo_id=repo_id, reason=reason,
                        retry_command=cmd, status_code=status)


# --- the upload -----------------------------------------------------------------------------------------

def _files_to_upload(folder: Path, repo_id: str) -> list[str]:
    """The files of `folder` a push sends; raises before anything is sent when the input is unusable."""
    from huggingface_hub.utils import filter_repo_objects, validate_repo_id

    if not folder.is_dir():
        raise FileNotFoundError(f"Output folder {str(folder)!r} does not exist (or is not a folder); "
                                "nothing was pushed.")
    validate_repo_id(repo_id)
    files = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    to_upload = list(filter_repo_objects(files, ignore_patterns=PUSH_IGNORE_PATTERNS))
    if not to_upload:
        raise ValueError(f"Output folder {str(folder)!r} has no files to push (checkpoints and runs/ are left out).")
    if "config.json" not in to_upload:
        logger.warning("%s has no config.json: the pushed repo will not load as a model.", folder)
    return to_upload


def push_output_dir(
    output_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload model trained with hf-transfer-cnn",
    *,
    endpoint: str | None = None,
) -> str:
    """Upload a finished output folder to the Hub model repo `repo_id` (created if needed); returns the commit URL.

    Uploads everything in the folder (weights, config.json, preprocessor_config.json, README.md, plots,
    all_results.json, ...) except `PUSH_IGNORE_PATTERNS` (``checkpoint-*/``, ``overwritten-*/``, ``checkpoints/``,
    ``runs/``, optimizer/scheduler state). The folder is only read. Files already on the Hub with the same content
    are skipped, so running the same call again after a failure finishes the upload.

    The returned value is huggingface_hub's `CommitInfo` (a `str` equal to the commit URL, with ``.oid`` and
    ``.repo_url``).

    Raises:
        FileNotFoundError / ValueError: `output_dir` is missing or empty, or `repo_id` is malformed (nothing sent).
        HubPushError: the Hub could not be reached or refused the upload (auth, server error, ...); the message
            names the cause, states that `output_dir` is intact, and gives the command to retry.
    """
    from huggingface_hub import HfApi

    folder = Path(output_dir)
    to_upload = _files_to_upload(folder, repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    stage = "creating the repository"
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        stage = "uploading the files"
        commit = api.upload_folder(
            repo_id=repo_url.repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=commit_message,
            ignore_patterns=list(PUSH_IGNORE_PATTERNS),
        )
    except Exception as err:  # noqa: BLE001 - every failure becomes one actionable error
        raise _push_error(err, folder, repo_id, stage=stage, private=private, endpoint=api.endpoint,
                          token_given=token is not None) from err
    logger.info("Pushed %d file(s) from %s to %s", len(to_upload), folder, repo_url)
    return commit
