import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from ssd_tutorial.data.shapes import (
    CLASS_NAMES,
    SMALL_SIZE_RANGE,
    SyntheticShapes,
    draw_scene,
    shape_mask,
)
from ssd_tutorial.data.sizes import size_category

LABEL = {name: index for index, name in enumerate(CLASS_NAMES)}


def flat_scene(shapes, height=64, width=64):
    """draw_scene on a black background; ``shapes`` is a list of (class name, box, colour)."""
    labels = torch.tensor([LABEL[name] for name, _, _ in shapes])
    boxes = torch.tensor([box for _, box, _ in shapes], dtype=torch.float32)
    colors = torch.tensor([color for _, _, color in shapes], dtype=torch.float32)
    return draw_scene(torch.zeros(3, height, width), labels, boxes, colors)


def test_class_names_start_with_background_and_cover_the_required_shapes():
    assert CLASS_NAMES[0] == "background"
    for name in ("circle", "square", "triangle", "ellipse", "star", "cross"):
        assert name in CLASS_NAMES
    assert SyntheticShapes.class_names == CLASS_NAMES


def test_item_format_is_what_the_transforms_expect():
    image, target = SyntheticShapes(4, image_size=(96, 128), seed=3)[0]
    assert isinstance(image, tv_tensors.Image)
    assert image.shape == (3, 96, 128) and image.dtype == torch.uint8
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and boxes.canvas_size == (96, 128)
    assert target["labels"].dtype == torch.int64 and len(target["labels"]) == len(boxes)


def test_square_box_by_hand():
    # Pixel centres j + 0.5 inside [10.2, 30.5] are j = 10..30; inside [20.7, 40.0], j = 21..39.
    _, boxes, labels, _ = flat_scene([("square", (10.2, 20.7, 30.5, 40.0), (1, 0, 0))])
    assert boxes.tolist() == [[10, 21, 31, 40]]
    assert labels.tolist() == [LABEL["square"]]


def test_circle_box_by_hand():
    # Radius 10 around (32, 32): the widest rows (centres 31.5, 32.5) reach |x - 32| <= 9.99,
    # so columns 22..41 (centres 22.5..41.5).
    _, boxes, _, _ = flat_scene([("circle", (22, 22, 42, 42), (1, 0, 0))])
    assert boxes.tolist() == [[22, 22, 42, 42]]


def test_shape_cut_by_the_border_gets_the_box_of_its_visible_part():
    # The same circle centred on the left border: columns 0..9 and rows 22..41 remain.
    _, boxes, _, owner = flat_scene([("circle", (-10, 22, 10, 42), (1, 0, 0))])
    assert boxes.tolist() == [[0, 22, 10, 42]]
    torch.testing.assert_close(masks_to_boxes(owner[None] == 0), torch.tensor([[0.0, 22, 9, 41]]))


def test_shape_outside_the_image_is_left_out():
    _, boxes, labels, _ = flat_scene([("circle", (70, 10, 90, 30), (1, 0, 0))])
    assert boxes.shape == (0, 4) and labels.shape == (0,)


def test_partly_hidden_shape_gets_the_box_of_its_visible_part():
    # A square drawn on top covers the circle from x = 24 on.
    _, boxes, labels, _ = flat_scene(
        [("circle", (10, 10, 30, 30), (1, 0, 0)), ("square", (24, 0, 64, 64), (0, 1, 0))]
    )
    assert labels.tolist() == [LABEL["circle"], LABEL["square"]]
    assert boxes.tolist() == [[10, 10, 24, 30], [24, 0, 64, 64]]


def test_mostly_hidden_shape_is_left_out_and_not_painted():
    image, boxes, labels, owner = flat_scene(
        [
            ("wide_rectangle", (0, 30, 40, 40), (1, 0, 0)),
            ("circle", (5, 5, 25, 25), (0, 0, 1)),
            ("square", (0, 0, 30, 64), (0, 1, 0)),
        ]
    )
    # The circle is completely hidden, the rectangle keeps 10 of its 40 columns (< 50 %).
    assert labels.tolist() == [LABEL["square"]]
    assert boxes.tolist() == [[0, 0, 30, 64]]
    assert not image[0].any() and not image[2].any()
    assert set(owner.unique().tolist()) == {-1, 0}


def test_each_visible_pixel_shows_its_object_colour():
    colors = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    image, _, _, owner = flat_scene(
        [
            ("star", (5, 5, 45, 45), colors[0]),
            ("cross", (25, 25, 60, 60), colors[1]),
            ("triangle", (0, 30, 30, 64), colors[2]),
        ]
    )
    expected = torch.zeros(3, 64, 64)
    for position in range(3):
        expected[:, owner == position] = torch.tensor(colors[position]).view(3, 1)
    torch.testing.assert_close(image, expected)


def test_shape_masks_by_hand():
    _, _, cross = shape_mask(LABEL["cross"], torch.tensor([0.0, 0.0, 9.0, 9.0]), 9, 9)
    # Arms of half width 1/3 of the half side: the middle three rows and columns.
    expected = torch.zeros(9, 9, dtype=torch.bool)
    expected[3:6, :] = expected[:, 3:6] = True
    assert torch.equal(cross, expected)
    _, _, triangle = shape_mask(LABEL["triangle"], torch.tensor([0.0, 0.0, 4.0, 4.0]), 4, 4)
    assert triangle.sum(dim=1).tolist() == [0, 2, 2, 4]  # narrow at the apex, wide at the base
    _, _, star = shape_mask(LABEL["star"], torch.tensor([0.0, 0.0, 40.0, 40.0]), 40, 40)
    # The five tips touch the box's sides (within a pixel); the centre is in, the corners out.
    rows, columns = star.any(dim=1).nonzero().flatten(), star.any(dim=0).nonzero().flatten()
    assert rows[0] <= 1 and rows[-1] >= 38 and columns[0] <= 1 and columns[-1] >= 38
    assert star[20, 20] and not star[0, 0] and not star[39, 0] and not star[39, 20]


