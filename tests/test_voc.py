import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.datasets import VOCDetection as TorchvisionVOC

from ssd_tutorial.data.files import InvalidSampleError
from ssd_tutorial.data.transforms import eval_transforms
from ssd_tutorial.data.voc import VOC_CLASSES, VOCDetection, parse_annotation

# id -> (height, width, objects as (name, xmin, ymin, xmax, ymax, difficult)), 1-based pixels.
IMAGES = {
    "000005": (60, 80, [("chair", 1, 1, 80, 60, 0), ("person", 10, 20, 30, 50, 1)]),
    "000007": (50, 40, [("car", 5, 6, 35, 45, 0)]),
    "000009": (40, 40, []),
}


def voc_xml(height, width, objects, with_size=True):
    parts = ["<annotation>", "<folder>VOC2007</folder>", "<filename>x.jpg</filename>"]
    if with_size:
        parts.append(
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
        )
    for name, xmin, ymin, xmax, ymax, difficult in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts)


def write_voc(root: Path, images=IMAGES, split="train") -> Path:
    """A VOC year directory in the real on-disk layout."""
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for image_id, (height, width, objects) in images.items():
        pixels = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(height, width, objects))
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(images) + "\n")
    return root


@pytest.fixture
def voc_root(tmp_path):
    return write_voc(tmp_path / "VOCdevkit" / "VOC2007")


def test_class_names():
    assert (
        len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"
    )


def test_reads_images_boxes_labels_and_difficult_flags(voc_root):
    dataset = VOCDetection(voc_root, split="train")
    assert len(dataset) == 3 and dataset.image_ids == list(IMAGES)
    assert dataset.class_names == ("background", *VOC_CLASSES)
    image, target = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 60, 80)
    assert image.dtype == torch.uint8
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].canvas_size == (60, 80)
    # 1-based inclusive -> (xmin - 1, ymin - 1, xmax, ymax): the first box is the whole image.
    assert target["boxes"].tolist() == [[0, 0, 80, 60], [9, 19, 30, 50]]
    assert target["labels"].tolist() == [
        VOC_CLASSES.index("chair") + 1,
        VOC_CLASSES.index("person") + 1,
    ]
    assert target["labels"].dtype == torch.int64
    assert target["difficult"].tolist() == [False, True]
    assert target["image_id"] == "000005"


def test_image_without_objects_has_empty_targets(voc_root):
    _, target = VOCDetection(voc_root, split="train")[2]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["difficult"].shape == (0,)


def test_boxes_are_torchvisions_raw_numbers_shifted_by_one_at_the_top_left(voc_root):
    ours = VOCDetection(voc_root, split="train")
    theirs = TorchvisionVOC(str(voc_root.parent.parent), year="2007", image_set="train")
    for index in range(len(ours)):
        objects = theirs[index][1]["annotation"].get("object", [])
        raw = [[float(o["bndbox"][k]) for k in ("xmin", "ymin", "xmax", "ymax")] for o in objects]
        expected = torch.tensor(raw).reshape(-1, 4) - torch.tensor([1.0, 1.0, 0.0, 0.0])
        torch.testing.assert_close(ours[index][1]["boxes"].as_subclass(torch.Tensor), expected)


def test_box_width_counts_the_pixels_it_covers(tmp_path):
    # VOC's evaluation measures a box as (xmax - xmin + 1) x (ymax - ymin + 1) pixels.
    xml = tmp_path / "a.xml"
    xml.write_text(voc_xml(20, 20, [("dog", 3, 4, 3, 9, 0)]))
    annotation = parse_annotation(xml)
    ((x1, y1, x2, y2),) = annotation.boxes
    assert (x2 - x1, y2 - y1) == (1, 6)


