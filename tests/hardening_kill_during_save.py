"""Run recipes/finetune.py and SIGKILL the process inside Trainer's save of the N-th checkpoint (a crash, an OOM
kill or a preempted machine while a checkpoint is written). Used by tests/test_hardening_recipe.py.

    python tests/hardening_kill_during_save.py WHEN N [recipe arguments ...]

WHEN: ``after_weights`` (the model weights are written, the optimizer state and trainer_state.json are not) or
``mid_trainer_state`` (everything but the second half of trainer_state.json is written).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

from transformers import Trainer
from transformers.trainer_callback import TrainerState

REPO = Path(__file__).resolve().parents[1]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_after_weights(n: int) -> None:
    original, calls = Trainer._save_optimizer_and_scheduler, []

    def save(self, output_dir):
        calls.append(output_dir)
        if len(calls) == n:
            _die()
        return original(self, output_dir)

    Trainer._save_optimizer_and_scheduler = save


def _kill_mid_trainer_state(n: int) -> None:
    original, calls = TrainerState.save_to_json, []

    def save(self, json_path):
        if Path(json_path).parent.name.startswith("checkpoint-"):
            calls.append(json_path)
            if len(calls) == n:
                original(self, json_path)
                text = Path(json_path).read_bytes()
                with open(json_path, "wb") as f:  # the page cache held only the first half when the kill came
                    f.write(text[: len(text) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                _die()
        return original(self, json_path)

    TrainerState.save_to_json = save


def main() -> None:
    when, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    {"after_weights": _kill_after_weights, "mid_trainer_state": _kill_mid_trainer_state}[when](n)
    script = runpy.run_path(str(REPO / "recipes" / "finetune.py"))
    sys.exit(script["main"](argv))


if __name__ == "__main__":
    main()
