"""Hardening of loading: a trained model folder that cannot be loaded as it was saved (processor or config missing or
damaged, processor statistics for another channel count, a malformed ``hf_transfer_cnn`` section, weights that do not
fit the config, a typo'd path) is an error naming the file, key or folder, never a model with silently other
preprocessing or partly random weights. Each fault is injected the way it happens in life."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from PIL import Image

from hf_transfer_cnn import TransferModel
from hf_transfer_cnn.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoints):
    """A folder saved by hf_transfer_cnn: a resnet re-headed for three classes."""
    path = tmp_path_factory.mktemp("trained") / "model"
    TransferModel.from_pretrained(tiny_checkpoints["resnet"], id2label={0: "cat", 1: "dog", 2: "fox"}).save_pretrained(
        path)
    return path


def _copy(src, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _truncate(path):
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def _predict_cli(folder, tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (200, 30, 90)).save(image)
    status = main(["predict", str(folder), str(image)])
    return status, capsys.readouterr().err


# --- the image processor ----------------------------------------------------------------------------------------

def test_trained_folder_without_its_processor_is_an_error_naming_it(trained, tmp_path, capsys):
    """Copying a model without preprocessor_config.json used to load with default ImageNet statistics (labels flip)."""
    folder = _copy(trained, tmp_path)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"copy[/\\]preprocessor_config\.json: no such file.*saved by "
                                                r"hf_transfer_cnn.*lost.*Restore the file"):
        TransferModel.from_pretrained(folder)
    status, err = _predict_cli(folder, tmp_path, capsys)
    assert status == 2 and "preprocessor_config.json: no such file" in err


def test_truncated_processor_is_an_error_naming_it(trained, tmp_path, capsys):
    folder = _copy(trained, tmp_path)
    _truncate(folder / "preprocessor_config.json")
    with pytest.raises(ValueError, match=r"preprocessor_config\.json cannot be read as JSON.*damaged"):
        TransferModel.from_pretrained(folder)
    status, err = _predict_cli(folder, tmp_path, capsys)
    assert status == 2 and "preprocessor_config.json cannot be read as JSON" in err


@pytest.mark.parametrize("values", [[0.5, 0.5], [0.5]])
def test_processor_statistics_for_another_channel_count_are_an_error(trained, tmp_path, values):
    """Two values for an RGB model (or a gray model's one): not silently adapted."""
    folder = _copy(trained, tmp_path)
    _edit_json(folder / "preprocessor_config.json", image_mean=values)
    with pytest.raises(ValueError, match=rf"preprocessor_config\.json: image_mean has {len(values)} values.*takes 3 "
                                         r"input channel"):
        TransferModel.from_pretrained(folder)


def test_base_checkpoint_without_processor_gets_the_family_default_with_a_warning(checkpoint_factory, tmp_path,
                                                                                 caplog):
    """A plain transformers save (config + weights, never a processor) is the legitimate case for the default."""
    folder = tmp_path / "base"
    checkpoint_factory("resnet", folder)
    (folder / "preprocessor_config.json").unlink()
    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn"):
        model = TransferModel.from_pretrained(folder, num_labels=3)
    assert list(model.image_processor.image_mean) == pytest.approx([0.485, 0.456, 0.406])
    assert any("has no preprocessor_config.json: using the default resnet preprocessing" in r.getMessage()
               for r in caplog.records), caplog.text


def test_saved_timm_model_keeps_its_own_processor(tmp_path):
    """A timm folder's config.json also describes preprocessing (timm's pretrained_cfg); a TransferModel saved from
    it must load the preprocessor_config.json it wrote (here: the training run's own statistics), not timm's."""
    import timm
    import transformers as T

    net = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    native = T.TimmWrapperForImageClassification(T.TimmWrapperConfig(
        architecture="test_resnet", num_labels=3, pretrained_cfg=net.pretrained_cfg))
    native.timm_model.load_state_dict(net.state_dict())
    native.save_pretrained(tmp_path / "timm")
    model = TransferModel.from_pretrained(tmp_path / "timm", id2label={0: "a", 1: "b", 2: "c"})
    own = {**model.image_processor.to_dict(), "image_mean": [0.1, 0.2, 0.3], "image_std": [0.3, 0.2, 0.1]}
    own.pop("_processor_class", None)
    model.image_processor = type(model.image_processor).from_dict(own)
    model.save_pretrained(tmp_path / "trained")
    again = TransferModel.from_pretrained(tmp_path / "trained")
    assert list(again.image_processor.image_mean) == [0.1, 0.2, 0.3]
    assert list(again.image_processor.image_std) == [0.3, 0.2, 0.1]


# --- the config -------------------------------------------------------------------------------------------------

def test_missing_or_truncated_config_is_an_error_naming_it(trained, tmp_path, capsys):
    gone = _copy(trained, tmp_path, "gone")
    (gone / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"gone[/\\]config\.json: no such file"):
        TransferModel.from_pretrained(gone)
    cut = _copy(trained, tmp_path, "cut")
    _truncate(cut / "config.json")
    with pytest.raises(ValueError, match=r"cut[/\\]config\.json cannot be read as JSON.*damaged.*Restore it"):
        TransferModel.from_pretrained(cut)
    status, err = _predict_cli(cut, tmp_path, capsys)
    assert status == 2 and "config.json" in err


@pytest.mark.parametrize("section, key", [
    ({"trainable_stages": "two"}, "trainable_stages"),
    ({"image_size": -3}, "image_size"),
    ({"head": [64]}, "head"),
    ({"trainable_stage": 1}, "trainable_stage"),
    ([1, 2], "hf_transfer_cnn"),
])
def test_malformed_section_is_an_error_naming_the_key(trained, tmp_path, section, key):
    """Wrong value types, an unknown (typo'd) key, a section that is not a mapping."""
    folder = _copy(trained, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["hf_transfer_cnn"] = section if isinstance(section, list) else {**config["hf_transfer_cnn"], **section}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"(?s)(?=.*config\.json)(?=.*{key})(?=.*(wrong type|unknown key|mapping))"):
        TransferModel.from_pretrained(folder)


# --- the weights ------------------------------------------------------------------------------------------------

def _depths(folder, depths):
    _edit_json(folder / "config.json", depths=depths)


def test_weights_deeper_than_the_config_are_refused(checkpoint_factory, tmp_path):
    """config.json says one layer in the last stage, model.safetensors has two: the second would be dropped."""
    folder = tmp_path / "deep"
    checkpoint_factory("resnet", folder, depths=[1, 1, 1, 2])
    _depths(folder, [1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"deep: the weights do not fit its config\.json.*key\(s\) in the weights "
                                         r"file that the config's model lacks \(they would be dropped\): "
                                         r"resnet\.encoder\.stages\.3\.layers\.1\..*save the model again"):
        TransferModel.from_pretrained(folder, num_labels=2)


def test_weights_shallower_than_the_config_are_refused(trained, tmp_path):
    """config.json says two layers, model.safetensors has one: the second would stay random."""
    folder = _copy(trained, tmp_path)
    _depths(folder, [1, 1, 1, 2])
    with pytest.raises(ValueError, match=r"missing from the weights file \(they would stay random\): "
                                         r"resnet\.encoder\.stages\.3\.layers\.1\."):
        TransferModel.from_pretrained(folder)


def test_weights_of_other_shapes_are_refused(trained, tmp_path):
    folder = _copy(trained, tmp_path)
    _edit_json(folder / "config.json", hidden_sizes=[8, 16, 16, 24])
    with pytest.raises(ValueError, match=r"with other shapes in the weights file than in the config's model: .*"
                                         r"resnet\.encoder\.stages\.3.*\(file \(32,\), config \(24,\)\)"):
        TransferModel.from_pretrained(folder)


def test_a_checkpoint_without_classifier_needs_a_new_head(tmp_path):
    """A backbone-only save: re-heading is the legitimate use (loads); keeping its head is refused, naming it."""
    import transformers as T

    config = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic")
    torch.manual_seed(0)
    T.ResNetModel(config).save_pretrained(tmp_path / "backbone")
    with pytest.raises(ValueError, match=r"classifier\.1\.(bias|weight).*pass num_labels or id2label"):
        TransferModel.from_pretrained(tmp_path / "backbone")
    model = TransferModel.from_pretrained(tmp_path / "backbone", num_labels=3)
    assert model.config.num_labels == 3


# --- the path ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["./my_modle", "../my_modle/checkpoint-10", "{tmp}/x/y"])
def test_typod_local_path_says_no_such_folder(tmp_path, capsys, path):
    path = path.format(tmp=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no such folder: .*my_modle|no such folder: .*x[/\\]y"):
        TransferModel.from_pretrained(path)
    status, err = _predict_cli(path, tmp_path, capsys)
    assert status == 2 and "no such folder" in err and "Repo id" not in err
