"""Uploading a finished output folder to a Hub model repo.

`push_output_dir` uploads everything but training leftovers (`PUSH_IGNORE_PATTERNS`). Any failure raises
`HubPushError`, whose message says what failed, that the local folder is untouched, and how to retry
(`retry_instructions`). Local files are only ever read. No message, log line or uploaded file holds the password of
an ``HF_ENDPOINT`` URL, a token, or a local path: a config.json recording a local base checkpoint by its path is
uploaded naming the folder instead (the local file is left as it is), see `privacy`.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from huggingface_hub.errors import HfHubHTTPError

from .privacy import REDACTED, known_tokens, portable_config, redact, redact_logs

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
    "incomplete-*/",
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


UNCHANGED = "Nothing local was changed"
"""How a push failure's message starts its line about the local folder."""


class HubPushError(RuntimeError):
    """A push to the Hub failed. The local output folder was not changed; the message says how to retry."""

    def __init__(self, message: str, *, output_dir: str, repo_id: str, reason: str, retry_command: str,
                 status_code: int | None = None, detail: str | None = None):
        super().__init__(message)
        self.output_dir = output_dir
        self.repo_id = repo_id
        self.reason = reason
        """"auth", "connection", "offline", "server", "not_found", "rejected" or "other"."""
        self.retry_command = retry_command
        self.status_code = status_code
        self.detail = detail
        """What failed, in one line without local paths or secrets (e.g. for a results file)."""

    def with_local_change(self, change: str) -> HubPushError:
        """This error, its message saying truly that `change` (e.g. "all_results.json records this failure") is
        the one local change since the push failed."""
        lines = [f"The only local change: {change}; the output at {self.output_dir!r} is otherwise intact."
                 if line.startswith(UNCHANGED) else line for line in str(self).splitlines()]
        return HubPushError("\n".join(lines), output_dir=self.output_dir, repo_id=self.repo_id, reason=self.reason,
                            retry_command=self.retry_command, status_code=self.status_code, detail=self.detail)


def retry_instructions(output_dir: str | os.PathLike, repo_id: str, *, private: bool = False,
                       endpoint: str | None = None) -> tuple[str, str]:
    """(shell command, python call) that push `output_dir` to `repo_id` again (token from login / HF_TOKEN); the
    credentials of an endpoint URL are shown as ``***``."""
    out = str(Path(output_dir).resolve())
    custom = redact(endpoint.rstrip("/")) if endpoint and endpoint.rstrip("/") != _DEFAULT_ENDPOINT else None
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
                token_given: bool, secrets: list[str]) -> HubPushError:
    """The `HubPushError` for `err`, raised while `stage`: cause, hint, and the commands that retry the push."""
    reason, status, what = _classify(err)
    what = redact(what, *secrets)
    cmd, py = retry_instructions(folder, repo_id, private=private, endpoint=endpoint)
    hint = _HINTS[reason]
    if reason == "auth" and token_given:
        hint = "The token passed to push_output_dir was refused. " + hint
    if REDACTED + "@" in cmd:
        hint += " (The credentials of HF_ENDPOINT are shown as ***: put them back in, or keep HF_ENDPOINT as set.)"
    message = (
        f"Pushing {str(folder.resolve())!r} to the Hub repo {repo_id!r} failed while {stage}: {what}.\n"
        f"{UNCHANGED}: the output at {str(folder.resolve())!r} is intact.\n"
        f"{hint}\n"
        f"Retry with:\n    {cmd}\n"
        f"or from Python:\n    {py}\n"
        "Files that already reached the Hub unchanged are skipped on retry."
    )
    return HubPushError(redact(message, *secrets), output_dir=str(folder.resolve()), repo_id=repo_id, reason=reason,
                        retry_command=cmd, status_code=status, detail=f"failed while {stage}: {what}")


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
    overrides = _portable_files(folder, to_upload)
    api = HfApi(endpoint=endpoint, token=token)
    secrets = known_tokens(token)
    redact_logs(*secrets)  # the HTTP client logs each request's URL, an endpoint's password included
    stage = "creating the repository"
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        stage = "uploading the files"
        commit = _upload(api, repo_url.repo_id, folder, to_upload, overrides, commit_message)
    except Exception as err:  # noqa: BLE001 - every failure becomes one actionable error
        raise _push_error(err, folder, repo_id, stage=stage, private=private, endpoint=api.endpoint,
                          token_given=token is not None, secrets=secrets) from None
    logger.info("Pushed %d file(s) from %s to %s", len(to_upload), folder, redact(str(repo_url), *secrets))
    return _redacted_commit(commit)


def _upload(api, repo_id: str, folder: Path, to_upload: list[str], overrides: dict[str, bytes], message: str):
    """One commit of `to_upload`, the files in `overrides` sent with that content instead of the local one."""
    if not overrides:
        return api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", commit_message=message,
                                 ignore_patterns=list(PUSH_IGNORE_PATTERNS))
    from huggingface_hub import CommitOperationAdd

    operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=overrides.get(rel, str(folder / rel)))
                  for rel in to_upload]
    return api.create_commit(repo_id=repo_id, operations=operations, repo_type="model", commit_message=message)


def _portable_files(folder: Path, to_upload: list[str]) -> dict[str, bytes]:
    """{file: content to upload instead} for a config.json recording the base checkpoint by a local path: it names
    the folder instead, and so does README.md wherever it shows that path. The local files are not changed."""
    if "config.json" not in to_upload:
        return {}
    found = portable_config(folder / "config.json")
    if found is None:
        return {}
    content, local, portable = found
    overrides = {"config.json": content}
    if "README.md" in to_upload:
        card = (folder / "README.md").read_bytes()
        if local.encode() in card:
            overrides["README.md"] = card.replace(local.encode(), portable.encode())
    logger.info("config.json records the base checkpoint by a local path: uploading it with "
                "hf_transfer_cnn.base_model=%r (the folder's name)%s; the local files are unchanged.", portable,
                ", and README.md with that name for the path" if "README.md" in overrides else "")
    return overrides


def _redacted_commit(commit):
    """`commit` (a `CommitInfo`) with the credentials of its URLs hidden, when they hold any."""
    if str(commit) == redact(str(commit)):
        return commit
    try:
        from huggingface_hub import CommitInfo

        return CommitInfo(redact(commit.commit_url), commit.commit_message, commit.commit_description, commit.oid,
                          _endpoint=redact(getattr(commit, "_endpoint", None) or "") or None,
                          pr_url=redact(commit.pr_url) if commit.pr_url else None)
    except Exception:  # noqa: BLE001 - another huggingface_hub's CommitInfo: the URL string is what matters
        return redact(str(commit))
