"""Issue "First try works": every shipped recipe runs on your own data with only the checkpoint, the data folders
and the run length given on the command line (the YAMLs name microsoft/resnet-50 and the beans dataset); a data
source on the command line replaces the file's, and `none`/`null` unsets an option."""

from __future__ import annotations

import json
import logging
import runpy
import warnings
from pathlib import Path

import numpy as np
import pytest

from hf_transfer_cnn.recipe import parse_recipe_args

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))
GRADUAL = str(REPO / "recipes" / "gradual.yaml")
QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")


@pytest.fixture(scope="module")
def tiny_setup(checkpoint_factory, tmp_path_factory) -> dict[str, str]:
    """One tiny ResNet checkpoint and an imagefolder of 2 classes x 4 images (32 px) for train and validation."""
    from hf_transfer_cnn.data import write_imagefolder

    root = tmp_path_factory.mktemp("shipped")
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        images = [np.clip(np.array(rgb) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                  for rgb in [(220, 30, 30)] * 4 + [(30, 40, 220)] * 4]
        write_imagefolder(root / "data", images, [0] * 4 + [1] * 4, ["red", "blue"], split=split)
    return {"ckpt": checkpoint_factory("resnet", root / "ckpt", num_labels=4), "train": str(root / "data" / "train"),
            "validation": str(root / "data" / "validation")}


@pytest.mark.parametrize("recipe", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_recipe_runs_on_your_own_data(recipe, tiny_setup, tmp_path, capsys):
    """recipes/finetune.py --config <shipped>.yaml with the checkpoint, the folders and the run length only."""
    script = runpy.run_path(str(REPO / "recipes" / "finetune.py"))
    out = tmp_path / "out"
    argv = ["--config", str(recipe), "--model_name_or_path", tiny_setup["ckpt"], "--train_dir", tiny_setup["train"],
            "--validation_dir", tiny_setup["validation"], "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--use_cpu", "true"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert script["main"](argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.rindex("{\n"):])  # the script's summary, printed last
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "all_results.json", "README.md"):
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_steps"] == 2 and results["num_train_images"] == 8 and results["num_eval_images"] == 8
    assert set(results["per_class_accuracy"]) == {"red", "blue"}
    assert summary["eval_accuracy"] == results["eval_accuracy"]
    assert not [w for w in caught if "pin_memory" in str(w.message)]  # CPU: nothing pinned, nothing warned


def test_a_data_source_on_the_command_line_replaces_the_files(tmp_path, caplog):
    """--train_dir replaces the file's Hub dataset with its column names; --dataset_name the file's folders."""
    with caplog.at_level(logging.INFO, logger="hf_transfer_cnn"):
        _, data, _, _ = parse_recipe_args(["--config", GRADUAL, "--train_dir", "d/train"])
    assert (data.dataset_name, data.train_dir, data.label_column_name, data.image_column_name) == \
        (None, "d/train", "label", "image")  # beans' `labels` went with beans; an imagefolder has image/label
    assert any("--train_dir on the command line replaces dataset_name, label_column_name from" in r.getMessage()
               for r in caplog.records)
    _, data, _, _ = parse_recipe_args(["--config", GRADUAL, "--train_dir", "d/train", "--label_column_name", "y"])
    assert data.label_column_name == "y"  # a column name given with it is kept
    _, data, _, _ = parse_recipe_args(["--config", QUICKSTART, "--train_dir", "mine/train"])
    assert (data.train_dir, data.validation_dir) == ("mine/train", None)  # the file's validation_dir was its data's
    _, data, _, _ = parse_recipe_args(["--config", QUICKSTART, "--dataset_name", "someone/data"])
    assert (data.dataset_name, data.train_dir, data.validation_dir) == ("someone/data", None, None)
    _, data, _, _ = parse_recipe_args(["--config", GRADUAL, "--dataset_name", "AI-Lab-Makerere/beans"])
    assert data.label_column_name == "labels"  # the same dataset keeps its column names
    _, data, _, _ = parse_recipe_args(["--config", GRADUAL, "--dataset_name=other/data"])
    assert (data.dataset_name, data.label_column_name) == ("other/data", "label")


def test_none_or_null_unsets_an_option():
    """`--dataset_name None` used to become the string 'None'; none/null (any case) now mean None."""
    model, data, _, training = parse_recipe_args(
        ["--config", GRADUAL, "--dataset_name", "None", "--train_dir", "d", "--save_total_limit", "null",
         "--eval_split_name=NONE", "--report_to", "none"])
    assert (data.dataset_name, data.eval_split_name, training.save_total_limit) == (None, None, None)
    assert training.report_to in ("none", ["none"], [])  # not an Optional option: `none` is its own value
    model, _, _, _ = parse_recipe_args(["--config", QUICKSTART, "--unfreeze_at_step", "none", "--schedule",
                                        "0:0,5:2"])
    assert (model.unfreeze_at_step, model.schedule) == (None, "0:0,5:2")
    # the file's trigger unset, another strategy: nothing left to warn about or refuse
    model, _, _, _ = parse_recipe_args(["--config", QUICKSTART, "--unfreeze_at_step", "none", "--strategy",
                                        "fine_tuning"])
    assert model.unfreeze_at_step is None
    _, data, _, _ = parse_recipe_args(["--config", GRADUAL, "--dataset_name", "none"])
    assert data.dataset_name is None and data.label_column_name == "labels"  # only what was named is unset


def test_an_option_given_twice_takes_its_last_value():
    """As argparse does for any option: ``--x 5 --x none`` is None (the 5 used to win), ``--x none --x 5`` is 5."""
    base = ["--config", GRADUAL, "--train_dir", "d"]
    for args, expected in ((["--save_total_limit", "3", "--save_total_limit", "none"], None),
                           (["--save_total_limit=3", "--save_total_limit", "null"], None),
                           (["--save_total_limit", "none", "--save_total_limit", "3"], 3),
                           (["--save_total_limit", "2", "--save_total_limit=4"], 4)):
        assert parse_recipe_args(base + args)[3].save_total_limit == expected, args
    model, _, _, _ = parse_recipe_args(["--config", QUICKSTART, "--unfreeze_at_step", "5", "--unfreeze_at_step",
                                        "none", "--schedule", "0:0,5:2"])
    assert (model.unfreeze_at_step, model.schedule) == (None, "0:0,5:2")
    _, _, transform, _ = parse_recipe_args(base + ["--image_mean", "0.5", "0.5", "0.5", "--image_mean", "none"])
    assert transform.image_mean is None  # a list option: all of its earlier values go
    _, _, transform, _ = parse_recipe_args(base + ["--image_mean", "0.5", "0.5", "0.5", "--image_mean", "0.4", "0.3",
                                                   "0.2"])
    assert transform.image_mean == [0.4, 0.3, 0.2]


def test_help_documents_replacing_and_unsetting(capsys):
    with pytest.raises(SystemExit):
        parse_recipe_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--dataset_name none" in out and "replaces the file's" in out and "--streaming" in out