def test_class_specific_split_files_and_custom_classes(tmp_path):
    root = write_voc(tmp_path, {"a": (30, 30, [("widget", 2, 2, 20, 20, 0)])}, split="widget_train")
    (root / "ImageSets" / "Main" / "widget_train.txt").write_text("a  1\n")
    dataset = VOCDetection(root, split="widget_train", classes=("gadget", "widget"))
    assert dataset.class_names == ("background", "gadget", "widget")
    assert dataset[0][1]["labels"].tolist() == [2]


def test_transforms_are_applied(voc_root):
    image, target = VOCDetection(voc_root, split="train", transforms=eval_transforms(32))[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    torch.testing.assert_close(target["boxes"][0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert target["difficult"].tolist() == [False, True]


def break_corrupt_image(root):
    (root / "JPEGImages" / "000007.jpg").write_bytes(b"this is not a JPEG file")
    return "000007.jpg"


def break_missing_image(root):
    (root / "JPEGImages" / "000007.jpg").unlink()
    return "000007.jpg"


def break_missing_size(root):
    (root / "Annotations" / "000007.xml").write_text(
        voc_xml(50, 40, IMAGES["000007"][2], with_size=False)
    )
    return "000007.xml"


def break_box_outside(root):
    (root / "Annotations" / "000007.xml").write_text(voc_xml(50, 40, [("car", 5, 6, 41, 45, 0)]))
    return "000007.xml"


def break_unknown_class(root):
    (root / "Annotations" / "000007.xml").write_text(
        voc_xml(50, 40, [("spaceship", 5, 6, 35, 45, 0)])
    )
    return "000007.xml"


def break_invalid_xml(root):
    (root / "Annotations" / "000007.xml").write_text("<annotation><size>")
    return "000007.xml"


def break_missing_xml(root):
    (root / "Annotations" / "000007.xml").unlink()
    return "000007.xml"


def break_size_mismatch(root):
    (root / "Annotations" / "000007.xml").write_text(voc_xml(51, 40, IMAGES["000007"][2]))
    return "000007.jpg"


BREAKAGES = {
    "corrupt image": (break_corrupt_image, "not a readable image"),
    "missing image": (break_missing_image, "does not exist"),
    "no size": (break_missing_size, "no <size>"),
    "box outside": (break_box_outside, "outside the image"),
    "unknown class": (break_unknown_class, "unknown class name 'spaceship'"),
    "invalid xml": (break_invalid_xml, "not valid XML"),
    "missing xml": (break_missing_xml, "does not exist"),
    "size mismatch": (break_size_mismatch, r"\(50, 40\) \(height, width\) but its annotation says"),
}


@pytest.mark.parametrize("problem", list(BREAKAGES))
def test_invalid_sample_raises_an_error_naming_the_file(voc_root, problem):
    breakage, message = BREAKAGES[problem]
    file_name = breakage(voc_root)
    with pytest.raises(InvalidSampleError, match=message) as error:
        VOCDetection(voc_root, split="train")
    assert file_name in str(error.value)


@pytest.mark.parametrize("problem", list(BREAKAGES))
def test_skip_invalid_warns_about_each_skipped_image(voc_root, problem):
    breakage, message = BREAKAGES[problem]
    file_name = breakage(voc_root)
    with pytest.warns(UserWarning, match=message) as record:
        dataset = VOCDetection(voc_root, split="train", skip_invalid=True)
    assert len(record) == 1 and file_name in str(record[0].message)
    assert dataset.image_ids == ["000005", "000009"]


def test_valid_data_gives_no_warning(voc_root):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VOCDetection(voc_root, split="train", skip_invalid=True)


def test_image_damaged_after_its_header_fails_when_loaded_naming_the_file(voc_root):
    path = voc_root / "JPEGImages" / "000007.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    dataset = VOCDetection(voc_root, split="train")
    with pytest.raises(InvalidSampleError, match=r"000007\.jpg could not be decoded"):
        dataset[1]


def test_missing_split_file_is_reported(voc_root):
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/val\.txt"):
        VOCDetection(voc_root, split="val")