@pytest.mark.parametrize("image_size", [300, 128, (90, 160)])
def test_boxes_are_the_exact_bounding_boxes_of_the_visible_pixels(image_size):
    dataset = SyntheticShapes(12, image_size=image_size, seed=1, return_masks=True)
    for index in range(len(dataset)):
        _, target = dataset[index]
        masks = target["masks"]
        assert masks.sum(dim=0).max() <= 1  # each pixel shows at most one object
        # torchvision's masks_to_boxes gives the last pixel's index; ours is one past it.
        expected = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), expected)


def test_items_are_reproducible_from_seed_and_index_in_any_order():
    a, b = SyntheticShapes(10, 64, seed=7), SyntheticShapes(10, 64, seed=7)
    forward = [a[i] for i in range(10)]
    backward = [b[i] for i in reversed(range(10))][::-1]
    for (image_a, target_a), (image_b, target_b) in zip(forward, backward):
        assert torch.equal(image_a, image_b)
        assert torch.equal(target_a["boxes"], target_b["boxes"])
        assert torch.equal(target_a["labels"], target_b["labels"])


def test_different_seeds_and_indices_give_different_images():
    assert not torch.equal(
        SyntheticShapes(2, 64, seed=0)[0][0], SyntheticShapes(2, 64, seed=1)[0][0]
    )
    dataset = SyntheticShapes(2, 64)
    assert not torch.equal(dataset[0][0], dataset[1][0])


def test_items_are_the_same_in_dataloader_workers():
    dataset = SyntheticShapes(8, 48, seed=5)
    loader = DataLoader(dataset, batch_size=None, shuffle=True, num_workers=2)
    labels_by_image = {
        image.numpy().tobytes(): target["labels"].tolist() for image, target in loader
    }
    assert len(labels_by_image) == len(dataset)
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert labels_by_image[image.numpy().tobytes()] == target["labels"].tolist()


def test_generated_data_has_every_class_sizes_overlaps_and_truncation():
    dataset = SyntheticShapes(60, 128, seed=0, return_masks=True)
    labels, categories, truncated = [], [], 0
    for _, target in (dataset[i] for i in range(len(dataset))):
        boxes = target["boxes"].as_subclass(torch.Tensor)
        labels += target["labels"].tolist()
        categories += size_category(boxes, (128, 128)).tolist()
        truncated += int(((boxes[:, :2] == 0) | (boxes[:, 2:] == 128)).any(dim=1).sum())
    assert set(labels) == set(range(1, len(CLASS_NAMES)))
    assert set(categories) == {0, 1, 2}
    assert truncated > 0
    assert 1 <= len(labels) / len(dataset) <= dataset.objects_per_image[1]


@pytest.mark.parametrize("image_size", [128, 300])
def test_small_size_range_gives_only_small_objects(image_size):
    dataset = SyntheticShapes(30, image_size, size_range=SMALL_SIZE_RANGE)
    for index in range(len(dataset)):
        _, target = dataset[index]
        categories = size_category(target["boxes"].as_subclass(torch.Tensor), dataset.image_size)
        assert (categories == 0).all()


@st.composite
def scenes(draw):
    count = draw(st.integers(1, 6))
    coordinate = st.floats(-20, 80, allow_nan=False)
    extent = st.floats(0.5, 50, allow_nan=False)
    rows = draw(
        st.lists(st.tuples(coordinate, coordinate, extent, extent), min_size=count, max_size=count)
    )
    boxes = torch.tensor([(x, y, x + w, y + h) for x, y, w, h in rows], dtype=torch.float32)
    labels = torch.tensor(
        draw(st.lists(st.integers(1, len(CLASS_NAMES) - 1), min_size=count, max_size=count))
    )
    return labels, boxes


@given(scenes())
def test_boxes_of_random_scenes_are_valid_and_exact(scene):
    labels, boxes = scene
    colors = torch.rand(len(labels), 3)
    _, visible, kept_labels, owner = draw_scene(torch.zeros(3, 50, 70), labels, boxes, colors)
    assert visible.shape == (len(kept_labels), 4)
    assert (
        (visible[:, :2] >= 0).all() and (visible[:, 2] <= 70).all() and (visible[:, 3] <= 50).all()
    )
    assert (visible[:, 2:] > visible[:, :2]).all()
    masks = owner[None] == torch.arange(len(kept_labels)).view(-1, 1, 1)
    expected = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(visible, expected.reshape(-1, 4))
    assert set(kept_labels.tolist()) <= set(labels.tolist())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"length": -1}, "length"),
        ({"image_size": 0}, "image_size"),
        ({"objects_per_image": (3, 2)}, "objects_per_image"),
        ({"size_range": (0.0, 0.5)}, "size_range"),
        ({"size_range": (0.5, 1.5)}, "size_range"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticShapes(**kwargs)


def test_index_out_of_range_raises_index_error():
    with pytest.raises(IndexError, match="out of range"):
        SyntheticShapes(3)[3]


def test_draw_scene_rejects_empty_boxes():
    with pytest.raises(ValueError, match="x2 > x1"):
        flat_scene([("square", (10, 10, 10, 20), (1, 0, 0))])
