"""Benchmark 2: feature caching — epoch-1 vs epoch-2 wall time of feature extraction (target ratio <= 0.05), and
the cost of the cache's content check on a hit against a cold feature pass (target ratio <= 0.10).

    python benchmarks/feature_cache.py [--images 1024] [--image-size 96] [--batch-size 32]

Epoch 1 = computing the backbone features once (Arrow file in the datasets cache) + the first head epoch on them;
epoch 2 = the second epoch of the same Trainer run (epoch wall times from a callback, Trainer set-up excluded);
"later run" = loading the cache again. For reference, one epoch of the uncached path (frozen backbone + head every
step) is timed in the same run.

The cache is keyed on content: every call re-reads each image file's bytes (not decoding them) and hashes them with
the labels, so that an image replaced in place is never served stale features. "content check" times that hash
alone (`content_digest`, the median of 5) against the cold feature pass; the images are random noise PNGs, which do
not compress: the most bytes per decoded pixel, the check's worst case.
Writes benchmarks/results/feature_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_transfer_cnn import TransferModel  # noqa: E402
from hf_transfer_cnn.data import (build_transforms, collate_fn, load_image_classification_data,  # noqa: E402
                                  with_transforms, write_imagefolder)
from hf_transfer_cnn.features import cache_pooled_features, content_digest  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class EpochTimer(T.TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def epochs(model, ds, batch, workdir, collator, n):
    """Wall time of each of `n` epochs of one Trainer run (Trainer set-up excluded)."""
    args = T.TrainingArguments(output_dir=workdir, num_train_epochs=n, per_device_train_batch_size=batch, use_cpu=True,
                               report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
                               remove_unused_columns=False, dataloader_num_workers=0)
    timer = EpochTimer()
    T.Trainer(model=model, args=args, train_dataset=ds, data_collator=collator, callbacks=[timer]).train()
    return timer.times


def content_check_seconds(dataset, repeats: int = 5) -> float:
    """Median wall time of the cache key's content hash over `dataset` (file bytes re-read, nothing decoded)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        content_digest(dataset)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    from throughput import make_checkpoint, parse_args

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    args = parse_args(ap, argv)

    ckpt = make_checkpoint(Path(args.workdir) / "mobilenet_v2_full")
    root = Path(tempfile.mkdtemp(prefix="featbench"))
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (args.image_size, args.image_size, 3), dtype=np.uint8) for _ in range(args.images)]
    write_imagefolder(root, imgs, [i % 10 for i in range(args.images)], [f"c{i}" for i in range(10)], split="train")
    train_raw, _, _ = load_image_classification_data(train_dir=str(root / "train"), train_val_split=0)
    cache = root / "cache"

    model = TransferModel.from_pretrained(ckpt, num_labels=10, image_size=args.image_size, trainable_stages=0)
    _, eval_tf = build_transforms(model.image_processor, 3, image_size=args.image_size, augment=False)
    uncached_epoch = epochs(model, with_transforms(train_raw, eval_tf), args.batch_size, args.workdir, collate_fn, 1)[0]

    model = TransferModel.from_pretrained(ckpt, num_labels=10, image_size=args.image_size, trainable_stages=0)
    t = time.perf_counter()
    feats = cache_pooled_features(model, train_raw, eval_tf, cache_dir=cache, batch_size=args.batch_size)
    compute = time.perf_counter() - t
    epoch1_head, epoch2 = epochs(model, feats, args.batch_size, args.workdir, None, 2)
    t = time.perf_counter()
    cache_pooled_features(TransferModel.from_pretrained(ckpt, num_labels=10, image_size=args.image_size),
                          train_raw, eval_tf, cache_dir=cache, batch_size=args.batch_size)
    later_run_load = time.perf_counter() - t
    check = content_check_seconds(train_raw)
    epoch1 = compute + epoch1_head
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "torch": torch.__version__, "args": vars(args),
        "uncached_epoch_s": uncached_epoch, "epoch1_s": epoch1, "epoch1_feature_compute_s": compute,
        "epoch2_s": epoch2, "later_run_cache_load_s": later_run_load, "epoch2_over_epoch1": epoch2 / epoch1,
        "content_check_s": check, "content_check_over_cold_pass": check / compute,
        "cache_hit_over_cold_pass": later_run_load / compute,
        "command": "python benchmarks/feature_cache.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(f"{args.images} images, MobileNetV2 {args.image_size}px, batch {args.batch_size}")
    print(f"uncached epoch       {uncached_epoch:8.2f} s")
    print(f"epoch 1 (compute+head) {epoch1:6.2f} s  (features {compute:.2f} s)")
    print(f"epoch 2 (cached)     {epoch2:8.2f} s  -> ratio {epoch2 / epoch1:.3f} (target <= 0.05)")
    print(f"later run, cache load {later_run_load:7.2f} s  -> {later_run_load / compute:.3f} of the cold pass")
    print(f"content check        {check:8.3f} s  -> ratio {check / compute:.3f} of the cold pass (target <= 0.10)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "feature_cache.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
