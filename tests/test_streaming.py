"""`--streaming true`: the training data as a datasets.IterableDataset, step-based only, split between DDP
processes with split_dataset_by_node, on a local imagefolder (a Hub dataset streams the same way)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_transfer_cnn import TransferModel
from hf_transfer_cnn.data import DataArguments, TransformArguments
from hf_transfer_cnn.recipe import parse_recipe_args, run_finetune

REPO = Path(__file__).resolve().parents[1]
GRADUAL = str(REPO / "recipes" / "gradual.yaml")
TRAINED = ("stage3", "stage4")  # the top 2 stages, unfrozen at step 2


@pytest.fixture(scope="module")
def stream_setup(checkpoint_factory, tmp_path_factory) -> dict[str, str]:
    """A tiny ResNet and an imagefolder: train 2 classes x 4 images (+ one unreadable file), validation 2 x 2."""
    from hf_transfer_cnn.data import write_imagefolder

    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("validation", 2)):
        images = [np.clip(np.array(rgb) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                  for rgb in [(220, 30, 30)] * n + [(30, 40, 220)] * n]
        write_imagefolder(root / "data", images, [0] * n + [1] * n, ["red", "blue"], split=split)
    (root / "data" / "train" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {"ckpt": checkpoint_factory("resnet", root / "ckpt", num_labels=4), "train": str(root / "data" / "train"),
            "validation": str(root / "data" / "validation")}


def _argv(setup: dict, out: Path, *extra: str) -> list[str]:
    return ["--config", GRADUAL, "--model_name_or_path", setup["ckpt"], "--train_dir", setup["train"],
            "--validation_dir", setup["validation"], "--output_dir", str(out), "--streaming", "true",
            "--max_steps", "4", "--unfreeze_at_step", "2", "--num_stages", "2", "--per_device_train_batch_size", "2",
            "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "true", *extra]


def _assert_only_top_stages_trained(out: Path, ckpt: str) -> None:
    """Everything below the top two stages (BatchNorm statistics included) is bit-identical to the checkpoint."""
    from hf_transfer_cnn.freezing import units_for

    model = TransferModel.from_pretrained(out).eval()
    base = TransferModel.from_pretrained(ckpt, num_labels=2)
    for trained, pretrained in zip(units_for(model), units_for(base)):
        tensors = [(a, b) for m, n in zip(trained.modules, pretrained.modules)
                   for a, b in zip(m.state_dict().values(), n.state_dict().values())]
        assert tensors and all(a.shape == b.shape for a, b in tensors)
        assert all(torch.equal(a, b) for a, b in tensors) == (trained.name not in TRAINED), trained.name


def test_streaming_gradual_run(stream_setup, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn"):
        results = run_finetune(*parse_recipe_args(_argv(stream_setup, out)))
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["train_steps"] == results["train_steps"] == 4
    assert saved["phases"] == [[0, []], [2, list(TRAINED)]]
    assert saved["num_eval_images"] == 4 and "eval_accuracy" in saved and "before_accuracy" in saved
    assert "num_train_images" not in saved and "epoch" not in saved  # a stream has neither
    assert any("broken.png" in r.getMessage() for r in caplog.records)  # skipped as it came, and said so
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    _assert_only_top_stages_trained(out, stream_setup["ckpt"])


def _without(argv: list[str], *names: str) -> list[str]:
    """`argv` less the options `names` and their values."""
    drop = {i + k for i, a in enumerate(argv) if a[2:] in names for k in (0, 1)}
    return [a for i, a in enumerate(argv) if i not in drop]


def test_streaming_refuses_what_a_stream_cannot_do(stream_setup, tmp_path):
    argv = _without(_argv(stream_setup, tmp_path / "x"), "unfreeze_at_step", "num_stages")

    def run(*extra):
        run_finetune(*parse_recipe_args([*argv, *extra]))

    with pytest.raises(ValueError, match="streaming needs --max_steps N: a stream has no length"):
        run("--max_steps", "-1")
    with pytest.raises(ValueError, match="unfreeze_at_epoch cannot be used, because a stream has no length"):
        run("--unfreeze_at_epoch", "1")
    with pytest.raises(ValueError, match="cache_features cannot be used, because caching computes"):
        run("--strategy", "feature_extraction", "--cache_features", "true")
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_stream_parts_of_two_processes_are_disjoint_and_cover_the_data(stream_setup):
    """split_dataset_by_node: each process reads its own part; together the parts are the (readable) data."""
    from hf_transfer_cnn.recipe.args import ModelArguments
    from hf_transfer_cnn.recipe.prepare import load_model
    from hf_transfer_cnn.recipe.streaming import build_stream_datasets, load_stream

    model_args = ModelArguments(model_name_or_path=stream_setup["ckpt"], streaming=True, shuffle_buffer_size=4)
    data_args = DataArguments(train_dir=stream_setup["train"], validation_dir=stream_setup["validation"])
    transform_args = TransformArguments(augment=False)  # the training transform is the deterministic one
    data = load_stream(model_args, data_args)
    model = load_model(model_args, data.id2label, 0)
    streams = [build_stream_datasets(model, data, model_args, data_args, transform_args,
                                     SimpleNamespace(world_size=2, process_index=rank, seed=0,
                                                     per_device_train_batch_size=2)).train for rank in (0, 1)]
    rows = [[next(it) for _ in range(12)] for it in map(iter, streams)]  # endless: passes until the consumer stops
    assert all(len(r) == 12 for r in rows)
    for epoch in (0, 1):  # each pass over the stream (reshuffled), as the processes read it
        parts = []
        for stream in streams:
            stream.stream.set_epoch(epoch)
            parts.append({(round(float(r["pixel_values"].sum()), 2), r["labels"]) for r in stream.stream})
        assert not parts[0] & parts[1]  # disjoint
        assert len(parts[0] | parts[1]) == 8  # together: all 8 readable images (broken.png skipped)
        assert sorted(label for _, label in parts[0] | parts[1]) == [0] * 4 + [1] * 4


def test_streaming_torchrun_two_processes(stream_setup, tmp_path, torchrun):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    cmd = [*torchrun, str(REPO / "recipes" / "finetune.py"), *_argv(stream_setup, out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]  # torchrun exits 0 only when both ranks did
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["world_size"] == 2 and saved["train_steps"] == 4
    assert saved["phases"] == [[0, []], [2, list(TRAINED)]]
    assert res.stdout.count('"train_wall_time_s"') == 1  # the summary, printed by the main process only
    _assert_only_top_stages_trained(out, stream_setup["ckpt"])


def test_stream_sources_and_their_errors(tmp_path):
    """A save_to_disk dataset (Hub-style columns) streams like an imagefolder; a stream whose classes are not
    declared (string labels) or that lacks a split is refused with what to do."""
    import datasets
    from PIL import Image

    from hf_transfer_cnn.recipe.args import ModelArguments
    from hf_transfer_cnn.recipe.streaming import load_stream

    feats = datasets.Features({"img": datasets.Image(), "labels": datasets.ClassLabel(names=["a", "b", "c"])})
    rows = {"img": [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(6)], "labels": [0, 1, 2] * 2}
    split = datasets.Dataset.from_dict(rows, features=feats)
    datasets.DatasetDict({"train": split, "val": split}).save_to_disk(str(tmp_path / "saved"))
    model_args = ModelArguments(model_name_or_path="unused", streaming=True)
    args = DataArguments(dataset_name=str(tmp_path / "saved"), image_column_name="img", label_column_name="labels",
                         max_eval_samples=4)
    data = load_stream(model_args, args)
    assert data.id2label == {0: "a", 1: "b", 2: "c"} and data.eval_split == "val" and data.num_eval == 4
    assert data.num_train is None and len(list(data.train)) == 6
    with pytest.raises(ValueError, match="no split 'test'"):
        load_stream(model_args, DataArguments(dataset_name=str(tmp_path / "saved"), image_column_name="img",
                                              label_column_name="labels", eval_split_name="test"))
    with pytest.raises(ValueError, match="no label column 'label'.*Set image_column_name/label_column_name"):
        load_stream(model_args, DataArguments(dataset_name=str(tmp_path / "saved"), image_column_name="img"))
    strings = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": rows["img"], "label": list("abcabc")}, features=strings).save_to_disk(
        str(tmp_path / "strings"))
    with pytest.raises(ValueError, match="not a ClassLabel: a stream's classes must be declared up front"):
        load_stream(model_args, DataArguments(dataset_name=str(tmp_path / "strings")))
    with pytest.raises(ValueError, match="expected_label_names"):
        load_stream(ModelArguments(model_name_or_path="unused", streaming=True, expected_label_names="a,c,b"), args)
