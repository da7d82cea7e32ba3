"""Sweep: which timm architectures TransferModel takes, one smallest model per timm model module.

    python benchmarks/timm_sweep.py [--max-params 150e6] [--timeout 60] [--size 128] [--modules resnet convnext ...]

For every timm model module (``timm.models.<module>``: one family, e.g. ``resnet``, ``convnext``,
``vision_transformer``), the smallest of a few candidate models (by name, then by parameter count on the meta
device) is built with random weights (``pretrained=False``), saved as a transformers ``TimmWrapper`` checkpoint, and:

1. loaded with ``TransferModel.from_pretrained(path, image_size=N)`` (N = ``--size``, at most the model's own input
   size; models that take only their own size, or fail at N, get their own size): how it runs
   (``chain``: stem -> stages -> pool -> head run by TransferModel; ``native``: timm's own forward) and its stages,
   or the refusal's reason;
2. its logits compared with the plain transformers model's (eval mode; and with the backbone frozen, through the
   fast path's eager inference copies);
3. re-headed (3 classes) and frozen as a FreezeScheduler does (top stage trains, the others frozen but kept registered
   for a later unfreeze), two SGD steps with weight decay: frozen parameters must stay bit-identical, the head move;
4. the plain transformers model frozen by stage (`freeze_model`, what FreezeScheduler does on a plain model).

Families are classified CNN / hybrid / transformer. Writes benchmarks/results/timm_sweep.json and timm_sweep.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import platform
import re
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_transfer_cnn import FastOptions, TransferModel  # noqa: E402
from hf_transfer_cnn.freezing import freeze_model, units_for  # noqa: E402
from hf_transfer_cnn.registry import get_module  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FAST = FastOptions(jit=False)
"""Frozen stages run as eager inference copies (BN folded, channels_last): building TorchScript graphs for every
model would take most of the sweep's time (they are checked elsewhere: tests/test_fastpath.py)."""

HYBRID = {"byoanet", "coat", "csatv2", "edgenext", "efficientformer", "efficientformer_v2", "efficientvim",
          "efficientvit_mit", "efficientvit_msra", "fastvit", "gcvit", "iformer", "levit", "lowformer", "maxxvit",
          "metaformer", "mobilenetv5", "mobilevit", "nextvit", "sequencer", "shvit", "swiftformer", "tiny_vit",
          "vision_transformer_hybrid", "visformer", "vitamin"}
TRANSFORMER = {"beit", "cait", "convit", "crossvit", "davit", "deepseek_vit", "deit", "eva", "focalnet", "gemma4_vit",
               "hiera", "hieradet_sam2", "mlp_mixer", "mvitv2", "naflexvit", "nest", "pit", "pvt_v2", "qwen3_vit",
               "swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr", "tnt", "twins",
               "vision_transformer", "vision_transformer_relpos", "vision_transformer_sam", "volo", "xcit"}
"""Everything else is a CNN (convolutions only; MLP-free, attention-free): resnet, convnext, efficientnet, ..."""

_SMALL = ["test", "atto", "femto", "pico", "nano", "xxs", "tiny", "xs", "mini", "small", "s0", "b0", "m0", "050",
          "_s", "_t"]
_BIG = ["huge", "giant", "large", "base", "_l", "_m", "_b"]


def category(module: str) -> str:
    return "hybrid" if module in HYBRID else "transformer" if module in TRANSFORMER else "cnn"


def _name_key(name: str) -> tuple:
    """Smaller-sounding names first: a size word, no big word, the smallest number in the name, shorter."""
    small = next((i for i, w in enumerate(_SMALL) if w in name), len(_SMALL))
    big = any(w in name for w in _BIG)
    first_number = next((int(n) for n in re.findall(r"\d+", name)), 10**6)
    return (small, big, first_number, len(name), name)


def modules_and_models() -> dict[str, list[str]]:
    import timm
    from timm.models._registry import _model_to_module

    out: dict[str, list[str]] = collections.defaultdict(list)
    for name in timm.list_models():
        out[_model_to_module.get(name, "?")].append(name)
    return dict(sorted(out.items()))


def param_count(name: str) -> int | None:
    import timm

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = timm.create_model(name, pretrained=False)
        return sum(p.numel() for p in net.parameters())
    except Exception:
        return None


