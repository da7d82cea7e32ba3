"""Benchmark 3: FreezeScheduler per-step overhead when nothing changes (target <= 1%).

    python benchmarks/scheduler_overhead.py [--steps 40] [--image-size 96] [--batch-size 32]

Two measurements in one run, same model and data:
1. direct: the callback's own work per optimizer step (on_step_begin + on_step_end + on_log) timed over many calls,
   divided by the measured time of one real training step;
2. end to end: Trainer steps/s with the callback (already past its unfreeze) vs without it (the model frozen the same
   way by hand), alternating runs, median of the per-run step times.
Writes benchmarks/results/scheduler_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_transfer_cnn import FreezeScheduler, TransferModel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class Data(torch.utils.data.Dataset):
    """`n` random images of `size` px with 10 random labels, fixed by `seed` (also used by short_run.py)."""

    def __init__(self, n, size, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class StepTimer(T.TrainerCallback):
    def __init__(self, skip):
        self.skip, self.times, self._t = skip, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step > self.skip:
            self.times.append(time.perf_counter() - self._t)


def run(ckpt, steps, batch, size, with_callback, workdir):
    model = TransferModel.from_pretrained(ckpt, num_labels=10, trainable_stages=0)
    if not with_callback:
        model.freeze(2)
    args = T.TrainingArguments(output_dir=workdir, max_steps=steps, per_device_train_batch_size=batch, use_cpu=True,
                               report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    timer = StepTimer(skip=3)
    callbacks = [FreezeScheduler(unfreeze_at_step=0, num_stages=2, lr_factor=0.1)] if with_callback else []
    T.Trainer(model=model, args=args, train_dataset=Data(steps * batch, size), callbacks=callbacks + [timer]).train()
    return statistics.median(timer.times)


def main(argv=None):
    from throughput import make_checkpoint, parse_args

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    args = parse_args(ap, argv)

    ckpt = make_checkpoint(Path(args.workdir) / "mobilenet_v2_full")

    # 1. direct cost of the callback's per-step events
    model = TransferModel.from_pretrained(ckpt, num_labels=10)
    cb = FreezeScheduler(unfreeze_at_step=0, num_stages=2, lr_factor=0.1)
    cb.prepare_model(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    cb.attach(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), global_step=0)
    state = T.TrainerState()
    state.global_step = 10
    state.log_history = [{"learning_rate": 1e-3, "loss": 1.0, "step": 10}]
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        cb.on_step_begin(None, state, None)
        cb.on_step_end(None, state, None)
        cb.on_log(None, state, None, logs={"learning_rate": 1e-3})
    per_step_callback = (time.perf_counter() - t) / n

    # 2. end to end, alternating
    with_cb, without = [], []
    for _ in range(args.rounds):
        without.append(run(ckpt, args.steps, args.batch_size, args.image_size, False, args.workdir))
        with_cb.append(run(ckpt, args.steps, args.batch_size, args.image_size, True, args.workdir))
    step = statistics.median(without)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "torch": torch.__version__, "args": vars(args),
        "callback_seconds_per_step": per_step_callback,
        "train_step_seconds_without_callback": step,
        "train_step_seconds_with_callback": statistics.median(with_cb),
        "direct_overhead_percent": 100 * per_step_callback / step,
        "end_to_end_overhead_percent": 100 * (statistics.median(with_cb) - step) / step,
        "command": "python benchmarks/scheduler_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(f"callback work per step: {per_step_callback * 1e6:.1f} us; train step {step * 1e3:.1f} ms")
    print(f"direct overhead: {result['direct_overhead_percent']:.4f}% (target <= 1%)")
    print(f"end-to-end: without {step * 1e3:.1f} ms/step, with {result['train_step_seconds_with_callback'] * 1e3:.1f} "
          f"ms/step -> {result['end_to_end_overhead_percent']:+.2f}% (noise included)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scheduler_overhead.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
