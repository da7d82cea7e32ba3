"""The output_dir policy: which checkpoint a run resumes from, and an earlier run's checkpoints never lost (a run
that would overwrite them is refused, or with `overwrite_output_dir` moves them to an ``overwritten-<time>``
folder)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["checkpoint_step", "resume_point", "move_aside", "check_resumable"]


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` directory, or None for any other name."""
    name = path.name
    return int(name[len("checkpoint-"):]) if name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit() \
        else None


def resume_point(training_args: Any, overwrite: bool) -> tuple[str | None, list[Path]]:
    """The checkpoint to resume from. ``resume_from_checkpoint: last`` (or ``true``) means the newest one in
    output_dir. Checkpoints in output_dir that the run would overwrite or rotate away are never touched silently:
    those of an earlier run when starting fresh, and, when resuming a given checkpoint, those after it (an
    abandoned continuation, which `last` would later pick) or of another run. That is refused unless `overwrite`,
    which moves them to an ``overwritten-<time>`` folder. A checkpoint without optimizer state (``save_only_model``)
    is refused: Trainer would restart the LR schedule and the optimizer's moments without a word.

    Returns the checkpoint (or None) and the checkpoints to move aside; `move_aside` moves them once every other
    check of the run has passed, so a refused run leaves the folder as it was."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(training_args.output_dir)
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    wanted = training_args.resume_from_checkpoint
    existing = sorted((p for p in out.glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None),
                      key=checkpoint_step) if out.is_dir() else []
    if isinstance(wanted, str) and wanted.strip().lower() in ("last", "true"):
        if last is None:
            raise ValueError(f"resume_from_checkpoint={wanted!r}: {out} holds no checkpoint-* directory to resume. "
                             "Drop resume_from_checkpoint to start a new run, or point it at a checkpoint directory.")
        check_resumable(last)
        return last, []
    if wanted:
        return wanted, _checkpoints_after(out, wanted, existing, overwrite)
    if last is None:
        return None, []
    if not overwrite:
        raise ValueError(
            f"output_dir {out} already holds checkpoints of an earlier run (latest: {Path(last).name}). "
            f"Continue that run with --resume_from_checkpoint last, choose a new --output_dir, or pass "
            f"--overwrite_output_dir true to start afresh there (its checkpoints are then moved to an "
            f"overwritten-<time> folder inside it).")
    # Trainer would leave them (rotation only runs with save_total_limit, and keeps the highest steps), and
    # `resume_from_checkpoint last` would later pick the old run's: move them aside, never delete them.
    return None, existing


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
    """Move `checkpoints` to a new ``overwritten-<time>`` folder in output_dir (on the main process only)."""
    if training_args.process_index != 0 or not checkpoints:  # the other ranks wait in main_process_first
        return
    out = Path(training_args.output_dir)
    from datetime import datetime, timezone

    aside = out / f"overwritten-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(exist_ok=True)
    for p in checkpoints:
        p.rename(aside / p.name)
    logger.warning("overwrite_output_dir: %d checkpoint(s) in %s (%s) were moved to %s (delete it when no longer "
                   "needed); the run's other outputs will be replaced.", len(checkpoints), out,
                   ", ".join(p.name for p in checkpoints), aside)


def check_resumable(checkpoint: str) -> None:
    """Refuse a checkpoint without optimizer state: resuming it would not continue the run as it was."""
    path = Path(checkpoint)
    if not any(path.glob("optimizer*")) and not any(path.glob("global_step*")):
        raise ValueError(
            f"{checkpoint} holds no optimizer state (saved with save_only_model=True?): resuming from it would "
            "restart the learning-rate schedule and the optimizer's moments, so the run would not continue as it "
            f"was. Resume from a full checkpoint, or start a new run from its weights with --model_name_or_path "
            f"{checkpoint}.")
