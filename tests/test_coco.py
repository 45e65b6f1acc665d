import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.transforms.v2.functional import clamp_bounding_boxes

from ssd_tutorial.data.coco import BORDER_TOLERANCE, COCODetection
from ssd_tutorial.data.files import InvalidSampleError
from ssd_tutorial.data.transforms import eval_transforms, train_transforms

# Category ids are not contiguous and not sorted, as in real COCO files.
CATEGORIES = [
    {"id": 90, "name": "zebra"},
    {"id": 1, "name": "person"},
    {"id": 5, "name": "airplane"},
]
IMAGES = [
    {"id": 11, "file_name": "a.jpg", "height": 60, "width": 80},
    {"id": 12, "file_name": "sub/b.jpg", "height": 50, "width": 40},
    {"id": 13, "file_name": "c.jpg", "height": 40, "width": 40},  # no annotations
]
ANNOTATIONS = [
    {"id": 1, "image_id": 11, "category_id": 1, "bbox": [10, 20, 30, 25], "iscrowd": 0},
    {"id": 2, "image_id": 11, "category_id": 90, "bbox": [0, 0, 80, 60], "iscrowd": 1},
    {"id": 3, "image_id": 12, "category_id": 5, "bbox": [5.5, 6.25, 10, 20], "iscrowd": 0},
    # Sticks out of the 40-pixel-wide image by 0.4 pixels, as polygon-derived boxes can.
    {"id": 4, "image_id": 12, "category_id": 1, "bbox": [30, 40, 10.4, 10], "iscrowd": 0},
]


def write_coco(tmp_path: Path, **changes):
    """The image files of IMAGES and an instances JSON file (with ``changes``), in COCO's
    on-disk format."""
    image_dir = tmp_path / "images"
    generator = np.random.default_rng(0)
    for entry in IMAGES:
        path = image_dir / entry["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = generator.integers(0, 256, (entry["height"], entry["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    annotation_file = tmp_path / "instances_train.json"
    content = {"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES, **changes}
    annotation_file.write_text(json.dumps(content))
    return image_dir, annotation_file


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path)


def test_categories_become_contiguous_labels_both_ways(coco):
    dataset = COCODetection(*coco)
    assert dataset.class_names == ("background", "person", "airplane", "zebra")
    assert dataset.category_to_label == {1: 1, 5: 2, 90: 3}
    assert dataset.label_to_category == {1: 1, 2: 5, 3: 90}


def test_reads_images_and_converts_xywh_to_xyxy(coco):
    dataset = COCODetection(*coco)
    assert len(dataset) == 3 and dataset.image_ids == [11, 12, 13]
    image, target = dataset[1]
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 50, 40)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].canvas_size == (50, 40)
    # (x, y, w, h) -> (x, y, x + w, y + h); the second box is clipped to the image border.
    assert target["boxes"].tolist() == [[5.5, 6.25, 15.5, 26.25], [30, 40, 40, 50]]
    assert target["labels"].tolist() == [2, 1] and target["labels"].dtype == torch.int64
    assert target["image_id"] == 12


def test_boxes_and_categories_equal_torchvisions_coco_reader(coco):
    ours = COCODetection(*coco)
    theirs = wrap_dataset_for_transforms_v2(CocoDetection(str(coco[0]), str(coco[1])))
    for index in range(2):
        _, target = ours[index]
        _, reference = theirs[index]
        expected = clamp_bounding_boxes(reference["boxes"])
        torch.testing.assert_close(
            target["boxes"].as_subclass(torch.Tensor), expected.as_subclass(torch.Tensor).float()
        )
        categories = [ours.label_to_category[label] for label in target["labels"].tolist()]
        assert categories == reference["labels"].tolist()


def test_crowd_regions_are_kept_and_flagged(coco):
    _, target = COCODetection(*coco)[0]
    assert target["iscrowd"].tolist() == [False, True]
    assert target["labels"].tolist() == [1, 3]


