"""Benchmark 1: train-step throughput (img/s) — ours vs plain PyTorch/Trainer-style steps, same run, same model.

    python benchmarks/throughput.py [--image-size 96] [--batch-size 32] [--device cpu|cuda] [--bf16] [--channels-last]
                                    [--no-jit]

Rows: plain transformers eager inference (the "limit"), a naive frozen backbone (requires_grad off, BN eval),
a plain full fine-tune step, and our feature extraction / top-2 fine-tune / full fine-tune steps (defaults);
`--ablate OPTION` adds our top-2 step with that `FastOptions` switch off, to show what it contributes.
The configurations of a comparison are timed round-robin (every round times each in turn) and each ratio is the
median of the per-round ratios, so drift in the host's speed, large on a shared VM, does not land on one side of
it. By default the round-robin runs within two groups, inference-like (eager inference, naive frozen step, our
feature extraction) and fine-tuning (plain full, our top-2, our full), as each runs in practice: next to steps of
its own kind. `--interleave all` puts all six in every round; a full fine-tune step between two inference-like
blocks evicts their caches and heap, which slows whichever block follows it.
`--no-jit` makes torch.jit's trace/script/freeze/optimize_for_inference raise for the whole run: the defaults must
not need TorchScript (deprecated by PyTorch). Writes benchmarks/results/throughput[-<device>].json.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import MobileNetV2Config, MobileNetV2ForImageClassification  # noqa: E402

from hf_transfer_cnn import TransferModel  # noqa: E402
from hf_transfer_cnn.fastpath import FastOptions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def make_checkpoint(path: Path) -> str:
    """Full-size MobileNetV2 (ImageNet layout, random weights: speed does not depend on the values)."""
    if not (path / "model.safetensors").exists():
        torch.manual_seed(0)
        cfg = MobileNetV2Config(tf_padding=False, layer_norm_eps=1e-5, num_labels=1000)
        MobileNetV2ForImageClassification(cfg).save_pretrained(path)
    return str(path)


def parse_args(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Add the options every benchmark shares (--workdir, --threads), parse, apply --threads."""
    ap.add_argument("--workdir", default="/tmp/hf_transfer_cnn_bench")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def timed_round_robin(steps: dict, batches: int, repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of every step, `repeats` rounds of `batches` calls each, the configurations taking turns
    within each round: a host whose speed drifts (shared VM) then slows every configuration of a round alike, and
    the per-round ratios stay comparable even when the absolute numbers move."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync()
    rounds: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t = time.perf_counter()
            for _ in range(batches):
                step()
            sync()
            rounds[name].append((time.perf_counter() - t) / batches)
    return rounds


INFERENCE_LIKE = ("plain eager inference (limit)", "plain frozen backbone step (naive)", "ours feature extraction step")


def timing_groups(names: list[str], interleave: str = "groups") -> list[list[str]]:
    """The configurations timed round-robin together: all of them, or the inference-like ones and the rest."""
    if interleave == "all":
        return [list(names)]
    return [[n for n in names if n in INFERENCE_LIKE], [n for n in names if n not in INFERENCE_LIKE]]


def forbid_torchscript() -> None:
    """Make torch.jit's graph builders raise from now on in this process."""
    def refuse(*args, **kwargs):
        raise RuntimeError("TorchScript is switched off for this benchmark (--no-jit)")

    for name in ("trace", "script", "freeze", "optimize_for_inference"):
        setattr(torch.jit, name, refuse)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def train_step_fn(model, x, y, autocast):
    """One Trainer-style optimizer step: forward, cross-entropy, backward, grad-norm clip at 1.0 and fused AdamW
    (Trainer's defaults: max_grad_norm=1.0, optim="adamw_torch_fused" with torch >= 2.8)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True)
    model.train()

    def step():
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # Trainer's default max_grad_norm
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7, help="round-robin rounds (each times every configuration)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (both sides)")
    ap.add_argument("--channels-last", action="store_true", help="baselines also in channels_last")
    ap.add_argument("--interleave", choices=("groups", "all"), default="groups",
                    help="round-robin within the inference-like and fine-tuning groups (default), or over all six")
    ap.add_argument("--tag", default="", help="suffix of the result file (throughput-<tag>.json)")
    ap.add_argument("--ablate", action="append", default=[], metavar="OPTION",
                    choices=[k for k, f in FastOptions.__dataclass_fields__.items() if f.default is True],
                    help="also time our top-2 step with this FastOptions switch off, in the same round-robin "
                         "(repeatable)")
    ap.add_argument("--no-jit", action="store_true",
                    help="make torch.jit's trace/script/freeze/optimize_for_inference raise (the defaults must not "
                         "use them)")
    args = parse_args(ap, argv)
    if args.no_jit:
        forbid_torchscript()

    dev = torch.device(args.device)
    ckpt = make_checkpoint(Path(args.workdir) / "mobilenet_v2_full")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(dev)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(dev)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    xb = x.contiguous(memory_format=fmt)

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16)

    def plain(num_labels=10):
        m = MobileNetV2ForImageClassification.from_pretrained(ckpt, num_labels=num_labels,
                                                              ignore_mismatched_sizes=True).to(dev)
        return m.to(memory_format=fmt)

    def ours(stages, **off):
        model = TransferModel.from_pretrained(ckpt, num_labels=10, trainable_stages=stages).to(dev)
        if off:
            model.freeze(stages, fast=FastOptions(**off))
        return model

    m = plain(1000).eval()

    def infer():
        with torch.no_grad(), autocast():
            m(pixel_values=xb)

    naive = plain()
    for p in naive.mobilenet_v2.parameters():
        p.requires_grad_(False)
    step = train_step_fn(naive, xb, y, autocast)

    def naive_step():
        naive.mobilenet_v2.eval()  # what a careful user does by hand every step
        step()

    steps = {
        "plain eager inference (limit)": infer,
        "plain frozen backbone step (naive)": naive_step,
        "plain full fine-tune step": train_step_fn(plain(), xb, y, autocast),
        "ours feature extraction step": train_step_fn(ours(0), x, y, autocast),
        "ours top-2 fine-tune step": train_step_fn(ours(2), x, y, autocast),
        "ours full fine-tune step": train_step_fn(ours("all"), x, y, autocast),
    }
    for option in args.ablate:
        steps[f"ours top-2, {option} off"] = train_step_fn(ours(2, **{option: False}), x, y, autocast)
    groups = timing_groups(list(steps), args.interleave)
    rounds = {}
    for group in groups:
        rounds.update(timed_round_robin({k: steps[k] for k in group}, args.batches, args.repeats))
    ips = {k: args.batch_size / statistics.median(v) for k, v in rounds.items()}

    ratio_pairs = {
        "feature_extraction / eager_inference (target >= 2.5)":
            ("ours feature extraction step", "plain eager inference (limit)"),
        "top2_finetune / plain_full_finetune (target >= 3)": ("ours top-2 fine-tune step", "plain full fine-tune step"),
        "ours_full / plain_full": ("ours full fine-tune step", "plain full fine-tune step"),
    }
    for option in args.ablate:
        ratio_pairs[f"top2 / top2 with {option} off"] = ("ours top-2 fine-tune step", f"ours top-2, {option} off")
    # per round: img/s of the first / img/s of the second = seconds of the second / seconds of the first
    per_round = {k: [b / a for a, b in zip(rounds[fast], rounds[slow])] for k, (fast, slow) in ratio_pairs.items()}
    ratios = {k: statistics.median(v) for k, v in per_round.items()}
    ratio_rounds = {k: [round(r, 3) for r in v] for k, v in per_round.items()}
    print(f"\nMobileNetV2 {args.image_size}px, batch {args.batch_size}, {args.device}, bf16={args.bf16}, "
          f"threads={torch.get_num_threads()}")
    print(f"{'configuration':45s} {'img/s':>9s}")
    for k, v in ips.items():
        print(f"{k:45s} {v:9.1f}")
    for k, v in ratios.items():
        print(f"{k:55s} {v:6.2f}x  (rounds: {', '.join(f'{r:.2f}' for r in ratio_rounds[k])})")
    RESULTS.mkdir(exist_ok=True)
    tag = ("" if args.device == "cpu" else f"-{args.device}") + (f"-{args.tag}" if args.tag else "")
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "device": str(dev), "args": vars(args), "img_per_s": ips, "ratios": ratios,
           "ratio_per_round": ratio_rounds, "timing": f"round-robin ({args.interleave}: {groups}): each round times "
           "every configuration of its group in turn; img/s from the median round, ratios = median of the per-round "
           "ratios",
           "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    (RESULTS / f"throughput{tag}.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