def smallest(names: list[str], candidates: int = 3) -> tuple[str, int | None]:
    """The smallest of the `candidates` smallest-sounding names (by parameter count)."""
    by_number = sorted(names, key=lambda n: _name_key(n)[2:])  # the smallest depth / width number
    picks = list(dict.fromkeys(sorted(names, key=_name_key)[:candidates] + by_number[:candidates]))
    counted = [(param_count(n), n) for n in picks]
    known = [(c, n) for c, n in counted if c is not None]
    if not known:
        return picks[0], None
    c, n = min(known)
    return n, c


def timm_checkpoint(name: str, path: Path, num_classes: int = 10, **model_args) -> tuple[int, bool]:
    """A timm `name` with random weights saved as a TimmWrapper checkpoint at `path`; returns its input size and
    whether it takes only that size."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=num_classes, **model_args)
    config = T.TimmWrapperConfig(architecture=name, num_labels=num_classes, pretrained_cfg=net.pretrained_cfg,
                                 model_args=model_args or None)
    model = T.TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(net.state_dict())
    model.save_pretrained(path)
    size = net.pretrained_cfg.get("input_size") or (3, 224, 224)
    return int(max(size[1:])), bool(net.pretrained_cfg.get("fixed_input_size"))


class Timeout(Exception):
    pass


@contextlib.contextmanager
def time_box(seconds: int):
    def on_alarm(signum, frame):
        raise Timeout(f"over {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _train_frozen(model, size: int) -> dict:
    """Re-head, freeze all but the top stage (the others kept registered, as FreezeScheduler does), two SGD steps."""
    model.set_head(3)
    names = model.stage_names
    model.freeze(1, keep_requires_grad=names[:-1])
    frozen = {n: p.detach().clone() for u in model.stage_units()[:-1] for n, p in _named(model, u)}
    head = [p.detach().clone() for p in get_module(model, model.arch.head).parameters()]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=0.1)
    model.train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, model.num_input_channels, size, size, generator=g)
    y = torch.tensor([0, 1])
    for _ in range(2):
        opt.zero_grad()
        model(pixel_values=x, labels=y).loss.backward()
        opt.step()
    params = dict(model.named_parameters())
    moved = [n for n, before in frozen.items() if not torch.equal(params[n], before)]
    head_moved = any(not torch.equal(a, b) for a, b in zip(get_module(model, model.arch.head).parameters(), head))
    return {"frozen_unchanged": not moved, "frozen_moved": moved[:3], "head_trained": head_moved}


def _named(model, unit):
    ids = {id(p) for p in unit.parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


def check(name: str, workdir: Path, size: int | None = None) -> dict:
    """Build `name`, load it as a TransferModel at `size` (at most its own input size, which models that take only
    that size get) and run the checks."""
    from hf_transfer_cnn.families.timm_wrapper import UnsupportedTimmModelError

    path = workdir / name
    try:
        native_size, fixed = timm_checkpoint(name, path)
    except Exception as err:  # timm cannot build it, or transformers cannot save it (shared tensors)
        return {"model": name, "status": "skipped", "reason": f"no TimmWrapper checkpoint: {type(err).__name__}: "
                                                              f"{str(err)[:200]}"}
    size = native_size if fixed else min(size or native_size, native_size)
    try:
        model = TransferModel.from_pretrained(path, image_size=size, trainable_stages="all").eval()
    except UnsupportedTimmModelError as err:
        if size == native_size or "fails at" not in err.why:
            return {"model": name, "image_size": size, "status": "refused", "reason": err.why}
        size = native_size  # a model built for its own size (window / halo multiples): take that one
        try:
            model = TransferModel.from_pretrained(path, image_size=size, trainable_stages="all").eval()
        except UnsupportedTimmModelError as err:
            return {"model": name, "image_size": size, "status": "refused", "reason": err.why}
    out: dict = {"model": name, "image_size": size}
    plain = T.AutoModelForImageClassification.from_pretrained(path).eval()
    x = torch.randn(2, model.num_input_channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = plain(pixel_values=x).logits
        ours = model(pixel_values=x).logits
        model.freeze(0, fast=FAST)  # the backbone frozen: its modules run through the fast path
        frozen = model(pixel_values=x).logits
    scale = theirs.abs().max() + 1  # random weights: logits can be huge
    diff, frozen_diff = ((ours - theirs).abs().max() / scale).item(), ((frozen - theirs).abs().max() / scale).item()
    out.update(forward=model.arch.forward, stages=len(model.stage_names) - 1, logits_rel_diff=diff,
               frozen_logits_rel_diff=frozen_diff)
    out.update(_train_frozen(model, size))
    out["plain_model_stages"] = len(units_for(plain)) - 1
    freeze_model(plain, 1)
    ok = diff <= 1e-4 and out["frozen_unchanged"] and out["head_trained"]
    return {**out, "status": "works" if ok else "wrong"}


def sweep(modules: list[str] | None, max_params: float, timeout: int, size: int | None) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for module, names in modules_and_models().items():
            if modules and module not in modules:
                continue
            t0 = time.perf_counter()
            name, params = smallest(names)
            row = {"module": module, "category": category(module), "model": name, "params": params}
            if params is not None and params > max_params:
                row.update(status="skipped", reason=f"smallest model has {params / 1e6:.0f}M parameters")
            else:
                try:
                    with time_box(timeout):
                        row.update(check(name, Path(tmp), size))
                except Timeout as err:
                    row.update(status="skipped", reason=f"timed out ({err})")
                except Exception as err:  # a bug, or a model that cannot even be built: recorded, the sweep goes on
                    row.update(status="error", reason=f"{type(err).__name__}: {str(err)[:300]}")
            row["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"{module:28s} {name:36s} {row['status']:8s} {row.get('forward', '')}  {row.get('reason', '')[:100]}",
                  flush=True)
            results.append(row)
    return results


def summary(results: list[dict]) -> dict:
    out = {}
    for cat in ("cnn", "hybrid", "transformer"):
        rows = [r for r in results if r["category"] == cat]
        tried = [r for r in rows if r["status"] != "skipped"]
        out[cat] = {"works": sum(r["status"] == "works" for r in rows), "tried": len(tried), "modules": len(rows),
                    "chain": sum(r.get("forward") == "chain" and r["status"] == "works" for r in rows),
                    "native": sum(r.get("forward") == "native" and r["status"] == "works" for r in rows)}
    return out


def _diffs(r: dict) -> str:
    if "logits_rel_diff" not in r:
        return ""
    note = f"logits vs plain: {r['logits_rel_diff']:.0e}"
    if r.get("frozen_logits_rel_diff", 0) > 1e-4:
        note += f"; frozen (fast path): {r['frozen_logits_rel_diff']:.0e}"
    if r.get("frozen_moved"):
        note += f"; frozen moved: {', '.join(r['frozen_moved'])}"
    return note


def markdown(results: list[dict], info: dict) -> str:
    s = info["summary"]
    lines = [f"# timm sweep ({info['date']}, timm {info['timm']}, transformers {info['transformers']})", "",
             f"Command: `{info['command']}`", ""]
    for cat, c in s.items():
        lines.append(f"* {cat}: {c['works']}/{c['tried']} tried modules work ({c['chain']} as a chain, {c['native']} "
                     f"through timm's forward); {c['modules'] - c['tried']} skipped")
    lines += ["", "| module | category | model | params (M) | status | forward | stages | note |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        params = f"{r['params'] / 1e6:.1f}" if r.get("params") else "?"
        note = r.get("reason", "") or _diffs(r)
        note = note.replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['module']} | {r['category']} | {r['model']} | {params} | {r['status']} | "
                     f"{r.get('forward', '')} | {r.get('stages', '')} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-params", type=float, default=150e6)
    parser.add_argument("--timeout", type=int, default=60, help="seconds per model")
    parser.add_argument("--size", type=int, default=128, help="input size (at most the model's own; models that "
                        "take only their own size get it); 0: each model's own size")
    parser.add_argument("--modules", nargs="*", help="only these timm modules")
    parser.add_argument("--output", default=str(RESULTS / "timm_sweep"), help="path without extension")
    args = parser.parse_args(argv)
    import timm

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    warnings.filterwarnings("ignore")
    T.logging.set_verbosity_error()
    t0 = time.perf_counter()
    results = sweep(args.modules, args.max_params, args.timeout, args.size or None)
    info = {"date": time.strftime("%Y-%m-%d"), "timm": timm.__version__, "transformers": T.__version__,
            "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
            "command": " ".join(["python benchmarks/timm_sweep.py", *(sys.argv[1:] if argv is None else argv)]),
            "seconds": round(time.perf_counter() - t0, 1), "summary": summary(results)}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**info, "results": results}, indent=1))
    out.with_suffix(".md").write_text(markdown(results, info))
    print(json.dumps(info["summary"]))
    return info


if __name__ == "__main__":
    main()
