import shutil

import pytest
import torch
from test_coco import write_coco
from test_voc import write_voc

from ssd_tutorial.data.catalog import open_dataset
from ssd_tutorial.data.coco import COCODetection
from ssd_tutorial.data.shapes import CLASS_NAMES, SyntheticShapes
from ssd_tutorial.data.voc import VOCDetection


def test_synthetic_splits_are_different_images_of_the_asked_size():
    train = open_dataset("synthetic", "train", length=3, image_size=64)
    val = open_dataset("synthetic", "val", length=3, image_size=64)
    assert isinstance(train, SyntheticShapes) and len(train) == 3
    assert train.class_names == CLASS_NAMES
    assert train[0][0].shape == (3, 64, 64)
    assert not torch.equal(train[0][0], val[0][0])
    # and the same split is the same images every time
    assert torch.equal(
        train[1][0], open_dataset("synthetic", "train", length=3, image_size=64)[1][0]
    )


def test_voc_root_and_split(tmp_path):
    root = write_voc(tmp_path / "VOC2007", split="test")
    dataset = open_dataset("voc", "test", root=root)
    assert isinstance(dataset, VOCDetection) and len(dataset) == 3
    assert dataset.class_names[0] == "background"


def test_coco_layout_is_split_folder_and_annotations_folder(tmp_path):
    image_dir, annotation_file = write_coco(tmp_path / "raw")
    root = tmp_path / "coco"
    shutil.copytree(image_dir, root / "val2017")
    (root / "annotations").mkdir()
    shutil.copy(annotation_file, root / "annotations" / "instances_val2017.json")
    dataset = open_dataset("coco", "val2017", root=root)
    assert isinstance(dataset, COCODetection) and len(dataset) == 3


@pytest.mark.parametrize(
    ("kind", "split", "root", "error", "message"),
    [
        ("imagenet", "train", None, ValueError, "kind must be one of"),
        ("synthetic", "trainval", None, ValueError, "synthetic splits are"),
        ("synthetic", "train", "somewhere", ValueError, "takes no root"),
        ("voc", "trainval", None, ValueError, "needs root"),
        ("voc", "trainval", "missing", FileNotFoundError, "is not a directory"),
        ("coco", "val2017", ".", FileNotFoundError, "annotations/instances_val2017.json"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kind, split, root, error, message):
    if root is not None:
        root = tmp_path / root
    with pytest.raises(error, match=message):
        open_dataset(kind, split, root=root)


def test_own_voc_layout_data_names_its_classes(tmp_path):
    images = {"a": (40, 50, [("kiwi", 2, 3, 30, 35, 0), ("plum", 5, 5, 20, 20, 0)])}
    root = write_voc(tmp_path / "fruit", images=images, split="train")
    dataset = open_dataset("voc", "train", root=root, classes=["plum", "kiwi"])
    assert dataset.class_names == ("background", "plum", "kiwi")
    assert dataset[0][1]["labels"].tolist() == [2, 1]
    with pytest.raises(ValueError, match="kiwi"):  # Pascal VOC's classes by default
        open_dataset("voc", "train", root=root)
    with pytest.raises(ValueError, match="VOC-layout data only"):
        open_dataset("synthetic", "train", classes=["plum"])
