import dataclasses

import pytest
import torch

from ssd_tutorial import zoo
from ssd_tutorial.anchors import SSD_TINY
from ssd_tutorial.backbones import tiny_features
from ssd_tutorial.data.shapes import CLASS_NAMES
from ssd_tutorial.model import SSD
from ssd_tutorial.train import PRESETS, Trainer


def test_recipe_is_the_tiny_preset_with_a_late_drop():
    config = zoo.shapes_recipe(600)
    assert config.optimizer == PRESETS["tiny_cpu"]["optimizer"]
    assert config.lr == PRESETS["tiny_cpu"]["lr"]
    assert (config.max_steps, config.milestones, config.epochs) == (600, (480,), 6)


def test_data_splits_differ_and_have_the_model_size():
    train, val = zoo.shapes_data("train", 2, augment=False), zoo.shapes_data("val", 2, False)
    assert train[0][0].shape == (3, 128, 128)
    assert not torch.equal(train[0][0], val[0][0])


@pytest.mark.slow
def test_shapes_model_trains_once_then_loads_from_the_cache(tmp_path, monkeypatch, capsys):
    model, class_names = zoo.shapes_model(steps=2, cache_dir=tmp_path)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "training ssd_tiny_shapes_2_steps (2 steps of 32 images)"
    assert printed[1].startswith("step 2/2: loss ") and "val mAP@0.5 0." in printed[1]
    run = zoo.shapes_run_dir(2, tmp_path)
    assert class_names == CLASS_NAMES and not model.training
    assert (run / "model.pt").is_file() and (run / "train.csv").is_file()
    assert (run / "eval.csv").read_text().startswith("epoch,step,map")

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model must be loaded, not trained again")

    monkeypatch.setattr(Trainer, "fit", no_training)
    again, _ = zoo.shapes_model(steps=2, cache_dir=tmp_path)
    torch.testing.assert_close(again.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_cache_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SSD_TUTORIAL_CACHE", str(tmp_path))
    assert zoo.shapes_run_dir(600) == tmp_path / "ssd_tiny_shapes_600_steps"


@pytest.mark.slow
def test_variants_train_their_own_network_and_data_in_their_own_folder(tmp_path, monkeypatch):
    asked = []
    real_data = zoo.shapes_data

    def record_data(split, length, augment=True, size=128, augmentations=None):
        asked.append((split, augment, size, augmentations))
        return real_data(split, length, augment, size, augmentations)

    monkeypatch.setattr(zoo, "shapes_data", record_data)
    fewer_boxes = dataclasses.replace(SSD_TINY, name="TWO RATIOS", aspect_ratios=((2,),) * 5)

    def build(num_classes):
        return SSD(tiny_features(), fewer_boxes, num_classes)

    model, _ = zoo.shapes_model(
        1, tmp_path, False, name="two_ratios", build=build, augmentations={"flip": False}
    )
    assert model.config == fewer_boxes and model.config.num_boxes < SSD_TINY.num_boxes
    assert asked == [("train", True, 128, {"flip": False}), ("val", False, 128, None)]
    assert (tmp_path / "two_ratios_shapes_1_steps" / "model.pt").is_file()
    with pytest.raises(ValueError, match="another model"):  # the cache is per name
        zoo.shapes_model(1, tmp_path, False, name="two_ratios")
