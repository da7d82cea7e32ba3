"""The output_dir policy: which checkpoint a run resumes from, and an earlier run's checkpoints never lost (a run
that would overwrite them is refused, or with `overwrite_output_dir` moves them to an ``overwritten-<time>``
folder). A checkpoint whose save was cut off (a kill, a full disk) is never resumed: ``resume last`` skips it for the
newest complete one and moves it to an ``incomplete-<time>`` folder. An output_dir that cannot be written is refused
before anything trains, and a write that fails during training names the path and the way to resume."""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["WEIGHT_FILES", "checkpoint_step", "incomplete_reason", "resume_point", "move_aside", "check_resumable",
           "check_writable", "write_failure"]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")
"""The weights file(s) one of which a Trainer checkpoint holds."""
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` directory, or None for any other name."""
    name = path.name
    return int(name[len("checkpoint-"):]) if name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit() \
        else None


def resume_point(training_args: Any, overwrite: bool) -> tuple[str | None, list[Path]]:
    """The checkpoint to resume from. ``resume_from_checkpoint: last`` (or ``true``) means the newest complete one in
    output_dir: newer ones whose save was cut off (`incomplete_reason`) are skipped, logged, and moved aside to an
    ``incomplete-<time>`` folder (never deleted). Checkpoints in output_dir that the run would overwrite or rotate
    away are never touched silently: those of an earlier run when starting fresh, and, when resuming a given
    checkpoint, those after it (an abandoned continuation, which `last` would later pick) or of another run. That is
    refused unless `overwrite`, which moves them to an ``overwritten-<time>`` folder. A checkpoint without optimizer
    state (``save_only_model``) is refused: Trainer would restart the LR schedule and the optimizer's moments without
    a word.

    Returns the checkpoint (or None) and the checkpoints to move aside; `move_aside` moves them once every other
    check of the run has passed, so a refused run leaves the folder as it was."""
    out = Path(training_args.output_dir)
    wanted = training_args.resume_from_checkpoint
    existing = sorted((p for p in out.glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None),
                      key=checkpoint_step) if out.is_dir() else []
    if isinstance(wanted, str) and wanted.strip().lower() in ("last", "true"):
        return _newest_complete(out, wanted, existing)
    if wanted:
        return wanted, _checkpoints_after(out, wanted, existing, overwrite)
    if not existing:
        return None, []
    if not overwrite:
        raise ValueError(
            f"output_dir {out} already holds checkpoints of an earlier run (latest: {existing[-1].name}). "
            f"Continue that run with --resume_from_checkpoint last, choose a new --output_dir, or pass "
            f"--overwrite_output_dir true to start afresh there (its checkpoints are then moved to an "
            f"overwritten-<time> folder inside it).")
    # Trainer would leave them (rotation only runs with save_total_limit, and keeps the highest steps), and
    # `resume_from_checkpoint last` would later pick the old run's: move them aside, never delete them.
    return None, existing


def _newest_complete(out: Path, wanted: str, existing: list[Path]) -> tuple[str, list[Path]]:
    """``resume last``: the newest complete checkpoint, and the incomplete ones after it (to move aside)."""
    if not existing:
        raise ValueError(f"resume_from_checkpoint={wanted!r}: {out} holds no checkpoint-* directory to resume. "
                         "Drop resume_from_checkpoint to start a new run, or point it at a checkpoint directory.")
    skipped: list[tuple[Path, str]] = []
    for path in reversed(existing):
        why = incomplete_reason(path)
        if why is None:
            break
        skipped.append((path, why))
    else:
        raise ValueError(
            f"resume_from_checkpoint={wanted!r}: {out} holds no complete checkpoint: "
            f"{'; '.join(f'{p.name} ({why})' for p, why in skipped)}. Their saves were cut off (a kill or a full "
            "disk), so none can be resumed. Start afresh with --overwrite_output_dir true (they are then moved to an "
            "incomplete-<time> folder inside it), or point --resume_from_checkpoint at a complete checkpoint.")
    for p, why in skipped:
        logger.warning("resume_from_checkpoint=%s: skipping %s, which is incomplete (%s; its save was cut off, e.g. "
                       "killed or out of disk). Resuming %s, the newest complete checkpoint; %s is moved to an "
                       "incomplete-<time> folder in %s (not deleted).", wanted, p.name, why, path.name, p.name, out)
    check_resumable(str(path))
    return str(path), [p for p, _ in skipped]


def _checkpoints_after(out: Path, wanted: str, existing: list[Path], overwrite: bool) -> list[Path]:
    """Resuming the checkpoint `wanted`: the `existing` ones of output_dir `out` the run would overwrite (after it,
    or of another run), to move aside; refused unless `overwrite`."""
    path = Path(wanted)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint={wanted!r} is not a directory. Point it at a checkpoint-* "
                         f"directory, or use `last` for the newest one in {out}.")
    check_resumable(str(path))
    ours = out.is_dir() and path.resolve().parent == out.resolve()
    step = checkpoint_step(path)
    if step is None and (path / "trainer_state.json").is_file():
        step = json.loads((path / "trainer_state.json").read_text()).get("global_step")
    doomed = [p for p in existing if not ours or step is None or checkpoint_step(p) > step]
    if doomed and not overwrite:
        why = f"after {path.name} (a continuation the resumed run would overwrite, and `resume last` pick)" \
            if ours else f"of another run than {wanted}"
        raise ValueError(
            f"output_dir {out} holds checkpoints {why}: {', '.join(p.name for p in doomed)}. Resume the newest "
            f"with --resume_from_checkpoint last, choose a new --output_dir, or pass --overwrite_output_dir true "
            f"to move them to an overwritten-<time> folder inside it first.")
    return doomed


def move_aside(training_args: Any, checkpoints: list[Path]) -> None:
    """Move `checkpoints` to a new folder in output_dir (on the main process only): ``incomplete-<time>`` for those
    whose save was cut off, ``overwritten-<time>`` for the others."""
    if training_args.process_index != 0 or not checkpoints:  # the other ranks wait in main_process_first
        return
    out = Path(training_args.output_dir)
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')
    broken = [p for p in checkpoints if incomplete_reason(p) is not None]
    for kind, group in (("incomplete", broken), ("overwritten", [p for p in checkpoints if p not in broken])):
        if not group:
            continue
        aside = out / f"{kind}-{stamp}"
        aside.mkdir(exist_ok=True)
        for p in group:
            p.rename(aside / p.name)
        why = "incomplete" if kind == "incomplete" else "overwrite_output_dir"
        logger.warning("%s: %d checkpoint(s) in %s (%s) were moved to %s (delete it when no longer needed)%s", why,
                       len(group), out, ", ".join(p.name for p in group), aside,
                       "." if kind == "incomplete" else "; the run's other outputs will be replaced.")


def incomplete_reason(path: Path) -> str | None:
    """Why the checkpoint directory `path` is not one Trainer finished saving, or None when it is complete.

    Trainer writes a checkpoint in this order: the model weights (`WEIGHT_FILES`), optimizer.pt and scheduler.pt
    (unless ``save_only_model``), scaler.pt, rng_state*.pth, and trainer_state.json last. So a save that was cut
    off (a kill, a full disk) leaves no trainer_state.json, or one cut short; a power loss can leave empty files."""
    path = Path(path)
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        return "it has no trainer_state.json, which Trainer writes last"
    try:
        state = json.loads(state_file.read_text())
    except (ValueError, UnicodeDecodeError):
        return "its trainer_state.json is cut off or unreadable"
    step = checkpoint_step(path)
    if not isinstance(state, dict) or (step is not None and state.get("global_step") != step):
        return f"its trainer_state.json does not record step {step}"
    if not any((path / name).is_file() for name in WEIGHT_FILES) and not any(path.glob("global_step*")):
        return f"it holds no model weights ({' or '.join(WEIGHT_FILES[:3])})"
    empty = sorted(p.name for p in path.iterdir() if p.is_file() and p.stat().st_size == 0)
    if empty:
        return f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty"
    return None


def check_resumable(checkpoint: str) -> None:
    """Refuse a checkpoint whose save was cut off, or one without optimizer state: resuming it would not continue
    the run as it was."""
    path = Path(checkpoint)
    why = incomplete_reason(path)
    if why is not None:
        raise ValueError(
            f"{checkpoint} is incomplete ({why}): its save was cut off (killed, or out of disk), so it cannot be "
            "resumed. Resume the newest complete checkpoint with --resume_from_checkpoint last (incomplete ones are "
            "skipped and moved aside), or point it at an earlier checkpoint.")
    if not any(path.glob("optimizer*")) and not any(path.glob("global_step*")):
        raise ValueError(
            f"{checkpoint} holds no optimizer state (saved with save_only_model=True?): resuming from it would "
            "restart the learning-rate schedule and the optimizer's moments, so the run would not continue as it "
            f"was. Resume from a full checkpoint, or start a new run from its weights with --model_name_or_path "
            f"{checkpoint}.")


def check_writable(output_dir: str | os.PathLike) -> None:
    """Refuse, before anything trains, an output_dir that cannot be written (or created): a run would train to the
    end and then fail to save its weights. Probes with a real write (root passes every permission check)."""
    out = Path(output_dir).expanduser()
    target = out
    while not target.exists() and target.parent != target:
        target = target.parent
    if not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"output_dir {out} cannot be written ({target} is a file, not a "
                                 "folder): the run would train and then fail to save its weights. Choose another "
                                 "--output_dir.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OSError(err.errno, f"output_dir {out} cannot be written ({err.strerror or err}"
                      f"{'' if target == out else f' in {target}, where it would be created'}): the run would train "
                      "and then fail to save its weights. Make it writable, or choose another --output_dir.") from err


def write_failure(err: BaseException, output_dir: str | os.PathLike, step: int) -> OSError | None:
    """The error to raise for `err`, raised by Trainer while writing in `output_dir` at `step`: it names the path
    being written (an incomplete ``checkpoint-<step>``, or output_dir) and how to resume; None when `err` is not a
    failed write."""
    code = _write_errno(err)
    if code is None:
        return None
    out = Path(output_dir)
    ckpt = out / f"checkpoint-{step}"
    where = ckpt if ckpt.is_dir() and incomplete_reason(ckpt) is not None else out
    cause = os.strerror(code) if code != errno.EIO or not str(err) else str(err)
    done = [p for p in out.glob("checkpoint-*") if p != ckpt and checkpoint_step(p) is not None
            and incomplete_reason(p) is None]
    previous = max(done, key=checkpoint_step).name if done else None
    fix = "free space on its disk" if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "make it writable"
    if previous is None:
        resume = "then run again (no complete checkpoint was saved before)"
    elif where == ckpt:
        resume = (f"then resume with --resume_from_checkpoint last, which skips the incomplete {ckpt.name} (moving "
                  f"it aside) and resumes {previous}")
    else:
        resume = f"then resume with --resume_from_checkpoint last (from {previous}, the newest complete checkpoint)"
    return OSError(code, f"Writing {where} failed: {cause}. {fix.capitalize()} (or choose another --output_dir), "
                         f"{resume}.")


def _write_errno(err: BaseException) -> int | None:
    """The errno of a failed write in `err` or its causes: an OSError, or torch's/safetensors' wrapping of one."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRNOS:
            return seen.errno
        text = str(seen)
        if "No space left on device" in text or "code: 28" in text:
            return errno.ENOSPC
        if isinstance(seen, RuntimeError) and ("file write failed" in text or "PytorchStreamWriter failed" in text):
            return errno.EIO
        seen = seen.__cause__ or seen.__context__
    return None
