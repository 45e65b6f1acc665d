import pytest
import torch

from ssd_tutorial.data.sizes import (
    LARGE_AREA,
    SIZE_NAMES,
    SMALL_AREA,
    is_small,
    relative_area,
    size_category,
)


def test_thresholds_are_cocos_on_a_640_by_480_image():
    assert pytest.approx(1 / 300) == SMALL_AREA
    assert pytest.approx(0.03) == LARGE_AREA
    assert SIZE_NAMES == ("small", "medium", "large")


def test_categories_by_hand_in_pixels_and_relative():
    # In a 640x480 image: 31x31 is small, exactly 32x32 and 95x95 medium, exactly 96x96 large.
    sides = torch.tensor([31.0, 32.0, 95.0, 96.0, 400.0])
    boxes = torch.stack((torch.zeros(5), torch.zeros(5), sides, sides), dim=1)
    assert size_category(boxes, (480, 640)).tolist() == [0, 1, 1, 2, 2]
    relative = boxes / torch.tensor([640.0, 480.0, 640.0, 480.0])
    assert size_category(relative).tolist() == [0, 1, 1, 2, 2]
    assert is_small(boxes, (480, 640)).tolist() == [True, False, False, False, False]


def test_relative_area_is_independent_of_image_size():
    box = torch.tensor([[10.0, 20.0, 40.0, 60.0]])
    doubled = box * 2
    torch.testing.assert_close(relative_area(box, (100, 200)), relative_area(doubled, (200, 400)))
    torch.testing.assert_close(relative_area(box, (100, 200)), torch.tensor([0.06]))


def test_bad_boxes_are_rejected():
    with pytest.raises(ValueError, match="x2 >= x1"):
        size_category(torch.tensor([[0.5, 0.5, 0.1, 0.9]]))
