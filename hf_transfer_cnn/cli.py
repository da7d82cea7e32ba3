"""The ``hf-transfer-cnn`` command.

Subcommands (each one an ``add_<name>_command(subparsers)`` function that sets ``func``):

* ``convert ARCH --weights FILE --output DIR`` — torchvision weights as a Hub-ready checkpoint;
* ``init ARCH --output DIR`` — a randomly initialised checkpoint (LeNet-5 included);
* ``predict MODEL IMAGE...`` — top-k labels for image files;
* ``push DIR --repo-id REPO`` — upload a finished directory to the Hub (also the retry after a failed push).

``main(argv)`` returns the exit status: 0 on success, 2 for a problem with the arguments or inputs (the message
says what is wrong and what to do), 1 when the Hub refused a push (the local directory is complete).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from .validation import is_positive_int

__all__ = ["main", "build_parser", "predict", "add_convert_command", "add_init_command", "add_predict_command",
           "add_push_command"]

logger = logging.getLogger("hf_transfer_cnn")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not is_positive_int(value):
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


_OVERWRITE_HELP = ("replace the previous checkpoint in a non-empty output directory (a directory holding other files "
                   "is refused, never emptied)")


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_torchvision

    out = convert_torchvision(args.arch, args.weights, args.output, num_labels=args.num_labels,
                              transform_input=False if args.no_transform_input else None,
                              drop_aux_classifiers=args.drop_aux_classifiers, overwrite=args.overwrite,
                              push_to_hub=args.push_to_hub)
    pushed = f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""
    print(f"Wrote {args.arch} checkpoint to {out}{pushed}")
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from .convert import init_checkpoint

    out = init_checkpoint(args.arch, args.output, num_labels=args.num_labels, num_channels=args.num_channels,
                          image_size=args.image_size, seed=args.seed, overwrite=args.overwrite,
                          push_to_hub=args.push_to_hub)
    print(f"Wrote randomly initialised {args.arch} checkpoint to {out}"
          + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_output_dir

    url = push_output_dir(args.directory, args.repo_id, private=args.private)
    print(f"Pushed {args.directory} to {args.repo_id}: {url}")
    return 0


def add_convert_command(subparsers) -> argparse.ArgumentParser:
    from .convert import convertible_archs

    p = subparsers.add_parser(
        "convert", help="convert torchvision weights (.pth) into a Hub-ready checkpoint directory",
        description="Convert a torchvision state dict into a checkpoint directory (config.json, model.safetensors, "
                    "preprocessor_config.json). ResNet and MobileNetV2 become transformers' own classes; the "
                    "conversion is checked against torchvision's logits before anything is written.")
    p.add_argument("arch", metavar="ARCH", help=f"one of: {', '.join(convertible_archs())}")
    p.add_argument("--weights", required=True, metavar="FILE", help="torchvision-format state dict (.pth)")
    p.add_argument("--output", required=True, metavar="DIR", help="checkpoint directory to write")
    p.add_argument("--num-labels", type=_positive_int, metavar="N",
                   help="give the model a fresh N-label classifier (default: keep the weights' classifier)")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload the directory to this Hub repo")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.add_argument("--no-transform-input", action="store_true",
                   help="googlenet: the weights do not expect torchvision's input transform")
    p.add_argument("--drop-aux-classifiers", action="store_true", help="googlenet: leave out the aux classifiers")
    p.set_defaults(func=_cmd_convert)
    return p


def add_init_command(subparsers) -> argparse.ArgumentParser:
    from .convert import init_archs

    p = subparsers.add_parser(
        "init", help="write a randomly initialised checkpoint of any supported architecture",
        description="Write a randomly initialised checkpoint directory (defaults: 1000 labels, 3 channels, 224 px; "
                    "lenet5: 10 labels, 1 channel, 32 px).")
    p.add_argument("arch", metavar="ARCH", help=f"one of: {', '.join(init_archs())}")
    p.add_argument("--output", required=True, metavar="DIR", help="checkpoint directory to write")
    p.add_argument("--num-labels", type=_positive_int, metavar="N")
    p.add_argument("--num-channels", type=_positive_int, metavar="C", help="input channels (1 = grayscale)")
    p.add_argument("--image-size", type=_positive_int, metavar="S", help="square input size in pixels")
    p.add_argument("--seed", type=int, help="random seed for the initialisation")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload the directory to this Hub repo")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.set_defaults(func=_cmd_init)
    return p


def add_push_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("push", help="upload a checkpoint/output directory to the Hub",
                              description="Upload a finished directory to a Hub model repo (created if needed); "
                                          "files already on the Hub unchanged are skipped, so it also retries.")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--repo-id", required=True, metavar="REPO")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.set_defaults(func=_cmd_push)
    return p


def predict(model_name_or_path: str, images: Sequence[str], top_k: int = 5,
            **hub_kwargs) -> list[list[tuple[str, float]]]:
    """Top-k (label, probability) for each image file, preprocessed exactly as the recipe's evaluation does."""
    import torch

    from .data import build_transforms, load_image
    from .model import TransferModel
    from .model.loading import check_model_path

    check_model_path(model_name_or_path)  # a typo'd folder: "no such folder", not the Hub's repo-id rules
    model = TransferModel.from_pretrained(model_name_or_path, **hub_kwargs).eval()
    _, eval_tf = build_transforms(model.image_processor, model.num_input_channels, augment=False)
    batch = []
    for path in images:
        try:
            batch.append(eval_tf(load_image(str(path))))
        except Exception as err:
            raise ValueError(f"cannot read image {path!r}: {err}") from err
    with torch.no_grad():
        probs = model(torch.stack(batch)).logits.softmax(-1)
    k = min(top_k, probs.shape[-1])
    values, indices = probs.topk(k, dim=-1)
    labels = model.config.id2label
    return [[(labels[int(i)], float(v)) for v, i in zip(vs, ids)] for vs, ids in zip(values, indices)]


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    results = predict(args.model, args.images, top_k=args.top_k)
    for path, preds in zip(args.images, results):
        if args.json:
            print(json.dumps({"image": path, "predictions": [{"label": lab, "score": p} for lab, p in preds]}))
        else:
            print(f"{path}: " + ", ".join(f"{lab} ({p:.3f})" for lab, p in preds))
    return 0


def add_predict_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="top-k labels for image files",
                              description="Classify images with a model directory or Hub id (TransferModel or any "
                                          "supported transformers checkpoint).")
    p.add_argument("model", metavar="MODEL", help="Hub id or local directory")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--top-k", type=_positive_int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=_cmd_predict)
    return p


COMMANDS: list[Callable] = [add_convert_command, add_init_command, add_predict_command, add_push_command]
"""Subcommand builders, in help order; a new subcommand appends its ``add_<name>_command`` here."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-transfer-cnn",
                                     description="CNN transfer learning for the Hugging Face ecosystem.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hf-transfer-cnn`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from .convert import ConversionError, UnknownArchError
    from .hub import HubPushError

    try:
        return args.func(args)
    except HubPushError as err:
        print(f"hf-transfer-cnn {args.command}: error: {err}", file=sys.stderr)
        return 1
    except (ConversionError, UnknownArchError, FileExistsError, FileNotFoundError, OSError, ValueError) as err:
        print(f"hf-transfer-cnn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
