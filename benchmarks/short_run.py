"""Benchmark 5: a short run with the fast path on (defaults) vs off — the fast path must never make a run slower.

    python benchmarks/short_run.py [--repeats 5] [--image-size 96] [--batch-size 32]

Each run is a fresh process: MobileNetV2 (full size, random weights) loaded, a Trainer run of 24 optimizer steps
(the last on a partial batch), two evaluations at another batch size (the second with a partial batch), everything
timed from the model's loading to the end of training, first-call work (copies built on first use) included.
Two kinds: feature extraction (only the head trains) and gradual (stages 0 → 2 unfrozen at step 12, lr x0.1).
Each kind runs with `FastOptions()` (defaults) and `FastOptions(enabled=False)`, in alternating order, `--repeats`
times; the ratio is the median of the per-repeat ratios (defaults / off, target <= 1.05).
Writes benchmarks/results/short_run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
STEPS, EVAL_BATCH, UNFREEZE_AT = 24, 64, 12


def child(kind: str, fast: str, ckpt: str, image_size: int, batch: int) -> float:
    """One run in this process; returns its seconds (model loading to end of training)."""
    import transformers as T

    from hf_transfer_cnn import FastOptions, FreezeScheduler, TransferModel
    from scheduler_overhead import Data  # this script's folder is on sys.path

    train = Data(batch * (STEPS - 1) + batch // 3, image_size, seed=0)
    evaluation = Data(EVAL_BATCH + EVAL_BATCH // 2 + 3, image_size, seed=1)
    T.logging.set_verbosity_error()
    started = time.perf_counter()
    model = TransferModel.from_pretrained(ckpt, num_labels=10, trainable_stages=0)
    if fast == "off":
        model.freeze(0, fast=FastOptions(enabled=False))
    callbacks = ([FreezeScheduler(unfreeze_at_step=UNFREEZE_AT, num_stages=2, lr_factor=0.1)]
                 if kind == "gradual" else [])
    with tempfile.TemporaryDirectory() as out:
        args = T.TrainingArguments(output_dir=out, num_train_epochs=1, per_device_train_batch_size=batch,
                                   per_device_eval_batch_size=EVAL_BATCH, eval_strategy="steps",
                                   eval_steps=STEPS // 2, save_strategy="no", report_to=[], use_cpu=True,
                                   disable_tqdm=True, logging_strategy="no", dataloader_num_workers=0, seed=0,
                                   learning_rate=1e-3)
        trainer = T.Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation, callbacks=callbacks)
        trainer.train()
    seconds = time.perf_counter() - started
    assert trainer.state.global_step == STEPS, trainer.state.global_step
    return seconds


def run_child(kind: str, fast: str, ckpt: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--child", kind, fast, "--ckpt", ckpt, "--image-size", str(args.image_size),
           "--batch-size", str(args.batch_size)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workdir", default="/tmp/hf_transfer_cnn_bench")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "FAST"), help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps({"seconds": child(*args.child, args.ckpt, args.image_size, args.batch_size)}))
        return None
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from throughput import make_checkpoint

    ckpt = make_checkpoint(Path(args.workdir) / "mobilenet_v2_full")
    seconds: dict[str, dict[str, list[float]]] = {k: {"default": [], "off": []} for k in ("feature_extraction",
                                                                                         "gradual")}
    for rep in range(args.repeats):
        for kind in seconds:
            order = ("default", "off") if rep % 2 == 0 else ("off", "default")
            for fast in order:
                seconds[kind][fast].append(run_child("gradual" if kind == "gradual" else "fe", fast, ckpt, args))
            print(f"repeat {rep + 1} {kind:18s} defaults {seconds[kind]['default'][-1]:6.2f} s   "
                  f"off {seconds[kind]['off'][-1]:6.2f} s", flush=True)
    ratios = {k: [d / o for d, o in zip(v["default"], v["off"])] for k, v in seconds.items()}
    summary = {k: statistics.median(r) for k, r in ratios.items()}
    for k, r in summary.items():
        print(f"{k:18s} defaults / off = {r:.3f} (target <= 1.05; per repeat: "
              f"{', '.join(f'{x:.3f}' for x in ratios[k])})")
    RESULTS.mkdir(exist_ok=True)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "steps": STEPS, "eval_batch": EVAL_BATCH, "unfreeze_at": UNFREEZE_AT, "args": vars(args),
           "seconds": seconds, "ratio_per_repeat": ratios, "ratio_median": summary,
           "command": "python benchmarks/short_run.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    (RESULTS / "short_run.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