def test_training_pipeline_drops_crowd_regions_evaluation_keeps_them(coco):
    torch.manual_seed(0)
    _, train = COCODetection(
        *coco, transforms=train_transforms(32, iou_crop=False, zoom_out=False)
    )[0]
    assert train["labels"].tolist() == [1] and train["iscrowd"].tolist() == [False]
    _, evaluation = COCODetection(*coco, transforms=eval_transforms(32))[0]
    assert evaluation["iscrowd"].tolist() == [False, True]


def test_images_without_annotations_are_kept_with_empty_targets(coco):
    image, target = COCODetection(*coco)[2]
    assert image.shape == (3, 40, 40)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["iscrowd"].shape == (0,)


def test_border_tolerance_is_one_pixel():
    assert BORDER_TOLERANCE == 1.0


def with_annotation(change):
    annotations = [dict(a) for a in ANNOTATIONS]
    annotations[2].update(change)
    return annotations


BREAKAGES = {
    "dangling annotation": (
        {"annotations": with_annotation({"image_id": 99})},
        "annotation 3 points at image id 99",
    ),
    "unknown category": (
        {"annotations": with_annotation({"category_id": 7})},
        "unknown category_id 7",
    ),
    "box outside": (
        {"annotations": with_annotation({"bbox": [35, 6, 10, 20]})},
        "outside the image",
    ),
    "empty box": ({"annotations": with_annotation({"bbox": [5, 6, 0, 20]})}, "empty or outside"),
    "bad bbox": (
        {"annotations": with_annotation({"bbox": [5, 6]})},
        r"needs 'bbox' = \[x, y, width",
    ),
    "no width": (
        {"images": [IMAGES[0], {"id": 12, "file_name": "sub/b.jpg", "height": 50}, IMAGES[2]]},
        "needs 'id', 'file_name', 'width' and 'height'",
    ),
}


@pytest.mark.parametrize("problem", list(BREAKAGES))
def test_invalid_annotation_raises_an_error_naming_the_file(tmp_path, problem):
    change, message = BREAKAGES[problem]
    image_dir, annotation_file = write_coco(tmp_path, **change)
    with pytest.raises(InvalidSampleError, match=message) as error:
        COCODetection(image_dir, annotation_file)
    assert "instances_train.json" in str(error.value)


@pytest.mark.parametrize("problem", list(BREAKAGES))
def test_skip_invalid_warns_about_each_skipped_item(tmp_path, problem):
    change, message = BREAKAGES[problem]
    image_dir, annotation_file = write_coco(tmp_path, **change)
    with pytest.warns(UserWarning, match=message) as record:
        dataset = COCODetection(image_dir, annotation_file, skip_invalid=True)
    assert len(record) == 1 and "instances_train.json" in str(record[0].message)
    if problem == "dangling annotation":
        # Only the annotation goes; its image had no other problem.
        assert dataset.image_ids == [11, 12, 13] and dataset[1][1]["labels"].tolist() == [1]
    else:
        assert dataset.image_ids == [11, 13]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda image_dir: (image_dir / "sub" / "b.jpg").unlink(), "does not exist"),
        (
            lambda image_dir: (image_dir / "sub" / "b.jpg").write_bytes(b"garbage"),
            "not a readable image",
        ),
    ],
)
def test_missing_or_corrupt_image_file_is_named(coco, breakage, message):
    image_dir, annotation_file = coco
    breakage(image_dir)
    with pytest.raises(InvalidSampleError, match=message) as error:
        COCODetection(image_dir, annotation_file)
    assert "sub/b.jpg" in str(error.value)
    with pytest.warns(UserWarning, match="sub/b.jpg"):
        assert COCODetection(image_dir, annotation_file, skip_invalid=True).image_ids == [11, 13]


def test_valid_data_gives_no_warning(coco):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        COCODetection(*coco, skip_invalid=True)


def test_unreadable_annotation_file_is_named(tmp_path):
    bad = tmp_path / "instances_bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"instances_bad\.json is not valid JSON"):
        COCODetection(tmp_path, bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"instances_bad\.json has no 'annotations', 'categories'"):
        COCODetection(tmp_path, bad)
    with pytest.raises(FileNotFoundError, match=r"instances_missing\.json"):
        COCODetection(tmp_path, tmp_path / "instances_missing.json")
